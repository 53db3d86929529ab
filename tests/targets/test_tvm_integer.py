"""TVM INT8 that is INT8 (targets/tvm/integer.py): QDQ convolutions and matmuls compile to u8 x s8 -> s32
kernels whose outputs match ONNX Runtime running the same QDQ graph; what cannot be rewritten stays float and
is counted; convolutions run NHWC. Untuned libraries of a small network (seconds)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import tvm  # noqa: F401  (installed by the set-up)

from edgecompile.data import TensorSpec
from edgecompile.targets.profiles import get_profile

TUNED_TRIALS = 16


def _net():
    import torch

    class Net(torch.nn.Module):
        """Padded strided conv on an input with a non-zero zero point, a depthwise conv (stays float), a 1x1 conv,
        a residual add, and a Gemm: every case of the rewrite, at 12x12."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.pw = torch.nn.Conv2d(16, 16, 1)
            self.fc = torch.nn.Linear(16, 5)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            y = torch.relu(self.pw(torch.relu(self.dw(y)))) + y
            return self.fc(y.mean((2, 3)))

    return Net().eval()


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("int8") / "net.onnx"
    prog = torch.onnx.export(_net(), (torch.randn(1, 3, 12, 12),), dynamo=True, input_names=["input"],
                             output_names=["logits"], verbose=False)
    prog.save(str(path))
    return path


@pytest.fixture(scope="module")
def qdq(fp32_onnx):
    """(QDQ model quantized for TVM with our pass, its bytes, feeds): calibrated on 16 random images."""
    import onnx_ir as ir

    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.quantize import Quantize

    path = fp32_onnx
    rng = np.random.default_rng(0)
    cal = [{"input": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(16)]
    res = Quantize(QuantizeSection(mode="static", calibrate="minmax"), backend="tvm", calibration_data=cal)(
        ir.load(str(path)))
    assert res.modified
    feeds = {"input": rng.standard_normal((1, 3, 12, 12)).astype(np.float32) * 1.5}
    return res.model, ir.to_proto(res.model).SerializeToString(), feeds


def _compile_and_run(model, feeds, tmp_path):
    from edgecompile.targets.tvm.build import compile_library
    from edgecompile.targets.tvm.run import load_library

    meta = compile_library(model, get_profile("cpu"), tmp_path / "lib.so", cache=False)
    lib = load_library(tmp_path / "lib.so", [TensorSpec("input", (1, 3, 12, 12), "float32")],
                       [TensorSpec("logits", (1, 5), "float32")], 1)
    out = lib.run(feeds)
    return meta, np.asarray(next(iter(out.values())) if isinstance(out, dict) else out[0])


def test_qdq_convs_and_matmuls_become_integer_kernels_with_ort_outputs(qdq, tmp_path):
    from edgecompile.targets.ort.run import create_session

    model, data, feeds = qdq
    meta, got = _compile_and_run(model, feeds, tmp_path)
    low = meta["lowering"]
    assert low["conv_layout"] == "NHWC/HWIO"
    assert low["integer_kernels"] == {"conv2d": 2, "matmul": 1}, low        # stem, 1x1 conv, Gemm
    assert low["float_kernels"] == {"conv2d": 1, "matmul": 0}, low          # the depthwise conv
    want = create_session(data, threads=1).run(None, feeds)[0]
    # the same integer arithmetic as ORT's QDQ graph: equal up to float rounding of the epilogue (a flip of one
    # quantization step of the output at most)
    out_scale = float(np.abs(want).max()) / 127
    np.testing.assert_allclose(got, want, atol=1.01 * out_scale, rtol=0)
    assert np.abs(got - want).mean() < 0.05 * out_scale


def test_the_relax_module_computes_in_integers(qdq):
    from edgecompile.targets.tvm.build import to_relax

    lowering = {}
    mod, _ = to_relax(qdq[0], lowering)
    text = mod.script()
    assert text.count('out_dtype="int32"') == 3, text          # two conv2d, one matmul, each u8 x s8 -> s32
    assert "R.quantize(" not in text          # activations quantize in elementwise ops that follow the layout
    assert 'data_layout="NHWC"' in text and 'kernel_layout="HWIO"' in text


def test_the_zero_point_correction_counts_only_taps_inside_the_image():
    from edgecompile.targets.tvm.integer import _ones_conv

    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int64)
    for stride, pad, dil, hw in ((1, 1, 1, 5), (2, 1, 1, 7), (1, 2, 2, 6), (2, 0, 1, 7)):
        out_hw = (hw + 2 * pad - dil * 2 - 1) // stride + 1
        got = np.broadcast_to(_ones_conv(w, [hw, hw], [out_hw, out_hw], [stride] * 2, [pad] * 4, [dil] * 2),
                              (1, 4, out_hw, out_hw))
        # direct: pad a ones image with zeros and slide the kernel
        img = np.pad(np.ones((3, hw, hw), np.int64), ((0, 0), (pad, pad), (pad, pad)))
        want = np.zeros((4, out_hw, out_hw), np.int64)
        for i in range(out_hw):
            for j in range(out_hw):
                patch = img[:, i * stride:i * stride + 2 * dil + 1:dil, j * stride:j * stride + 2 * dil + 1:dil]
                want[:, i, j] = (w * patch[None]).sum(axis=(1, 2, 3))
        np.testing.assert_array_equal(got[0], want, err_msg=f"stride {stride} pad {pad} dilation {dil}")


def test_asymmetric_weights_stay_float(fp32_onnx, tmp_path):
    """uint8 weights with a zero point (not TVM's preset, but a foreign QDQ graph may have them): not rewritten."""
    import onnx_ir as ir
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src, dst = fp32_onnx, tmp_path / "q.onnx"
    rng = np.random.default_rng(1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QUInt8, per_channel=False)
    from edgecompile.targets.tvm.build import to_relax

    lowering = {}
    to_relax(ir.load(str(dst)), lowering)
    assert lowering["integer_kernels"] == {"conv2d": 0, "matmul": 0}, lowering
    assert lowering["float_kernels"] == {"conv2d": 3, "matmul": 1}, lowering


def test_fp32_graphs_only_change_layout(digits_onnx):
    import onnx_ir as ir

    from edgecompile.targets.tvm.build import to_relax

    lowering = {}
    to_relax(ir.load(str(digits_onnx[0])), lowering)
    assert lowering == {"conv_layout": "NHWC/HWIO"}


def test_every_kernel_gets_a_candidate_in_the_first_round_when_the_budget_allows():
    from edgecompile.targets.tvm.tune import MAX_PER_ITER, MIN_PER_ITER, trials_per_batch

    assert trials_per_batch(64, 20) == 3             # 4 each would leave 4 of 20 kernels untuned
    assert trials_per_batch(20, 20) == 1
    assert trials_per_batch(64, 8) == MIN_PER_ITER   # room for the usual batch
    assert trials_per_batch(10_000, 8) == MAX_PER_ITER
    assert trials_per_batch(4, 8) == MIN_PER_ITER    # fewer trials than kernels: batches as usual


def test_tvm_native_messages_go_to_the_log_and_progress_to_the_terminal(tmp_path, capfd):
    from edgecompile.progress import Progress
    from edgecompile.targets.tvm.workers import native_stderr_to

    progress = Progress()
    with native_stderr_to(tmp_path / "tuning.log", progress):
        os.write(2, b"[12:00:00] rewrite_tensorize.cc:50: Warning: Tensorize failed\n")
        progress.info("    tune [   1/4] progress line")
        sys.stderr.write("python line\n")
    err = capfd.readouterr().err
    assert "progress line" in err and "python line" in err and "Tensorize failed" not in err
    log = (tmp_path / "tuning.log").read_text()
    assert "Tensorize failed" in log and "progress line" not in log
    os.write(2, b"after\n")                             # fd 2 is the terminal again
    assert "after" in capfd.readouterr().err


def test_a_lowering_tvm_rejects_is_a_one_line_compile_error(qdq, monkeypatch):
    import edgecompile.targets.tvm.build as build
    from edgecompile.errors import CompileError

    def rejects(mod):
        raise RuntimeError("Check failed: layout inference\n  long C++ trace")

    monkeypatch.setattr(build, "integer_kernels", rejects)
    with pytest.raises(CompileError) as err:
        build.to_relax(qdq[0])
    assert "\n" not in err.value.message and "lowering the graph for TVM" in err.value.message
    assert "--backend ort" in err.value.hint


def _host_has_vnni() -> bool:
    from tvm.target import codegen

    from edgecompile.targets.tvm import vnni

    return vnni.FORM.target_has(tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}))


@pytest.mark.skipif(not _host_has_vnni(),
                    reason="MetaSchedule measures candidates on this CPU, which has no AVX512-VNNI")
def test_tuned_integer_convolutions_use_vnni_and_still_match_ort(qdq, tmp_path, monkeypatch):
    """A short tuning session (VNNI host): valid measured candidates of the packed convolutions are
    tensorized with `vpdpbusd` (before the fixes in vnni.py none was: they all failed to build), and the tuned
    library's outputs still match ORT's QDQ graph."""
    import json

    from edgecompile.targets.ort.run import create_session
    from edgecompile.targets.tvm.build import compile_library
    from edgecompile.targets.tvm.run import load_library

    model, data, feeds = qdq
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path / "cache"))
    meta = compile_library(model, get_profile("cpu"), tmp_path / "lib.so", tune_trials=TUNED_TRIALS)
    assert meta["lowering"]["vnni_conv2d"] == 2
    records = [json.loads(line) for f in (tmp_path / "cache" / "tvm" / "records").glob("*/database_tuning_record.json")
               for line in f.read_text().splitlines() if line.strip()]
    valid = [r for r in records if r[1][1] and max(float(s) for s in r[1][1]) < 1e9]
    tensorized = [r for r in valid if "dot_16x4_vnni" in json.dumps(r[1][0]) and '"Tensorize"' in json.dumps(r[1][0])]
    assert tensorized, f"{len(valid)} valid records of {len(records)}, none tensorized with VNNI"
    lib = load_library(tmp_path / "lib.so", [TensorSpec("input", (1, 3, 12, 12), "float32")],
                       [TensorSpec("logits", (1, 5), "float32")], 1)
    out = lib.run(feeds)
    got = np.asarray(next(iter(out.values())) if isinstance(out, dict) else out[0])
    want = create_session(data, threads=1).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, atol=1.01 * float(np.abs(want).max()) / 127, rtol=0)
