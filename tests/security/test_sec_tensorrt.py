"""TensorRT runner input handling, driven through fakes of the TensorRT engine/context API (the real engine
needs a Jetson GPU: the end-to-end tests in tests/targets/test_tensorrt.py skip without one)."""
from __future__ import annotations

import numpy as np
import pytest

from edgecompile.errors import DataError
from edgecompile.runtime.runner import Runner
from edgecompile.runtime.specs import TensorSpec
from edgecompile.targets.tensorrt.run import TrtRunner


class FakeEngine:
    def __init__(self, lo=1, hi=8):
        self.lo, self.hi = lo, hi

    def get_tensor_profile_shape(self, name, profile):
        return (self.lo, 4), (1, 4), (self.hi, 4)


class FakeContext:
    def __init__(self, engine):
        self.engine = engine

    def set_input_shape(self, name, shape):
        return self.engine.lo <= shape[0] <= self.engine.hi


def _runner(lo=1, hi=8):
    r = TrtRunner.__new__(TrtRunner)
    Runner.__init__(r, [TensorSpec("x", ("batch", 4), "float32")], [TensorSpec("y", ("batch", 4), "float32")])
    r.engine = FakeEngine(lo, hi)
    r.context = FakeContext(r.engine)
    return r


def test_batches_above_the_profile_max_run_in_chunks():
    r = _runner(hi=8)
    seen = []

    def once(feeds):
        seen.append(len(feeds["x"]))
        return [feeds["x"] * 2]

    r._run_once = once
    x = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
    np.testing.assert_array_equal(r.run({"x": x})["y"], x * 2)
    assert seen == [8] * 8
    seen.clear()
    r.run({"x": x[:5]})
    assert seen == [5]


def test_rejected_input_shape_is_a_data_error():
    r = _runner(lo=2, hi=8)
    with pytest.raises(DataError, match=r"outside the engine's optimization profile \(\[2, 4\] \.\. \[8, 4\]\)"):
        r._run_once({"x": np.ones((1, 4), np.float32)})


def test_engine_cache_builds_once_under_concurrency_and_rejects_tampered_engines(tmp_path):
    import threading

    from edgecompile.targets.tensorrt.enginecache import get_or_build

    path = tmp_path / "10.1-sm87-abc.engine"
    builds = []
    gate = threading.Barrier(6)

    def build() -> bytes:
        builds.append(1)
        return b"engine-bytes"

    results = []

    def load():
        gate.wait()
        results.append(get_or_build(path, build))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(builds) == 1 and sorted(o for _, o in results) == ["built"] + ["cached"] * 5
    assert all(data == b"engine-bytes" for data, _ in results)
    assert not list(tmp_path.glob("*.part"))
    path.write_bytes(b"evil engine")                     # not what the record says: never deserialized
    data, origin = get_or_build(path, build)
    assert (data, origin) == (b"engine-bytes", "built") and len(builds) == 2
    (tmp_path / (path.name + ".json")).unlink()           # no record: rebuilt too
    assert get_or_build(path, build)[1] == "built"
