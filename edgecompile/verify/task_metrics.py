"""Task metrics that are not a mean of per-sample scores, reported beside the gating metric.

Regression: the gate is MSE (per sample, so paired tests and CIs work); MAE and R² go beside it,
for the reference and the candidate, plus a sample of (true, predicted) pairs for the report's
scatter plot.
"""
from __future__ import annotations

import numpy as np

SCATTER_POINTS = 300


def regression_summary(pred: np.ndarray, labels: np.ndarray) -> dict:
    """MSE, MAE and R² (1 - SSE/SST, over every output value) of predictions against labels."""
    p = np.asarray(pred, np.float64).reshape(len(pred), -1)
    y = np.asarray(labels, np.float64).reshape(len(labels), -1)
    err = p - y
    sst = float(np.sum((y - y.mean(axis=0)) ** 2))
    sse = float(np.sum(err * err))
    return {"mse": float(np.mean(err * err)), "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - sse / sst if sst > 0 else float("nan")}


def regression_beside(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    """{"mae": {...}, "r2": {...}}, each with reference, candidate, delta and higher_is_better."""
    c, r = regression_summary(candidate, labels), regression_summary(reference, labels)
    return {name: {"reference": r[name], "candidate": c[name], "delta": c[name] - r[name],
                   "higher_is_better": name == "r2"} for name in ("mae", "r2")}


def regression_scatter(candidate: np.ndarray, labels: np.ndarray, limit: int = SCATTER_POINTS) -> dict:
    """(true, predicted) pairs of the first output, evenly subsampled to at most `limit` points."""
    p = np.asarray(candidate, np.float64).reshape(len(candidate), -1)[:, 0]
    y = np.asarray(labels, np.float64).reshape(len(labels), -1)[:, 0]
    idx = np.linspace(0, len(p) - 1, min(limit, len(p))).round().astype(int) if len(p) else np.zeros(0, int)
    return {"true": [round(float(v), 6) for v in y[idx]], "predicted": [round(float(v), 6) for v in p[idx]],
            "n": len(p), "shown": len(idx)}
