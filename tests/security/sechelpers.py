"""Helpers for the security suite: a tiny ONNX model (onnx.helper, no torch) and its ORT bundle, manifest
editing, CLI runs and error checks. (No conftest.py here: `from conftest import ...` in other test modules
must keep finding tests/conftest.py.) Test modules import the fixtures they use from this module."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

def tiny_model(opset: int = 17, extra_domain: str | None = None, node_domain: str = "", bad_ref: bool = False,
               op: str = "Add"):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "W")
    node = helper.make_node(op, ["x", "nope" if bad_ref else "W"], ["y"], domain=node_domain)
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(extra_domain, 1)] if extra_domain else [])
    model = helper.make_model(graph, opset_imports=ops)
    model.ir_version = 8
    return model


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, manifest) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def assert_one_line_error(rc: int, stdout: str, stderr: str, codes=(1, 2), contains: str = "") -> None:
    assert rc in codes, (rc, stdout, stderr)
    assert "Traceback" not in stderr + stdout, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error: "), stderr
    assert all(ln.startswith(("error: ", "  hint: ")) for ln in lines), stderr
    assert "internal error" not in stderr, stderr
    assert contains in lines[0], (contains, stderr)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """(tiny.onnx, data.npz): y = x + [0, 1, 2, 3]."""
    import onnx

    d = tmp_path_factory.mktemp("tiny")
    onnx.save(tiny_model(), d / "tiny.onnx")
    np.savez(d / "data.npz", x=np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32))
    return d / "tiny.onnx", d / "data.npz"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_onnx, tmp_path_factory):
    import edgecompile

    model, data = tiny_onnx
    out = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
    edgecompile.build(model, target="cpu", backend="ort", data=data, output=out)
    return out


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny ORT bundle to tamper with."""
    dest = tmp_path / "b"
    shutil.copytree(tiny_bundle, dest)
    return dest


def run_cli(*args, env=None, timeout=600):
    """The real `edgecompile` entry point in a subprocess: (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "edgecompile", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr
