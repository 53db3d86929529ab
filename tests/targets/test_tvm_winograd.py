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
    assert winograd.eligible(_attrs(), (3, 3, 64, 64), (1, 56, 56, 64)) == 4          # 196 4x4 tiles
    assert winograd.eligible(_attrs(), (3, 3, 128, 128), (1, 28, 28, 128)) == 4       # 49 4x4 tiles
    assert winograd.eligible(_attrs(), (3, 3, 256, 256), (1, 14, 14, 256)) == 2       # 16 4x4, 49 2x2 tiles
    assert winograd.eligible(_attrs(), (3, 3, 512, 512), (1, 7, 7, 512)) is None      # 16 2x2 tiles: direct
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


def test_a_graph_runs_its_3x3_convolutions_as_winograd_kernels_and_computes_the_same():
    import onnxruntime as ort
    from tvm import relax

    from edgecompile.targets.tvm.build import to_relax

    model = _residual_graph()
    lowering = {}
    mod, _ = to_relax(model, lowering, forms=[fma.FORM])
    assert lowering["winograd_conv2d"] == 2 and lowering["fma_conv2d"] == 1, lowering     # the 1x1 is direct
    transforms = {gv.name_hint: f for gv, f in mod.functions.items()
                  if gv.name_hint.startswith((winograd.INPUT, winograd.OUTPUT))}
    assert len(transforms) == 3, sorted(transforms)        # 8 and 16 input channels; one output shape, shared
    assert all(int(f.attrs["op_pattern"]) == winograd.OPAQUE and f.attrs["tirx.is_scheduled"]
               for f in transforms.values())
    fused = relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(relax.transform.LegalizeOps()(mod)))
    names = [gv.name_hint for gv in fused.get_global_vars()]
    assert not any(n.startswith("fused_") and "winograd" in n for n in names), names   # the schedules stay
    assert sum(n.startswith("winograd_fma") for n in names) == 2, names                 # the products tuned

    x = np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    plain = {}
    to_relax(model, plain)                    # no forms (an ARM target, a CPU without AVX-512): direct
    assert "winograd_conv2d" not in plain


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape,padding", [((1, 9, 9, 16), (1, 1, 1, 1)), ((2, 6, 7, 6), (0, 1, 2, 1))])
def test_the_scheduled_transforms_compute_the_convolution_with_the_products_between_them(m, shape, padding):
    """The input and output transform kernels as built (odd maps cropped, channels padded to x4, a batch of
    two), the products between them in numpy: together the direct convolution."""
    n, h, w, c = shape
    top, left, bottom, right = padding
    oh, ow = h + top + bottom - 2, w + left + right - 2
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((3, 3, c, 32)).astype(np.float32)
    tiles = n * -(-oh // m) * -(-ow // m)
    c4 = -(-c // 4) * 4
    v = tvm.runtime.tensor(np.zeros(((m + 2) ** 2, tiles, c4), np.float32))
    _built(winograd.input_func(shape, "float32", m, top, left, oh, ow, c))(tvm.runtime.tensor(x), v)
    u = winograd.transform_weights(wt, m)                       # [e, K/16, C4/4, 4, 16] -> [e, C4, K]
    u = u.transpose(0, 2, 3, 1, 4).reshape(len(u), c4, -1)
    prod = np.einsum("epc,eck->epk", v.numpy().astype(np.float64), u).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((n, oh, ow, 32), np.float32))
    _built(winograd.output_func(list(prod.shape), "float32", n, oh, ow, m))(tvm.runtime.tensor(prod), y)
    want = conv_nhwc(x, wt, (1, 1), padding, (1, 1), np.float64)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-3 if m == 4 else 1e-4, atol=1e-3 if m == 4 else 1e-4)


def _built(func):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")["main"]


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
