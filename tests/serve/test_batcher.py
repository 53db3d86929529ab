"""The dynamic batcher in-process, on real Runners: batch forming, lone requests, limits, timeouts, shapes."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from edgecompile.data import TensorSpec
from edgecompile.serve.batcher import Batcher, batchable
from edgecompile.serve.codec import RequestError
from edgecompile.serve.metrics import Metrics


@pytest.fixture(scope="module")
def rows(digits_source):
    return digits_source.dataset("test").inputs["input"][:16]


def make(bundle, **kw):
    from edgecompile.runtime import load

    metrics = Metrics()
    metrics.add_model("m")
    return Batcher("m", [load(bundle.path)], metrics=metrics, **kw), metrics


def value(metrics, name):
    return metrics.registry.get_sample_value(name, {"model": "m"})


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("run_s", [None, 1e-5], ids=["worker-thread", "inline"])
def test_concurrent_requests_form_one_batch(digits_bundle, rows, run_s):
    b, m = make(digits_bundle, max_batch_size=8, max_queue_delay_ms=50, run_s=run_s)
    assert b.inline is (run_s is not None)

    async def main():
        b.start()
        outs = await asyncio.gather(*(b.submit({"input": rows[i:i + 1]}) for i in range(8)))
        await b.drain()
        return outs

    outs = run(main())
    ref = b.runners[0]   # closed by drain: compare with a fresh runner
    from edgecompile.runtime import load

    with load(digits_bundle.path) as r:
        expected = r.run({"input": rows[:8]})["logits"]
    assert ref.closed
    np.testing.assert_allclose(np.concatenate([o["logits"] for o in outs]), expected, rtol=1e-5, atol=1e-5)
    assert value(m, "edgecompile_inference_exec_count_total") == 1
    assert value(m, "edgecompile_batch_size_sum") == 8


def test_batch_stops_at_max_batch_size_rows(digits_bundle, rows):
    b, m = make(digits_bundle, max_batch_size=4, max_queue_delay_ms=50)

    async def main():
        b.start()
        await asyncio.gather(*(b.submit({"input": rows[i:i + 3]}) for i in range(0, 12, 3)))   # 4 requests x 3 rows
        await b.drain()

    run(main())
    assert value(m, "edgecompile_inference_exec_count_total") == 4      # 3 + 3 > 4: one request per batch
    assert value(m, "edgecompile_inference_count_total") == 12


def test_lone_request_on_idle_model_does_not_wait(digits_bundle, rows):
    b, _ = make(digits_bundle, max_batch_size=8, max_queue_delay_ms=10_000)

    async def main():
        b.start()
        t0 = time.perf_counter()
        await b.submit({"input": rows[:1]})
        took = time.perf_counter() - t0
        await b.drain()
        return took

    assert run(main()) < 1.0


def test_batching_off_runs_each_request(digits_bundle, rows):
    b, m = make(digits_bundle, max_batch_size=1)

    async def main():
        b.start()
        await asyncio.gather(*(b.submit({"input": rows[i:i + 1]}) for i in range(6)))
        await b.drain()

    run(main())
    assert not b.batching
    assert value(m, "edgecompile_inference_exec_count_total") == 6


def test_full_queue_refuses_with_429(digits_bundle, rows):
    b, _ = make(digits_bundle, max_queue=2)

    async def main():
        b.start()
        res = await asyncio.gather(*(b.submit({"input": rows[:1]}) for _ in range(5)), return_exceptions=True)
        await b.drain()
        return res

    res = run(main())
    refused = [r for r in res if isinstance(r, RequestError)]
    assert len(refused) == 3 and all(r.status == 429 and r.headers == {"Retry-After": "1"} for r in refused)
    assert sum(isinstance(r, dict) for r in res) == 2


def test_request_past_its_timeout_is_504_and_the_model_keeps_serving(digits_bundle, rows):
    b, m = make(digits_bundle, timeout_s=1e-9)

    async def main():
        b.start()
        try:
            with pytest.raises(RequestError) as exc:
                await b.submit({"input": rows[:1]})
            b.timeout_s = 30.0
            out = await b.submit({"input": rows[:2]})
        finally:
            await b.drain()
        return exc.value, out

    err, out = run(main())
    assert err.status == 504 and "timeout" in err.message
    assert out["logits"].shape == (2, 10)


def test_different_trailing_shapes_are_separate_batches(pair_bundle):
    from edgecompile.runtime import load

    metrics = Metrics()
    b = Batcher("m", [load(pair_bundle.path)], max_batch_size=8, max_queue_delay_ms=50, metrics=metrics)
    feeds = [{"x": np.full((1, w), i, np.float32), "y": np.ones((1, w), np.float32)}
             for i, w in enumerate([3, 4, 3, 4])]

    async def main():
        b.start()
        outs = await asyncio.gather(*(b.submit(f) for f in feeds))
        await b.drain()
        return outs

    outs = run(main())
    for f, o in zip(feeds, outs):
        np.testing.assert_array_equal(o["z"], f["x"] + 1)
    assert metrics.registry.get_sample_value("edgecompile_inference_exec_count_total", {"model": "m"}) == 2


def test_batchable_needs_symbolic_first_dims():
    sym = [TensorSpec("x", ("batch", 4), "float32")]
    fixed = [TensorSpec("x", (1, 4), "float32")]
    assert batchable(sym, sym)
    assert not batchable(fixed, sym) and not batchable(sym, fixed)
    assert not batchable([TensorSpec("x", (), "float32")], sym)
