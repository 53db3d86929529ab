import threading
import warnings

import numpy as np
import pytest

import edgecompile
from edgecompile.errors import DataError


@pytest.fixture(scope="module")
def runner(digits_bundle):
    with edgecompile.runtime.load(digits_bundle.path) as r:
        yield r


def test_specs_and_call_forms(runner, digits_source):
    assert [s.name for s in runner.inputs] == ["input"] and [s.name for s in runner.outputs] == ["logits"]
    x = digits_source.dataset("test").inputs["input"][:5]
    y1 = runner(x)
    y2 = runner.run({"input": x})["logits"]
    assert y1.shape == (5, 10) and np.array_equal(y1, y2)


@pytest.mark.parametrize("feeds, needle", [
    ({"image": np.zeros((1, 1, 8, 8), np.float32)}, "wrong input names"),
    ({"input": np.zeros((1, 1, 8, 8), np.float64)}, "dtype float64, the model expects float32"),
    ({"input": np.zeros((1, 8, 8), np.float32)}, "shape [1, 8, 8]"),
    ({"input": np.zeros((1, 1, 8, 9), np.float32)}, "shape [1, 1, 8, 9]"),
    ({"input": [[0.0]]}, "must be a numpy array"),
])
def test_bad_inputs_are_clear_errors(runner, feeds, needle):
    with pytest.raises(DataError) as e:
        runner.run(feeds)
    assert needle in str(e.value) and e.value.exit_code == 2


def test_nan_input_warns_once(digits_bundle):
    with edgecompile.runtime.load(digits_bundle.path) as r:
        x = np.full((1, 1, 8, 8), np.nan, np.float32)
        with pytest.warns(RuntimeWarning, match="NaN or infinite"):
            r(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r(x)


def test_concurrent_runs_match_serial(runner, digits_source):
    x = digits_source.dataset("test").inputs["input"]
    expected = runner(x)
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(20):
                sl = slice(i * 40, i * 40 + 40)
                out = runner(x[sl])
                if not np.array_equal(out, expected[sl]):
                    errors.append(i)
            results[i] = True
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8
