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
    """The digits model built for --target cpu --backend ort (fp32) once per session. Do not modify it:
    copy it (see `bundle_copy`) for tests that tamper with files."""
    import edgecompile

    out = tmp_path_factory.mktemp("bundles") / "digits-cpu"
    return edgecompile.build("models/digits", target="cpu", backend="ort", output=out)


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


@pytest.fixture(scope="session")
def digits_onnx(digits_bundle, digits_source, tmp_path_factory):
    """(ONNX file, .npz of the labelled test split) for fast builds that skip the torch export."""
    import numpy as np

    d = tmp_path_factory.mktemp("digits-onnx")
    ds = digits_source.dataset("test")
    npz = d / "test.npz"
    np.savez(npz, input=ds.inputs["input"], labels=ds.labels)
    return digits_bundle.path / "model.onnx", npz
