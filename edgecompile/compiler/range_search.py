"""Per-tensor activation range search: for each tensor, the clipping threshold (among min-max,
several percentiles and the entropy threshold) that minimises that tensor's expected
quantization MSE, estimated from its |x| histogram.

For a threshold t the range is [max(lo, -t), min(hi, t)] on `levels` steps; the error is the
rounding noise of the values inside (step^2 / 12 each) plus the squared clipping error
(|x| - t)^2 of the values beyond t. One global method (min-max everywhere, or entropy
everywhere) is wrong for some tensors in every network: min-max wastes resolution on rare
outliers, entropy clips tensors whose tails carry the signal (e.g. the logits).

Per-tensor MSE on the histogram pooled over all calibration samples is not the whole story either: a few
samples' outliers set the pooled tail, and the MSE-optimal threshold keeps them, at the cost of resolution
for every other sample. The per-sample mean extremes (each sample's own min and max, averaged: the
estimator of NNCF's default and of moving-average observers) follow the typical sample instead. Which of
the two range sets is better is a property of the network, so `choose_ranges` measures it: both QDQ
graphs run on the calibration feeds, and the one whose outputs are closer to FP32 (normalized MSE summed
over the float outputs) wins. On pretrained MobileNetV2 (after equalization and bias correction) the
per-sample ranges halve the logits' KL on held-out calibration crops (bench/results/int8_vs_nncf_analysis.txt).
"""
from __future__ import annotations

from edgecompile.compiler.thresholds import entropy_threshold, percentile_threshold

from typing import Mapping

import numpy as np

PERCENTILES = (99.0, 99.9, 99.99, 99.999)


def quantization_mse(hist: np.ndarray, absmax: float, lo: float, hi: float, t: float, levels: int = 255) -> float:
    """Expected squared error per sample of quantizing a tensor with |x| histogram `hist` on
    [0, absmax] to the range [max(lo, -t), min(hi, t)] with `levels` steps."""
    hist = np.asarray(hist, np.float64)
    total = hist.sum()
    if total == 0 or absmax <= 0:
        return 0.0
    width = absmax / len(hist)
    centres = (np.arange(len(hist)) + 0.5) * width
    rlo, rhi = max(lo, -t), min(hi, t)
    step = max(rhi - rlo, 1e-12) / levels
    inside = centres <= t
    clip = np.where(inside, 0.0, (centres - t) ** 2)
    # exact zeros (ReLU outputs, padding) sit on the zero point and round without error: the first
    # bin's spike counts like its neighbour, as in the entropy calibrator
    rounding = hist[inside].sum() - (hist[0] - min(hist[0], hist[1]) if len(hist) > 1 else 0.0)
    return float((rounding * step * step / 12.0 + np.sum(hist * clip)) / total)


def candidates(stats, percentiles=PERCENTILES, entropy_levels: int = 128) -> dict[str, float]:
    """{candidate name: |x| threshold} for one tensor's statistics."""
    out = {"minmax": stats.absmax}
    for p in percentiles:
        out[f"p{p:g}"] = percentile_threshold(stats.hist, stats.absmax, p)
    out["entropy"] = entropy_threshold(stats.hist, stats.absmax, entropy_levels)
    return out


def search_ranges(
    stats: Mapping[str, object],
    *,
    unsigned_activations: bool = True,
    symmetric: bool = False,
    percentiles=PERCENTILES,
    keep: tuple[str, ...] = (),
) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """({tensor: (lo, hi)}, {tensor: winning candidate}). Tensors without a histogram and the
    `keep` tensors (e.g. the graph outputs: clipping logits changes the answer) keep min-max."""
    ranges, chosen = {}, {}
    for name, s in stats.items():
        lo, hi = min(s.lo, 0.0), max(s.hi, 0.0)
        if s.hist is None or s.absmax <= 0 or name in keep:
            ranges[name], chosen[name] = (lo, hi), "minmax"
            continue
        unsigned = s.lo >= 0 and unsigned_activations and not symmetric
        levels = 255 if not symmetric else 254
        cands = candidates(s, percentiles, 256 if unsigned else 128)
        best = min(cands, key=lambda k: (quantization_mse(s.hist, s.absmax, lo, hi, cands[k], levels), -cands[k]))
        t = cands[best]
        ranges[name], chosen[name] = (max(lo, -t), min(hi, t)), best
    return ranges, chosen


def sample_mean_ranges(stats: Mapping[str, object], keep: tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """{tensor: per-sample mean extremes} (TensorStats.sample_mean_range); the `keep` tensors keep min-max."""
    return {name: (min(s.lo, 0.0), max(s.hi, 0.0)) if name in keep else s.sample_mean_range
            for name, s in stats.items()}


def run_outputs(proto, batches, whole: frozenset = frozenset()) -> list[list[np.ndarray]]:
    """Per batch of 32 samples, the graph's outputs under ORT (as it will run the graph)."""
    from edgecompile.compiler.calibration import rebatch
    from edgecompile.targets.ort.run import create_session

    sess = create_session(proto.SerializeToString())
    return [sess.run(None, feeds) for feeds in rebatch(batches, 32, whole)]


def output_error(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> float:
    """Sum over the float outputs of mean((q - f)^2) / var(f) between run_outputs() results (0 = identical)."""
    total = 0.0
    for i in range(len(reference[0])):
        f = np.concatenate([np.asarray(b[i], np.float64).ravel() for b in reference])
        if f.dtype.kind != "f" or np.asarray(reference[0][i]).dtype.kind != "f" or f.var() == 0:
            continue
        q = np.concatenate([np.asarray(b[i], np.float64).ravel() for b in outputs])
        total += float(np.mean((q - f) ** 2) / f.var())
    return total


def choose_ranges(stats: Mapping[str, object], fp32_proto, batches, qdq, *, unsigned_activations: bool = True,
                  symmetric: bool = False, keep: tuple[str, ...] = (), whole: frozenset = frozenset()):
    """({tensor: (lo, hi)}, {tensor: candidate}, notes): the per-tensor MSE search's ranges or the per-sample
    mean extremes, whichever makes `qdq(ranges)` (the QDQ ModelProto) closer to `fp32_proto` at the outputs."""
    searched, chosen = search_ranges(stats, unsigned_activations=unsigned_activations, symmetric=symmetric, keep=keep)
    sampled = sample_mean_ranges(stats, keep)
    if not any(s.samples for s in stats.values()):
        return searched, chosen, {"chosen": "per-tensor-mse"}
    reference = run_outputs(fp32_proto, batches, whole)
    errors = {name: round(output_error(reference, run_outputs(qdq(r), batches, whole)), 6)
              for name, r in (("per-tensor-mse", searched), ("per-sample-mean", sampled))}
    if errors["per-sample-mean"] < errors["per-tensor-mse"]:
        return sampled, {k: "per-sample-mean" for k in sampled}, {"chosen": "per-sample-mean", "output_nmse": errors}
    return searched, chosen, {"chosen": "per-tensor-mse", "output_nmse": errors}
