"""Before -> Expected: Identity chains and constant sub-graphs are folded away."""
import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
from onnx import TensorProto, helper

from edgecompile.passes.simplify import Simplify
from edgecompile.targets.ort.build import ort_outputs


def _before():
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1, 2, 3, 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [4], [1, 1, 1, 1])
    nodes = [
        helper.make_node("Add", ["w", "one"], ["w2"]),           # constant: folds to an initializer
        helper.make_node("Identity", ["x"], ["x1"]),
        helper.make_node("Identity", ["x1"], ["x2"]),
        helper.make_node("Mul", ["x2", "w2"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w, one])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_simplify_folds_constants_and_identities():
    before = _before()
    result = Simplify()(ir.from_proto(before))
    after = ir.to_proto(result.model)
    assert result.modified
    assert [n.op_type for n in after.graph.node] == ["Mul"]
    onnx.checker.check_model(after)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(ort_outputs(after.SerializeToString(), [{"x": x}])[0],
                               ort_outputs(before.SerializeToString(), [{"x": x}])[0])


def test_simplify_reports_unmodified_when_nothing_to_do():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    result = Simplify()(ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])))
    assert not result.modified


def test_simplify_never_folds_a_graph_input_away():
    # Before: Reshape(data, shape) with `shape` a graph input and the output shape declared; onnxslim
    # would turn `shape` into a constant. Expected: the model keeps both inputs and the same outputs.
    before = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 4] data, int64[3] shape) => (float[2, 6, 2] y) { y = Reshape(data, shape) }
    """)
    result = Simplify()(ir.from_proto(before))
    after = ir.to_proto(result.model)
    assert [i.name for i in after.graph.input] == ["data", "shape"]
    assert "graph kept as given" in result.notes["slim_skipped"]
    feeds = {"data": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "shape": np.array([2, -1, 2])}
    assert ort_outputs(after.SerializeToString(), [feeds])[0].shape == (2, 6, 2)
