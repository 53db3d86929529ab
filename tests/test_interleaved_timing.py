"""edgecompile.verify.bench.interleaved: side-by-side timing, with the 10th percentile beside the median."""
from __future__ import annotations

import time

from edgecompile.verify.bench import interleaved


def _busy(seconds: float):
    def run():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    return run


def test_interleaved_reports_p10_below_median_below_p99_and_orders_the_candidates():
    res = interleaved({"short": _busy(0.0002), "long": _busy(0.001)}, rounds=4, seconds=0.2, warmup=1)
    for r in res.values():
        assert r["rounds"] == 4 and 0 < r["p10_ms"] <= r["ms"] <= r["p99_ms"]
    assert res["short"]["p10_ms"] >= 0.2 and res["long"]["p10_ms"] >= 1.0      # a call never beats its busy loop
    assert res["long"]["p10_ms"] > 2 * res["short"]["p10_ms"]
