"""Clipping thresholds from a tensor's |x| histogram: a percentile of the mass, or the KL-optimal (entropy)
cut. Shared by the calibrators (calibration.py) and the per-tensor range search (range_search.py)."""
from __future__ import annotations

import numpy as np


def percentile_threshold(hist: np.ndarray, absmax: float, percentile: float) -> float:
    """The |x| value below which `percentile` % of the samples lie (upper edge of that bin)."""
    total = hist.sum()
    if total == 0:
        return absmax
    cdf = np.cumsum(hist)
    idx = int(np.searchsorted(cdf, total * percentile / 100.0))
    return absmax * min(idx + 1, len(hist)) / len(hist)


def entropy_threshold(hist: np.ndarray, absmax: float, levels: int = 128) -> float:
    """The |x| clipping threshold minimizing KL(P || Q), P the clipped histogram (outliers folded
    into its last bin) and Q that histogram quantized to `levels` bins and expanded back."""
    hist = hist.astype(np.float64)
    hist[0] = hist[1]      # the spike of exact zeros (ReLU outputs, padding) would otherwise favour tiny thresholds
    nbins = len(hist)
    if hist.sum() == 0 or nbins <= levels:
        return absmax
    stride = max(1, (nbins - levels) // 256)
    best_kl, best_i = np.inf, nbins
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])     # tail[i] = hist[i:].sum()
    for i in range(levels, nbins + 1, stride):
        ref = hist[:i]
        p = ref.copy()
        p[-1] += tail[i]
        nonzero = ref > 0
        chunk = (np.arange(i) * levels) // i
        sums = np.bincount(chunk, weights=ref, minlength=levels)
        counts = np.bincount(chunk, weights=nonzero, minlength=levels)
        q = np.where(nonzero, (sums / np.maximum(counts, 1))[chunk], 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        p = p / p_sum
        q = q / q_sum
        mask = p > 0
        qm = np.maximum(q[mask], 1e-12)               # smoothing: p > 0 where q == 0 (last bin)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return absmax * best_i / nbins
