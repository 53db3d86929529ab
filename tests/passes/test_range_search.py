"""Per-tensor activation range search (MSE over min-max / percentile / entropy candidates)."""
import numpy as np
import pytest

from edgecompile.compiler.calibration import HIST_BINS, TensorStats
from edgecompile.compiler.range_search import quantization_mse, search_ranges


def stats_of(x: np.ndarray) -> TensorStats:
    s = TensorStats(float(x.min()), float(x.max()))
    s.hist = np.histogram(np.abs(x), bins=HIST_BINS, range=(0.0, s.absmax))[0]
    return s


def true_mse(x, lo, hi, levels=255):
    step = (hi - lo) / levels
    q = np.clip(np.round((np.clip(x, lo, hi) - lo) / step) * step + lo, lo, hi)
    return float(np.mean((x - q) ** 2))


def test_mse_estimate_tracks_the_real_quantization_error():
    x = np.random.default_rng(0).normal(size=200_000)
    s = stats_of(x)
    for t in (1.0, 2.5, 4.0, s.absmax):
        est = quantization_mse(s.hist, s.absmax, s.lo, s.hi, t)
        real = true_mse(x, max(s.lo, -t), min(s.hi, t))
        assert est == pytest.approx(real, rel=0.35)


def test_heavy_tail_is_clipped_uniform_tensor_is_not_and_outputs_keep_minmax():
    rng = np.random.default_rng(1)
    tail = np.abs(rng.laplace(size=1_000_000))               # rare large values waste min-max's grid
    uniform = rng.uniform(0, 1, size=200_000)
    stats = {"tail": stats_of(tail), "uniform": stats_of(uniform), "logits": stats_of(tail)}
    ranges, chosen = search_ranges(stats, keep=("logits",))
    assert chosen["tail"] != "minmax" and ranges["tail"][1] < tail.max()
    assert true_mse(tail, *ranges["tail"]) < true_mse(tail, 0.0, tail.max())
    assert ranges["uniform"][1] > 0.99 * uniform.max()           # no tail: (almost) nothing to clip
    assert chosen["logits"] == "minmax" and ranges["logits"][1] == tail.max()


def test_a_single_far_outlier_costs_more_clipped_than_kept():
    """MSE, not a fixed percentile: one value at 40 among 200k is worth its rounding cost."""
    x = np.abs(np.random.default_rng(3).laplace(size=200_000))
    x[0] = 40.0
    ranges, chosen = search_ranges({"t": stats_of(x)})
    assert chosen["t"] == "minmax"
    assert true_mse(x, *ranges["t"]) < true_mse(x, 0.0, np.percentile(x, 99.999))


def test_search_is_a_calibration_method():
    from edgecompile.compiler.calibration import compute_ranges

    x = np.abs(np.random.default_rng(2).laplace(size=1_000_000))
    s = {"t": stats_of(x)}
    assert compute_ranges(s, "search")["t"] == search_ranges(s)[0]["t"]
    assert compute_ranges(s, "search")["t"][1] < compute_ranges(s, "minmax")["t"][1]
