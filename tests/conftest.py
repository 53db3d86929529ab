"""Shared fixtures: one cache dir and one digits FP32 bundle per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Keep the tests' cache (trained weights, ...) out of the user's cache, shared by all tests."""
    if "EDGECOMPILE_CACHE" not in os.environ:
        os.environ["EDGECOMPILE_CACHE"] = str(tmp_path_factory.mktemp("edgecompile-cache"))
    yield


@pytest.fixture(scope="session")
def digits_source():
    from edgecompile.source import resolve_source

    return resolve_source("digits")


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory):
    """The digits model built for --target cpu (ORT, fp32) once per session. Do not modify it:
    copy it (see `bundle_copy`) for tests that tamper with files."""
    import edgecompile

    out = tmp_path_factory.mktemp("bundles") / "digits-cpu"
    return edgecompile.build("models/digits", target="cpu", output=out)


@pytest.fixture
def bundle_copy(digits_bundle, tmp_path):
    import shutil

    dest = tmp_path / "bundle"
    shutil.copytree(digits_bundle.path, dest)
    return dest


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real `edgecompile` entry point in a subprocess: (returncode, stdout, stderr)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "edgecompile", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


# -- regression gate (issue #12) -------------------------------------------------------------------

@pytest.fixture(scope="session")
def digits_test_npz(tmp_path_factory, digits_source):
    """digits:test as a .npz (input + labels), the form `--data` takes."""
    import numpy as np

    ds = digits_source.dataset("test")
    path = tmp_path_factory.mktemp("gate-data") / "digits-test.npz"
    np.savez(path, input=ds.inputs["input"], labels=ds.labels)
    return path


@pytest.fixture(scope="session")
def digits_baseline(digits_bundle, tmp_path_factory):
    """A baseline (dict + file) of the shared digits bundle."""
    from edgecompile.regression import make_baseline, save_baseline

    base = make_baseline(digits_bundle.path)
    return base, save_baseline(base, tmp_path_factory.mktemp("gate-baseline") / "baseline.json")


@pytest.fixture(scope="session")
def regressed_bundle(digits_bundle, digits_test_npz, tmp_path_factory):
    """A deliberately broken build: the digits ONNX with noise (50 % of each weight tensor's std) added
    to its conv/linear weights, rebuilt through the real pipeline from the .onnx (top-1 drops by tens of points)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import edgecompile

    model = onnx.load(digits_bundle.artifact("model"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.name.endswith("weight"):
            w = numpy_helper.to_array(init)
            noisy = w + rng.normal(0.0, 0.5 * float(w.std()), w.shape).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    root = tmp_path_factory.mktemp("gate-broken")
    onnx.save(model, root / "digits-noisy.onnx")
    return edgecompile.build(root / "digits-noisy.onnx", target="cpu", output=root / "bundle", data=digits_test_npz)
