"""3x3 stride-1 float convolutions as Winograd F(m x m, 3 x 3) (targets/tvm/winograd.py): the transforms'
arithmetic, which convolutions take it, the packed transformed weights, a graph that still computes the same,
and the design space that tensorizes its matrix product with the FMA tile. Small kernels, seconds."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import tvm  # noqa: F401  (installed by the set-up)

from conv_ref import conv_nhwc
from edgecompile.targets.tvm import fma, packed, winograd


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape,padding", [
    ((1, 7, 7, 5), (1, 1, 1, 1)),        # odd map: the last tile row and column are cropped
    ((2, 9, 6, 8), (1, 1, 1, 1)),        # a batch of two, tiles numbered across it
    ((1, 8, 8, 4), (0, 0, 0, 0)),        # no padding
    ((1, 5, 7, 3), (0, 1, 2, 1)),        # asymmetric padding
])
def test_the_winograd_arithmetic_computes_the_direct_convolution(m, shape, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((3, 3, shape[3], 16)).astype(np.float32)
    want = conv_nhwc(x, w, (1, 1), padding, (1, 1), np.float64)
    got = winograd.reference(x, w, padding, m)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def _attrs(strides=(1, 1), dilation=(1, 1), padding=(1, 1, 1, 1)):
    return SimpleNamespace(strides=list(strides), dilation=list(dilation), padding=list(padding))


def test_only_3x3_stride_1_convolutions_with_enough_tiles_and_16n_outputs_take_winograd():
    assert winograd.eligible(_attrs(), (3, 3, 64, 64), (1, 56, 56, 64)) == 2
    assert winograd.eligible(_attrs(), (3, 3, 256, 256), (1, 14, 14, 256)) == 2       # 49 tiles
    assert winograd.eligible(_attrs(), (3, 3, 512, 512), (1, 7, 7, 512)) is None      # 16 tiles: direct
    assert winograd.eligible(_attrs(), (3, 3, 512, 512), (4, 7, 7, 512)) == 2         # 64 tiles in a batch
    assert winograd.eligible(_attrs(strides=(2, 2)), (3, 3, 64, 64), (1, 56, 56, 64)) is None
    assert winograd.eligible(_attrs(dilation=(2, 2)), (3, 3, 64, 64), (1, 56, 56, 64)) is None
    assert winograd.eligible(_attrs(padding=(0, 0, 0, 0)), (1, 1, 64, 64), (1, 56, 56, 64)) is None
    assert winograd.eligible(_attrs(), (3, 3, 64, 24), (1, 56, 56, 64)) is None       # 24 outputs


def test_transformed_weights_are_packed_by_tile_element_with_16_outputs_innermost_and_inputs_padded():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 3, 6, 32)).astype(np.float32)          # 6 inputs: padded to 8
    u = winograd.transform_weights(w, 2)
    assert u.shape == (16, 2, 2, 4, 16) and u.dtype == np.float32
    _, g, _ = winograd._MATRICES[2]
    full = np.einsum("ay,yxio,bx->abio", g, w.astype(np.float64), g).reshape(16, 6, 32)   # G g G'
    for e, a, b, k, j in ((0, 0, 0, 0, 0), (5, 1, 1, 1, 15), (15, 0, 0, 3, 7), (10, 1, 1, 0, 3)):
        np.testing.assert_allclose(u[e, a, b, k, j], full[e, b * 4 + k, a * 16 + j], rtol=1e-6)
    assert not u[:, :, 1, 2:, :].any()               # input channels 6 and 7 do not exist


def _residual_graph():
    """x (1x8x16x16) -> 3x3 conv 8->16 (bias) -> ReLU -> 3x3 conv 16->16 -> + 1x1 conv of x -> ReLU."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    ws = {"w0": (16, 8, 3, 3), "w1": (16, 16, 3, 3), "ws": (16, 8, 1, 1)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n) for n, s in ws.items()]
    inits.append(numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b0"))
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "ws"], ["s"]),
             helper.make_node("Add", ["c", "s"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_graph_runs_its_3x3_convolutions_as_winograd_kernels_fused_with_what_follows_and_computes_the_same():
    import onnxruntime as ort
    from tvm import relax

    from edgecompile.targets.tvm.build import to_relax

    model = _residual_graph()
    lowering = {}
    mod, _ = to_relax(model, lowering, forms=[fma.FORM])
    assert lowering["winograd_conv2d"] == 2 and lowering["fma_conv2d"] == 1, lowering     # the 1x1 is direct
    inputs = [f for gv, f in mod.functions.items() if gv.name_hint.startswith(winograd.INPUT)]
    assert inputs and all(int(f.attrs["op_pattern"]) == winograd.OPAQUE for f in inputs)
    fused = relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(relax.transform.LegalizeOps()(mod)))
    names = [gv.name_hint for gv in fused.get_global_vars()]
    assert any(n.startswith("fused_winograd_output") and n.endswith("relu") for n in names), names
    assert not any(n.startswith("fused_") and winograd.INPUT in n for n in names), names   # inputs stay alone

    x = np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    plain = {}
    to_relax(model, plain)                    # no forms (an ARM target, a CPU without AVX-512): direct
    assert "winograd_conv2d" not in plain


def test_the_design_space_tensorizes_the_winograd_product_with_the_fma_tile():
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from edgecompile.targets.tvm.startup import import_tensor_intrinsics

    import_tensor_intrinsics()
    v = te.placeholder((16, 64, 32), "float32", "v")
    u = te.placeholder((16, 2, 8, 4, 16), "float32", "u")
    prim = te.create_prim_func([v, u, winograd.gemm_te(v, u, fma.FORM)])
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    ctx = ms.TuneContext(mod=tvm.IRModule({"main": prim}), target=target,
                         space_generator=packed.space_generator(ms, [fma.INTRIN]), task_name="winograd")
    traces = [str(s.trace) for s in ctx.generate_design_space()]
    assert any(fma.INTRIN in t and "tensorize" in t.lower() for t in traces), traces[:1]
