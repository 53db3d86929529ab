"""Task metrics, computed per sample so that confidence intervals and paired tests are possible.

Units (the contract): top-1 and agreement are fractions (0.005 = 0.5 pt) and bounds on them are
in percentage points; error metrics (MSE, MAE) are bounded in relative percent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    kind: str                       # "percentage" | "error" | "similarity"
    needs_labels: bool
    per_sample: Callable[[np.ndarray, np.ndarray], np.ndarray]   # (outputs, labels or reference outputs)
    dataset_level: bool = False     # mAP: a value of the whole set, not a mean of per-sample scores (verify/detection)

    def value(self, outputs: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean(self.per_sample(outputs, target)))


def _top1(out, labels):
    return (np.asarray(out).reshape(len(out), -1).argmax(1) == np.asarray(labels).reshape(-1)).astype(np.float64)


def decisions(out) -> np.ndarray:
    """What a classifier's output decides, per sample: the top class; for a single logit (binary heads,
    cross-encoders: sigmoid scores) whether it is positive, so that agreement is not trivially 100 %."""
    from edgecompile.verify.agreement import rows

    return rows(out).argmax(1)


def _agree(out, ref):
    return (decisions(out) == decisions(ref)).astype(np.float64)


def _confident(out, ref):
    from edgecompile.verify.agreement import confident_agree

    return confident_agree(out, ref)


def _sq(out, labels):
    d = np.asarray(out, np.float64).reshape(len(out), -1) - np.asarray(labels, np.float64).reshape(len(out), -1)
    return np.mean(d * d, axis=1)


def _abs(out, labels):
    d = np.asarray(out, np.float64).reshape(len(out), -1) - np.asarray(labels, np.float64).reshape(len(out), -1)
    return np.mean(np.abs(d), axis=1)


def _dataset_level(out, labels):
    raise ValueError("mAP is a dataset-level metric: use edgecompile.verify.detection")


def _cos(out, ref):
    a = np.asarray(out, np.float64).reshape(len(out), -1)
    b = np.asarray(ref, np.float64).reshape(len(ref), -1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, np.sum(a * b, axis=1) / np.maximum(den, 1e-30), 1.0)


# Output closeness (non-classifiers without labels): a sample passes when every element of the output
# matches the reference: exactly for integer, bool and string outputs, within rtol/atol for floats.
CLOSE_RTOL = 1e-3
CLOSE_ATOL = 1e-5


def _element_close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape != b.shape:
        return np.zeros(a.shape[:1] or (1,), bool)
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        return np.isclose(a64, b64, rtol=CLOSE_RTOL, atol=CLOSE_ATOL, equal_nan=True)
    if a.dtype.kind in "UO" or b.dtype.kind in "UO":
        return a.astype(str) == b.astype(str)
    return a == b


def _close(out, ref):
    a, b = np.asarray(out), np.asarray(ref)
    if a.shape != b.shape:
        return np.zeros(max(len(b), 1), np.float64)
    ok = _element_close(a, b).reshape(len(a), -1)
    return ok.all(axis=1).astype(np.float64)


def closeness(out, ref) -> dict:
    """How an output compares with the reference: the rule applied, the share of close elements and the
    worst element (index, candidate and reference values, absolute error)."""
    a, b = np.asarray(out), np.asarray(ref)
    exact = not (a.dtype.kind in "fc" or b.dtype.kind in "fc")
    rule = {"rule": "exact" if exact else "allclose", **({} if exact else {"rtol": CLOSE_RTOL, "atol": CLOSE_ATOL})}
    if a.shape != b.shape:
        return {**rule, "close_fraction": 0.0, "shape": list(a.shape), "reference_shape": list(b.shape)}
    ok = _element_close(a, b)
    res = {**rule, "close_fraction": float(ok.mean()) if ok.size else 1.0, "elements": int(ok.size)}
    if exact or not ok.size:
        if not ok.all():
            i = np.unravel_index(int(np.argmin(ok)), ok.shape)
            res["worst"] = {"index": [int(x) for x in i], "candidate": str(a[i]), "reference": str(b[i])}
        return res
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    err = np.where(np.isnan(a64) & np.isnan(b64), 0.0, np.abs(a64 - b64))
    err = np.where(np.isnan(err), np.inf, err)
    excess = err - (CLOSE_ATOL + CLOSE_RTOL * np.abs(np.nan_to_num(b64)))
    i = np.unravel_index(int(np.argmax(excess)), excess.shape)
    res["worst"] = {"index": [int(x) for x in i], "candidate": float(a64[i]), "reference": float(b64[i]),
                    "abs_error": float(err[i])}
    return res
def _retrieval(out, ref):
    from edgecompile.verify.textmetrics import retrieval_agreement

    return retrieval_agreement(out, ref)


METRICS: dict[str, Metric] = {
    m.name: m for m in [
        Metric("top1", True, "percentage", True, _top1),
        Metric("top1_agreement", True, "percentage", False, _agree),
        # unlabelled classifiers' bound: agreement on the reference-confident samples (verify/agreement.py)
        Metric("confident_agreement", True, "percentage", False, _confident),
        Metric("mse", False, "error", True, _sq),
        Metric("mae", False, "error", True, _abs),
        Metric("output_cosine", True, "similarity", False, _cos),
        Metric("map", True, "percentage", True, _dataset_level, dataset_level=True),      # COCO mAP@[.5:.95]
        Metric("map50", True, "percentage", True, _dataset_level, dataset_level=True),    # COCO mAP@.5
        # label-free detectors: the same mAPs against the reference's detections (pseudo ground truth):
        # agreement with the FP32 model, not accuracy (verify/detection.py)
        Metric("map_agreement", True, "percentage", False, _dataset_level, dataset_level=True),
        Metric("map50_agreement", True, "percentage", False, _dataset_level, dataset_level=True),
        Metric("output_closeness", True, "percentage", False, _close),
        Metric("retrieval_agreement", True, "percentage", False, _retrieval),
    ]
}


def get_metric(name: str) -> Metric:
    from edgecompile.errors import ConfigError

    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}", hint=f"known metrics: {', '.join(METRICS)}")
    return METRICS[name]


def label_free(metric: Metric, classifier: bool, detection: bool = False) -> Metric:
    """The metric to use when the data carry no labels: agreement with the reference. A classifier's
    is `confident_agreement` (see `bound_metric` for its fallback); a detector whose data carry a
    decoding spec (`detection`) keeps mAP, scored against the reference's detections."""
    if metric.name == "top1_agreement" and classifier:
        return METRICS["confident_agreement"]
    if not metric.needs_labels:
        return metric
    if metric.dataset_level and detection:
        return METRICS[f"{metric.name}_agreement"]
    return METRICS["confident_agreement"] if classifier else METRICS["output_cosine"]


def bound_metric(metric: Metric, reference: np.ndarray) -> Metric:
    """`confident_agreement`, or `top1_agreement` when too few reference samples are confident."""
    if metric.name != "confident_agreement":
        return metric
    from edgecompile.verify.agreement import bound_choice

    return METRICS[bound_choice(reference)["bound_metric"]]


def bootstrap_ci(per_sample: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap confidence interval of the mean."""
    x = np.asarray(per_sample, np.float64)
    if len(x) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def raw_similarity(out: np.ndarray, ref: np.ndarray) -> dict:
    """Output-level similarity, reported beside (never instead of) the task metric."""
    if np.asarray(out).dtype.kind in "UO" or np.asarray(ref).dtype.kind in "UO" or np.shape(out) != np.shape(ref):
        return closeness(out, ref)
    a = np.asarray(out, np.float64).reshape(-1)
    b = np.asarray(ref, np.float64).reshape(-1)
    err = a - b
    noise = float(np.sum(err * err))
    signal = float(np.sum(b * b))
    cos = float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    return {
        "cosine": cos,
        "max_abs": float(np.max(np.abs(err))) if err.size else 0.0,
        "mean_abs": float(np.mean(np.abs(err))) if err.size else 0.0,
        "snr_db": float(10 * np.log10(signal / noise)) if noise > 0 else float("inf"),
    }
