"""MatMulNBits nodes reading the same input fused into one wider node, then Split.

Attention's q/k/v projections and an MLP's gate/up read one activation each. As separate MatMulNBits
nodes each one reads (and, at accuracy_level 4, quantizes to int8) that activation again and pays one
kernel launch; fused, the weights are stacked along N (packed blocks, scales, zero points, bias: all
per output column, so stacking is exact) and one Split along the last axis gives back the original
outputs under their original names. Nodes fuse only when K, bits, block_size, accuracy_level and the
presence of zero points (same dtype) and bias match, their weights are constants and they have no
g_idx; the fused node takes the first node's name.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgecompile.passes.base import InPlaceGraphPass, PassResult, add_initializer


class MatMulNBitsFuse(InPlaceGraphPass):
    """Sibling MatMulNBits (same input, same settings) -> one MatMulNBits with the N's stacked + Split."""

    name = "matmulnbits-fuse"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        groups: dict[tuple, list[ir.Node]] = {}
        for node in graph:
            key = _key(node)
            if key is not None:
                groups.setdefault(key, []).append(node)
        fused = []
        opset = model.opset_imports.get("", 13)
        for nodes in groups.values():
            if len(nodes) > 1:
                _fuse(graph, nodes, opset)
                fused.append([n.name for n in nodes])
        return PassResult(model, modified=bool(fused), notes={"fused": len(fused), "nodes": sum(map(len, fused))})


def _key(node: ir.Node):
    if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
        return None
    ins = list(node.inputs) + [None] * (6 - len(node.inputs))
    x, wq, scales, zp, g_idx, bias = ins[:6]
    if x is None or g_idx is not None or any(v is not None and v.const_value is None for v in (wq, scales, zp, bias)):
        return None
    if len(node.outputs) != 1:
        return None
    attrs = tuple(node.attributes[a].as_int() if a in node.attributes else None
                  for a in ("K", "bits", "block_size", "accuracy_level"))
    return (id(x), attrs, None if zp is None else zp.dtype, bias is not None, scales.dtype)


def _fuse(graph: ir.Graph, nodes: list[ir.Node], opset: int) -> None:
    first = nodes[0]
    ns = [n.attributes["N"].as_int() for n in nodes]
    stacked = []
    for i in (1, 2, 3, 5):
        vals = [n.inputs[i] if len(n.inputs) > i else None for n in nodes]
        if vals[0] is None:
            stacked.append(None)
            continue
        arrays = [v.const_value.numpy() for v in vals]                # per column: row-major in N
        arr = np.concatenate([a.reshape(n_, -1) for a, n_ in zip(arrays, ns)], axis=0)
        arr = arr.reshape((-1, *arrays[0].shape[1:])) if arrays[0].ndim > 1 else arr.ravel()
        stacked.append(add_initializer(graph, f"{vals[0].name}_fused", arr))
    wq, scales, zp, bias = stacked
    inputs = [first.inputs[0], wq, scales, zp] + ([None, bias] if bias is not None else [])
    while inputs and inputs[-1] is None:
        inputs.pop()
    attrs = [a for name, a in first.attributes.items() if name != "N"] + [ir.AttrInt64("N", sum(ns))]
    fused = ir.Node("com.microsoft", "MatMulNBits", inputs, attrs, name=first.name)
    fused.outputs[0].name = f"{first.outputs[0].name}_fused"
    sizes = np.asarray(ns, np.int64)
    if opset >= 13:
        split_sizes = add_initializer(graph, f"{first.name}_split_sizes", sizes)
        split = ir.Node("", "Split", [fused.outputs[0], split_sizes], [ir.AttrInt64("axis", -1)],
                        num_outputs=len(nodes), name=f"{first.name}/Split")
    else:
        split = ir.Node("", "Split", [fused.outputs[0]], [ir.AttrInt64("axis", -1), ir.AttrInt64s("split", ns)],
                        num_outputs=len(nodes), name=f"{first.name}/Split")
    graph.insert_before(first, [fused, split])
    olds = []
    for node, out in zip(nodes, split.outputs):
        y = node.outputs[0]
        name = y.name
        y.replace_all_uses_with(out, replace_graph_outputs=True)
        y.name = f"{name}_unfused"
        out.name = name
        out.type, out.shape = y.type, y.shape
        olds += [v for v in node.inputs[1:] if v is not None]
        graph.remove(node, safe=True)
    for v in olds:
        if v.name in graph.initializers and not v.uses() and not v.is_graph_output():
            graph.initializers.pop(v.name)
