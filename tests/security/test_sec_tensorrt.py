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
