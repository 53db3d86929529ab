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

    def value(self, outputs: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean(self.per_sample(outputs, target)))


def _top1(out, labels):
    return (np.asarray(out).reshape(len(out), -1).argmax(1) == np.asarray(labels).reshape(-1)).astype(np.float64)


def _agree(out, ref):
    return (np.asarray(out).reshape(len(out), -1).argmax(1) == np.asarray(ref).reshape(len(ref), -1).argmax(1)).astype(np.float64)


def _sq(out, labels):
    d = np.asarray(out, np.float64).reshape(len(out), -1) - np.asarray(labels, np.float64).reshape(len(out), -1)
    return np.mean(d * d, axis=1)


def _abs(out, labels):
    d = np.asarray(out, np.float64).reshape(len(out), -1) - np.asarray(labels, np.float64).reshape(len(out), -1)
    return np.mean(np.abs(d), axis=1)


def _cos(out, ref):
    a = np.asarray(out, np.float64).reshape(len(out), -1)
    b = np.asarray(ref, np.float64).reshape(len(ref), -1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, np.sum(a * b, axis=1) / np.maximum(den, 1e-30), 1.0)


def _retrieval(out, ref):
    from edgecompile.verify.textmetrics import retrieval_agreement

    return retrieval_agreement(out, ref)


METRICS: dict[str, Metric] = {
    m.name: m for m in [
        Metric("top1", True, "percentage", True, _top1),
        Metric("top1_agreement", True, "percentage", False, _agree),
        Metric("mse", False, "error", True, _sq),
        Metric("mae", False, "error", True, _abs),
        Metric("output_cosine", True, "similarity", False, _cos),
        Metric("retrieval_agreement", True, "percentage", False, _retrieval),
    ]
}


def get_metric(name: str) -> Metric:
    from edgecompile.errors import ConfigError

    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}", hint=f"known metrics: {', '.join(METRICS)}")
    return METRICS[name]


def label_free(metric: Metric, classifier: bool) -> Metric:
    """The metric to use when the data carry no labels: agreement with the reference."""
    if not metric.needs_labels:
        return metric
    return METRICS["top1_agreement"] if classifier else METRICS["output_cosine"]


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
