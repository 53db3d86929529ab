"""inspect: MAC/FLOP arithmetic on hand-built graphs (Before -> expected numbers), op histogram, params."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecompile.compiler.inspection import inspect_onnx, inspect_path


def _init(name, shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def test_macs_of_conv_grouped_conv_convtranspose_gemm_matmul():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),                 # 3->8, 3x3 on 16x16
        helper.make_node("Conv", ["c1", "w2"], ["c2"], group=8, strides=[2, 2]),          # depthwise 3x3, 16->7
        helper.make_node("ConvTranspose", ["c2", "w3"], ["c3"], strides=[2, 2]),          # 8->4, 2x2 kernel: 7->14
        helper.make_node("Flatten", ["c3"], ["f"]),                                       # [N, 4*14*14]
        helper.make_node("Gemm", ["f", "wg"], ["g"], transB=1),                           # 784 -> 10
        helper.make_node("Reshape", ["g", "shape"], ["r"]),                               # [N, 2, 5]
        helper.make_node("MatMul", ["r", "wm"], ["y"]),                                   # [N,2,5] x [5,3]
    ]
    inits = [_init("w1", (8, 3, 3, 3)), _init("w2", (8, 1, 3, 3)), _init("w3", (8, 4, 2, 2)),
             _init("wg", (10, 784)), numpy_helper.from_array(np.array([-1, 2, 5], np.int64), "shape"),
             _init("wm", (5, 3))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    info = inspect_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    expected = (8 * 16 * 16 * 3 * 9          # Conv: out elements x (Cin/group x kh x kw)
                + 8 * 7 * 7 * 1 * 9          # depthwise
                + 8 * 7 * 7 * 4 * 2 * 2      # ConvTranspose: in elements x (Cout/group x kh x kw)
                + 10 * 784                   # Gemm: M x N x K at batch 1
                + 2 * 3 * 5)                 # MatMul: out elements x K
    assert info["macs"] == expected and info["flops"] == 2 * expected
    assert info["flops_note"].startswith("MACs of 5 Conv/Gemm/MatMul node(s) at batch 1")
    assert info["ops"] == {"Conv": 2, "ConvTranspose": 1, "Flatten": 1, "Gemm": 1, "MatMul": 1, "Reshape": 1}
    assert info["params"] == 8 * 27 + 8 * 9 + 8 * 16 + 7840 + 3 + 15
    assert info["inputs"] == [{"name": "x", "shape": ["N", 3, 16, 16], "dtype": "float32"}]
    assert info["opset"] == {"ai.onnx": 17} and info["nodes"] == 7


def test_unknown_shapes_are_reported_not_guessed(tmp_path):
    nodes = [helper.make_node("Custom", ["x"], ["h"], domain="com.example"),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("w", (4, 4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "m.onnx")
    info = inspect_path(tmp_path / "m.onnx")
    assert info["kind"] == "onnx" and info["macs"] == 0 and "1 node(s) with unknown shapes" in info["flops_note"]
    assert info["ops"] == {"MatMul": 1, "com.example::Custom": 1}
    assert info["opset"] == {"ai.onnx": 17, "com.example": 1}
