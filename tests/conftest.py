"""Shared fixtures: one cache dir and one digits FP32 bundle per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from skip_policy import pytest_configure  # noqa: F401  (no silent skips: see tests/skip_policy.py)

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


@pytest.fixture(scope="session")
def tvm_bundle(tmp_path_factory):
    """digits built with --backend tvm (untuned) through the whole pipeline, once per session."""
    import tvm  # noqa: F401  (installed by the set-up; a missing one fails here, naming it)

    import edgecompile

    return edgecompile.build("models/digits", target="cpu", backend="tvm",
                             output=tmp_path_factory.mktemp("tvm") / "digits-tvm")


@pytest.fixture
def bundle_copy(digits_bundle, tmp_path):
    import shutil

    dest = tmp_path / "bundle"
    shutil.copytree(digits_bundle.path, dest)
    return dest


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# -- jetson (TensorRT) bundles: fp16 through the Python API, int8 through the CLI -------------------

@pytest.fixture(scope="session")
def trt_bundle(tmp_path_factory):
    import edgecompile

    out = tmp_path_factory.mktemp("bundles") / "digits-jetson"
    return edgecompile.build("models/digits", target="jetson", output=out)


@pytest.fixture(scope="session")
def trt_int8_build(tmp_path_factory):
    """(returncode, stdout, stderr, bundle dir) of `edgecompile build ... --target jetson --precision int8`."""
    out = tmp_path_factory.mktemp("bundles") / "digits-jetson-int8"
    rc, stdout, stderr = run_cli("build", "models/digits", "--target", "jetson", "--precision", "int8", "-o", out)
    return rc, stdout, stderr, out


@pytest.fixture(scope="session")
def trt_int8_bundle(trt_int8_build):
    rc, _, stderr, out = trt_int8_build
    assert rc == 0, stderr
    return out


@pytest.fixture(scope="session")
def quantized(trt_bundle, tmp_path_factory, digits_source):
    """The prepared digits graph quantized by ONNX Runtime: TensorRT-style and ORT's default preset."""
    import onnx_ir as ir
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = trt_bundle.path / "tensorrt" / "model.onnx"
    calib = digits_source.dataset("calibration").take(64)
    out = {}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib.batches(32))

        def get_next(self):
            return next(self.it, None)

    presets = {
        "tensorrt": dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                        "QuantizeBias": False}),
        "tensorrt-int32-bias": dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                    per_channel=True,
                                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True}),
        "ort-default": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True),
    }
    d = tmp_path_factory.mktemp("qdq")
    for name, kw in presets.items():
        quantize_static(str(src), str(d / f"{name}.onnx"), Reader(), quant_format=QuantFormat.QDQ, **kw)
        out[name] = ir.load(str(d / f"{name}.onnx"))
    return out


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
    from edgecompile.verify.regression import make_baseline, save_baseline

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
    return edgecompile.build(root / "digits-noisy.onnx", target="cpu", backend="ort", output=root / "bundle",
                             data=digits_test_npz)


# -- edgecompile serve (tests/serve): a real server subprocess over loopback (helpers in tests/serving.py) ----

@pytest.fixture(scope="session")
def pair_bundle(tmp_path_factory):
    """z = x + y with independent symbolic widths: the engine itself fails when the widths differ."""
    import numpy as np
    import onnx
    import onnx.parser
    from serving import PAIR_ONNX

    import edgecompile

    d = tmp_path_factory.mktemp("pair")
    onnx.save(onnx.parser.parse_model(PAIR_ONNX), d / "pair.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.random((16, 4), dtype=np.float32), y=rng.random((16, 4), dtype=np.float32))
    return edgecompile.build(d / "pair.onnx", target="cpu", backend="ort", data=d / "data.npz", output=d / "bundle")


@pytest.fixture(scope="module")
def server(digits_bundle, pair_bundle):
    """digits + pair, bearer token (from the environment), CORS for one origin, a 1 MiB body limit."""
    from serving import TOKEN, Server

    s = Server([digits_bundle.path, f"pair={pair_bundle.path}", "--max-body-mb", "1",
                "--cors-origin", "http://app.example"], env={"EDGECOMPILE_SERVE_TOKEN": TOKEN})
    yield s
    assert s.stop() == 0, s.output()
    assert "Traceback" not in s.output()


@pytest.fixture(scope="module")
def client(server):
    import httpx
    from serving import TOKEN

    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c
