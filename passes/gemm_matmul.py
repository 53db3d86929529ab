"""Gemm -> MatMul(+Add) rewrite, so dynamic quantization (MatMulInteger) applies to Gemm layers."""
from __future__ import annotations

import numpy as np


def gemm_to_matmul(proto):
    """Rewrite Gemm(A, B[, C]) with a constant B (alpha = beta = 1, no transA) as MatMul(A, B') + C,
    so dynamic quantization (MatMulInteger) applies to it. Returns (model, count)."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    nodes, count = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        b = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            b = np.ascontiguousarray(b.T)
        b_name = f"{node.input[1]}__matmul_{count}"
        model.graph.initializer.append(numpy_helper.from_array(b, b_name))
        has_c = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}__matmul" if has_c else node.output[0]
        nodes.append(
            helper.make_node("MatMul", [node.input[0], b_name], [mm_out], name=f"{node.name or 'gemm'}_matmul{count}")
        )
        if has_c:
            nodes.append(
                helper.make_node(
                    "Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name or 'gemm'}_add{count}"
                )
            )
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return model, count
