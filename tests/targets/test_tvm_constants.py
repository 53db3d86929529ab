"""Constants folded in numpy at import (targets/tvm/constants.py): ConvertLayout's weight and bias transposes
(and reshapes) of constants leave no call for FoldConstant to compile, and the graph still computes the same."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import tvm  # noqa: F401  (installed by the set-up)

from edgecompile.targets.tvm import build, constants


def _conv_model(rng):
    """x -> Conv (bias) -> Relu -> Conv (no bias) + Reshape(c) + Transpose(t), c and t constants."""
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    c = rng.standard_normal(16 * 5 * 5).astype(np.float32)
    t = rng.standard_normal((5, 5, 16, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (c, "c"), (t, "t"),
                                                       (np.array([1, 16, 5, 5], np.int64), "shape"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y0"]),
             helper.make_node("Reshape", ["c", "shape"], ["cr"]),
             helper.make_node("Transpose", ["t"], ["tt"], perm=[3, 2, 0, 1]),
             helper.make_node("Add", ["y0", "cr"], ["y1"]),
             helper.make_node("Add", ["y1", "tt"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 5, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calls_on_constants(mod) -> list[str]:
    """The folded kinds of call in `mod` whose argument is a constant or a variable bound to one."""
    from tvm import relax
    from tvm.ir.expr import Constant

    bound, found = {}, []

    @relax.expr_functor.visitor
    class Calls(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            bound[binding.var] = binding.value
            super().visit_var_binding_(binding)

        def visit_call_(self, call):
            arg = call.args[0] if call.args else None
            if isinstance(arg, relax.Var):
                arg = bound.get(arg)
            if getattr(call.op, "name", "") in constants.FOLDED and isinstance(arg, Constant):
                found.append(call.op.name)
            super().visit_call_(call)

    Calls().visit_expr(mod["main"])
    return found


def test_transposes_and_reshapes_of_constants_are_folded_and_the_graph_computes_the_same():
    import onnxruntime as ort
    from tvm import relax

    rng = np.random.default_rng(0)
    model = _conv_model(rng)
    onnx.checker.check_model(model)
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = relax.transform.ConvertLayout({"relax.nn.conv2d": build.CONV_LAYOUT})(_imported(model))
    assert sorted(set(_calls_on_constants(before))) == ["relax.permute_dims", "relax.reshape"]   # to fold
    after = constants.fold_transposes(before)
    assert not _calls_on_constants(after)
    assert sum(getattr(op, "name", "") == "relax.nn.conv2d" for op in _ops(after)) == 2

    vm = relax.VirtualMachine(tvm.compile(after, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    mod, _ = build.to_relax(model)                 # the import path folds them the same way
    assert not _calls_on_constants(mod)


def _imported(model):
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(model, shape_dict={"x": [1, 3, 5, 5]}, opset=17, keep_params_in_input=False)


def _ops(mod):
    from tvm import relax

    ops = []

    @relax.expr_functor.visitor
    class Ops(relax.PyExprVisitor):
        def visit_call_(self, call):
            ops.append(call.op)
            super().visit_call_(call)

    Ops().visit_expr(mod["main"])
    return ops
