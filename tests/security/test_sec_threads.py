"""Concurrency: 8 threads x 1,000 runs give exactly the serial results (ORT, OpenVINO, TVM), and close()
during runs is safe: each pending run finishes or gets a clean BundleError."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sechelpers

import edgecompile.runtime as runtime
from edgecompile.errors import BundleError

tiny_onnx = sechelpers.tiny_onnx   # fixture

THREADS, RUNS = 8, 1000


@pytest.fixture(scope="module", params=["ort", "openvino", "tvm"])
def backend_bundle(request, tiny_onnx, tmp_path_factory):
    import edgecompile

    backend = request.param
    if backend == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgecompile[openvino]')")
    if backend == "tvm":
        pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'edgecompile[tvm]')")
    model, data = tiny_onnx
    out = tmp_path_factory.mktemp(f"threads-{backend}") / "bundle"
    edgecompile.build(model, target="cpu", backend=backend, data=data, output=out)
    return out


def test_threads_match_serial(backend_bundle):
    rng = np.random.default_rng(1)
    feeds = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(THREADS * 4)]
    with runtime.load(backend_bundle) as r:
        serial = [r(x) for x in feeds]

        def worker(t: int) -> int:
            bad = 0
            for i in range(RUNS):
                k = (t * 31 + i) % len(feeds)
                bad += not np.array_equal(r(feeds[k]), serial[k])
            return bad

        with ThreadPoolExecutor(THREADS) as pool:
            mismatches = list(pool.map(worker, range(THREADS)))
    assert mismatches == [0] * THREADS


def test_close_during_runs_is_clean(backend_bundle):
    r = runtime.load(backend_bundle)
    x = np.ones((2, 4), np.float32)
    expected = r(x)
    outcomes, errors = [], []
    started = threading.Barrier(THREADS + 1)

    def worker():
        started.wait()
        for _ in range(10_000):
            try:
                y = r(x)
            except BundleError as exc:
                outcomes.append("closed" if "runner is closed" in exc.message else exc.message)
                return
            except Exception as exc:    # anything else is a failure of the test
                errors.append(repr(exc))
                return
            if not np.array_equal(y, expected):
                errors.append("wrong result")
                return
        outcomes.append("finished")

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    started.wait()
    r.close()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(outcomes) == THREADS and set(outcomes) <= {"closed", "finished"}
    assert "closed" in outcomes
    with pytest.raises(BundleError, match="runner is closed"):
        r(x)
