"""Float convolutions MetaSchedule can tensorize with AVX-512 FMA (targets/tvm/fma.py, packed.py): the packed
weight layout, the convolution computed from it, our 16x4 FMA intrinsic, which convolutions a graph packs, and
the design space that offers the intrinsic. Small kernels, seconds."""
from __future__ import annotations

import numpy as np
import pytest

import tvm  # noqa: F401  (installed by the set-up)

from conv_ref import conv_nhwc, tensorize_product
from edgecompile.targets.tvm import fma, forms, packed, vnni

AVX512_CPU = "skylake-avx512"      # LLVM's name; code for it is built (LLVM verifies it) on any x86 host


def _host_has_avx512() -> bool:
    from tvm.target import codegen

    return fma.FORM.target_has(tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}))


def test_float_weights_are_packed_with_16_output_channels_innermost_and_the_inputs_padded_with_zeros():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 6, 32)).astype(np.float32)          # 6 inputs: padded to 8
    pk = packed.pack_weights(w, fma.FORM)
    assert pk.shape == (2, 3, 3, 2, 4, 16) and pk.dtype == np.float32
    for a, y, x, b, k, j in ((0, 0, 0, 0, 0, 0), (1, 2, 1, 1, 1, 15), (0, 1, 2, 0, 3, 7), (1, 0, 0, 1, 0, 3)):
        assert pk[a, y, x, b, k, j] == w[y, x, b * 4 + k, a * 16 + j]
    assert not pk[:, :, :, 1, 2:, :].any()            # input channels 6 and 7 do not exist


@pytest.mark.parametrize("shape", [
    # (H, W, I, O, K, strides, padding, dilation)
    (9, 9, 3, 16, 3, (2, 2), (1, 1, 1, 1), (1, 1)),        # a stem: 3 inputs padded to 4, strided, padded
    (7, 6, 8, 32, 3, (1, 1), (0, 0, 0, 0), (2, 2)),        # dilated, no padding, no padding stage
    (6, 6, 12, 16, 2, (1, 1), (0, 1, 1, 0), (1, 1)),       # asymmetric padding
    (5, 5, 16, 48, 1, (1, 1), (0, 0, 0, 0), (1, 1)),       # 1x1, three groups of 16 outputs
])
def test_the_packed_float_convolution_computes_the_convolution(shape):
    from tvm import te

    h, w_, i, o, k, strides, padding, dilation = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, h, w_, i)).astype(np.float32)
    w = rng.standard_normal((k, k, i, o)).astype(np.float32)
    pk = packed.pack_weights(w, fma.FORM)
    data, pk_in = te.placeholder(x.shape, "float32", "data"), te.placeholder(pk.shape, "float32", "packed")
    out = packed.conv_te(data, pk_in, list(strides), list(padding), list(dilation), i, o, fma.FORM)
    lib = tvm.compile(te.create_prim_func([data, pk_in, out]), target="llvm")
    want = conv_nhwc(x, w, strides, padding, dilation, np.float64)
    got = tvm.runtime.tensor(np.zeros(want.shape, np.float32))
    lib(tvm.runtime.tensor(x), tvm.runtime.tensor(pk), got)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_the_fma_intrinsic_tensorizes_a_packed_product_and_computes_it():
    """C[i, j] = sum_k A[i, k] * B[k, j] from B packed [N/16, K/4, 4, 16], the 4x16 tile tensorized by hand
    with fma_16x4_f32 as a tuned candidate has it; built for AVX-512 (LLVM verifies), run where the CPU can."""
    from tvm import te

    from edgecompile.targets.tvm.startup import import_tensor_intrinsics

    import_tensor_intrinsics()
    m, n, kk = 3, 32, 12
    a = te.placeholder((m, kk), "float32", "a")
    b = te.placeholder((n // 16, kk // 4, 4, 16), "float32", "b")
    r = te.reduce_axis((0, kk), "r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[j // 16, r // 4, r % 4, j % 16], axis=r), name="c")
    mod = tensorize_product(te.create_prim_func([a, b, c]), fma.INTRIN)
    assert "llvm.fmuladd" in mod.script()
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "mcpu": AVX512_CPU}))
    if not _host_has_avx512():
        pytest.skip(f"built for {AVX512_CPU}; this CPU has no AVX-512 to run it")
    rng = np.random.default_rng(2)
    av = rng.standard_normal((m, kk)).astype(np.float32)
    bv = rng.standard_normal((kk, n)).astype(np.float32)
    pk = np.ascontiguousarray(bv.reshape(kk // 4, 4, n // 16, 16).transpose(2, 0, 1, 3))
    got = tvm.runtime.tensor(np.zeros((m, n), np.float32))
    lib(tvm.runtime.tensor(av), tvm.runtime.tensor(pk), got)
    np.testing.assert_allclose(got.numpy(), av.astype(np.float64) @ bv, rtol=1e-4, atol=1e-4)


def _float_conv_graph():
    """A float ONNX graph: a 3->16 stem conv, a 16->24 conv (24 outputs: not packable), a 24->32 1x1 conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    ws = [rng.standard_normal(s).astype(np.float32) * 0.2 for s in ((16, 3, 3, 3), (24, 16, 3, 3), (32, 24, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 6, 6])],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_graph_packs_the_float_convolutions_with_16n_outputs_and_still_computes_the_same():
    import onnxruntime as ort

    from edgecompile.targets.tvm.build import to_relax

    model = _float_conv_graph()
    lowering = {}
    mod, _ = to_relax(model, lowering, forms=[vnni.FORM, fma.FORM])
    assert lowering["fma_conv2d"] == 2 and lowering["vnni_conv2d"] == 0, lowering     # the 24-output one stays
    names = [gv.name_hint for gv in mod.get_global_vars()]
    assert any(n.startswith(fma.FORM.kernel) for n in names), names
    x = np.random.default_rng(4).standard_normal((1, 3, 12, 12)).astype(np.float32)
    from tvm import relax

    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    plain = {}
    to_relax(model, plain)                 # no forms (e.g. an ARM target): nothing is packed
    assert "fma_conv2d" not in plain


def test_only_x86_targets_with_avx512_get_the_packed_float_convolutions_and_the_rule_for_them():
    from tvm.s_tir import meta_schedule as ms

    assert fma.FORM.target_has(tvm.target.Target({"kind": "llvm", "mcpu": AVX512_CPU}))
    assert not fma.FORM.target_has(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
    assert not fma.FORM.target_has(tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}))
    assert forms.target_forms(tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})) == [vnni.FORM, fma.FORM]
    assert forms.target_forms(tvm.target.Target({"kind": "llvm", "mcpu": AVX512_CPU})) == [fma.FORM]
    space = packed.space_generator(ms, [fma.INTRIN])
    rules = [type(r).__name__ for r in space.sch_rules]
    assert rules.index("MultiLevelTilingWithIntrin") + 1 == rules.index("MultiLevelTiling"), rules


@pytest.mark.skipif(not _host_has_avx512(), reason="MetaSchedule measures candidates on this CPU, which has no AVX-512")
def test_tuned_float_convolutions_use_the_fma_tile_and_still_match_ort(tmp_path, monkeypatch):
    """A short tuning session (AVX-512 host): valid measured candidates of the packed float convolutions are
    tensorized with fma_16x4_f32, and the tuned library's outputs still match ORT's."""
    import json

    import onnx_ir as ir
    import onnxruntime as ort

    from edgecompile.data import TensorSpec
    from edgecompile.targets.profiles import get_profile
    from edgecompile.targets.tvm.build import compile_library
    from edgecompile.targets.tvm.run import load_library

    proto = _float_conv_graph()
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path / "cache"))
    meta = compile_library(ir.from_proto(proto), get_profile("cpu"), tmp_path / "lib.so", tune_trials=16)
    assert meta["lowering"]["fma_conv2d"] == 2
    records = [json.loads(line) for f in (tmp_path / "cache" / "tvm" / "records").glob("*/database_tuning_record.json")
               for line in f.read_text().splitlines() if line.strip()]
    valid = [r for r in records if r[1][1] and max(float(s) for s in r[1][1]) < 1e9]
    tensorized = [r for r in valid if fma.INTRIN in json.dumps(r[1][0]) and '"Tensorize"' in json.dumps(r[1][0])]
    assert tensorized, f"{len(valid)} valid records of {len(records)}, none tensorized with {fma.INTRIN}"
    lib = load_library(tmp_path / "lib.so", [TensorSpec("x", (1, 3, 12, 12), "float32")],
                       [TensorSpec("y", (1, 32, 6, 6), "float32")], 1)
    x = np.random.default_rng(5).standard_normal((1, 3, 12, 12)).astype(np.float32)
    out = lib.run({"x": x})
    got = np.asarray(next(iter(out.values())) if isinstance(out, dict) else out[0])
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
