"""Never stale: what a build depends on is in its fingerprint and cache keys; editing any of it misses the cache."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sechelpers import tiny_model

PACKAGE = '''
import numpy as np
from pathlib import Path
from edgecompile.data import Dataset, TensorSpec
from edgecompile.source import TorchModelSource

HERE = Path(__file__).parent


def create():
    import torch
    from .model import Net
    return Net().eval()


def load_split(split):
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
    return Dataset(f"tinypkg:{split}", {"x": x}, np.zeros(8, np.int64))


def source():
    return TorchModelSource(name="tinypkg", create=create, inputs=[TensorSpec("x", ("batch", 4), "float32")],
                            outputs=["y"], load_split=load_split, splits=("test",), metric="top1",
                            default_calibration="tinypkg:test", default_evaluation="tinypkg:test",
                            data_files=(str(HERE.parent / "extra.txt"),))
'''
MODEL = '''
import torch

SCALE = {scale}


class Net(torch.nn.Module):
    def forward(self, x):
        return x * SCALE
'''


@pytest.fixture
def package(tmp_path):
    pkg = tmp_path / "tinypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PACKAGE)
    (pkg / "model.py").write_text(MODEL.format(scale=2.0))
    (tmp_path / "extra.txt").write_text("v1")
    return pkg


def _fp(pkg) -> str:
    from edgecompile.source import resolve_source

    return resolve_source(pkg).fingerprint


def test_package_fingerprint_covers_every_file_and_declared_data(package):
    first = _fp(package)
    assert first and first == _fp(package)
    (package / "model.py").write_text(MODEL.format(scale=3.0))
    second = _fp(package)
    assert second != first
    (package / "helpers.py").write_text("X = 1\n")
    third = _fp(package)
    assert third != second
    (package.parent / "extra.txt").write_text("v2")
    assert _fp(package) != third
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "junk.pyc").write_bytes(b"x")
    assert _fp(package) == _fp(package)


def _cache(out):
    return json.loads((out / "report.json").read_text())["cache"]


def test_editing_model_py_misses_the_export_cache(package, tmp_path):
    import edgecompile

    out = tmp_path / "out"
    edgecompile.build(package, target="cpu", backend="ort", output=out)
    edgecompile.build(package, target="cpu", backend="ort", output=out)
    assert _cache(out)["bundle"] == "hit"
    (package / "model.py").write_text(MODEL.format(scale=5.0))
    edgecompile.build(package, target="cpu", backend="ort", output=out)
    assert _cache(out) | {"key": None} == {"bundle": "miss", "export": "miss", "key": None}
    import edgecompile.runtime as rt

    with rt.load(out) as r:
        np.testing.assert_allclose(r(np.ones((1, 4), np.float32)), 5.0 * np.ones((1, 4)))


def test_editing_onnx_external_data_misses_the_cache(tmp_path):
    import onnx

    import edgecompile
    import edgecompile.runtime as rt

    src = tmp_path / "src"
    src.mkdir()
    onnx.save(tiny_model(), src / "m.onnx", save_as_external_data=True, location="m.bin", size_threshold=0)
    data = tmp_path / "x.npz"
    np.savez(data, x=np.zeros((4, 4), np.float32))
    out = tmp_path / "out"
    edgecompile.build(src / "m.onnx", target="cpu", backend="ort", data=data, output=out)
    edgecompile.build(src / "m.onnx", target="cpu", backend="ort", data=data, output=out)
    assert _cache(out)["bundle"] == "hit"
    (src / "m.bin").write_bytes(np.full(4, 7, np.float32).tobytes())
    edgecompile.build(src / "m.onnx", target="cpu", backend="ort", data=data, output=out)
    assert _cache(out)["bundle"] == "miss"
    with rt.load(out) as r:
        np.testing.assert_array_equal(r(np.zeros((1, 4), np.float32)), [[7, 7, 7, 7]])
    shutil.rmtree(out)
