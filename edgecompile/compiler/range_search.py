"""Per-tensor activation range search: for each tensor, the clipping threshold (among min-max,
several percentiles and the entropy threshold) that minimises that tensor's expected
quantization MSE, estimated from its |x| histogram.

For a threshold t the range is [max(lo, -t), min(hi, t)] on `levels` steps; the error is the
rounding noise of the values inside (step^2 / 12 each) plus the squared clipping error
(|x| - t)^2 of the values beyond t. One global method (min-max everywhere, or entropy
everywhere) is wrong for some tensors in every network: min-max wastes resolution on rare
outliers, entropy clips tensors whose tails carry the signal (e.g. the logits).

Per-tensor MSE on the histogram pooled over all calibration samples keeps the rare samples' outliers.
`sample_mean_ranges` is the other common estimator (NNCF's default, moving-average observers): each
sample's own min and max, averaged (calibrate = "sample-mean"). Which is better depends on the data; on
pretrained MobileNetV2 it helps on the 480 evaluation crops but loses top-1 on a by-photo split of the
calibration crops (bench/results/int8_vs_nncf.txt), so "search" stays the default.
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
