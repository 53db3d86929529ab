"""Float zero points of MatMulNBits folded into integer zero points, the correction inside the same node.

Same identity as `zero_point_split.py`: with z = clip(round(f), 0, 2**bits - 1) and e = d * (z - f),

    X @ W = MatMulNBits_int(X) + S(X) @ E        (S(X): X summed block by block, E [n_blocks, N])

but instead of a separate MatMul + Add per node, the correction rides in the node itself: its input
becomes X' = Concat(X, X @ Ind') with Ind' [K, P] the block indicator padded with zero columns to
P = a whole number of blocks, and its weight gets P more rows, E padded with zeros and quantized
to the node's bits per column in the node's block size, with integer zero points (|e| <= d/2: its
rounding error is a small fraction of a second rounding of W). K becomes K + P. The Concat and the
indicator MatMul are shared by every node reading the same X, so a node costs nothing extra; with
accuracy_level 4 the appended block gets its own int8 activation scale.

Needs K to be a multiple of the block (X's columns then end on a block boundary); other nodes get the
split form. Each rewritten node keeps its name and its output; integer-zero-point nodes are untouched.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgecompile.passes.base import InPlaceGraphPass, PassResult, add_initializer
from edgecompile.passes.zero_point_split import (
    ZeroPointSplit, block_indicator, float_zero_point_nodes, pack_zero_points,
)


class ZeroPointFold(InPlaceGraphPass):
    """MatMulNBits with float zero points -> one MatMulNBits (uint8 zero points) on [X, block sums of X]."""

    name = "zero-point-fold"

    def __init__(self, accuracy_level: int | None = None):
        self.accuracy_level = accuracy_level          # None: keep each node's own

    def options(self) -> dict:
        return {"accuracy_level": self.accuracy_level}

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        widened: dict[tuple, ir.Value] = {}
        split = ZeroPointSplit(accuracy_level=self.accuracy_level)
        split_sums: dict[tuple, ir.Value] = {}
        folded, fallback, skipped = [], [], {}
        for node in float_zero_point_nodes(graph, skipped):
            k, block = node.attributes["K"].as_int(), node.attributes["block_size"].as_int()
            if k % block:
                split._rewrite(graph, node, split_sums)
                fallback.append(node.name)
                continue
            self._rewrite(graph, node, widened)
            folded.append(node.name)
        notes = {"folded": len(folded), "widened_inputs": len(widened)}
        if fallback:
            notes["split (K not a multiple of the block)"] = fallback
        if skipped:
            notes["skipped"] = skipped
        return PassResult(model, modified=bool(folded or fallback), notes=notes)

    def _rewrite(self, graph: ir.Graph, node: ir.Node, widened: dict) -> None:
        k, n, bits, block = (node.attributes[a].as_int() for a in ("K", "N", "bits", "block_size"))
        nb = k // block
        extra_blocks = -(-nb // block)                               # P = extra_blocks * block columns
        x, wq, s_value, zp_value = node.inputs[:4]
        scales = s_value.const_value.numpy().reshape(n, nb)
        f = zp_value.const_value.numpy().reshape(n, nb).astype(np.float32)
        z = np.clip(np.rint(f), 0, 2**bits - 1)
        e = np.zeros((n, extra_blocks * block), np.float32)
        e[:, :nb] = scales.astype(np.float32) * (z - f)                 # [N, P]: E transposed, padded
        eq, es, ez = quantize_blocks(e, bits, block)                    # [N, P/B, B] ints, [N, P/B], [N, P/B]

        packed = np.concatenate([wq.const_value.numpy().reshape(n, nb, -1), pack_rows(eq, bits)], axis=1)
        new_scales = np.concatenate([scales, es.astype(scales.dtype)], axis=1).ravel()
        new_zp = pack_zero_points(np.concatenate([z, ez], axis=1).astype(np.uint8), bits)
        for i, (old, arr, suffix) in enumerate(((wq, packed, "folded"), (s_value, new_scales, "folded"),
                                                (zp_value, new_zp, "uint8_folded")), start=1):
            node.replace_input_with(i, add_initializer(graph, f"{old.name}_{suffix}", arr))
            if not old.uses() and old.is_initializer() and not old.is_graph_output():
                graph.initializers.pop(old.name)
        node.attributes["K"] = ir.AttrInt64("K", k + extra_blocks * block)
        if self.accuracy_level is not None:
            node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", self.accuracy_level)

        key = (id(x), k, block)
        if key not in widened:
            x_dtype = np.float16 if x.dtype == ir.DataType.FLOAT16 else np.float32
            ind = block_indicator(k, block, x_dtype, columns=extra_blocks * block)
            ind_value = add_initializer(graph, f"{x.name}_block_indicator_{k}x{ind.shape[1]}", ind)
            s_node = ir.Node("", "MatMul", [x, ind_value], name=f"{node.name}/BlockSum")
            s_node.outputs[0].name = f"{x.name}_block_sums_{block}"
            cat = ir.Node("", "Concat", [x, s_node.outputs[0]], [ir.AttrInt64("axis", -1)],
                          name=f"{node.name}/WithBlockSums")
            cat.outputs[0].name = f"{x.name}_with_block_sums_{block}"
            cat.outputs[0].type = x.type
            graph.insert_before(node, [s_node, cat])
            widened[key] = cat.outputs[0]
        node.replace_input_with(0, widened[key])


def quantize_blocks(m: np.ndarray, bits: int, block: int):
    """[N, C] (C a multiple of block) -> ints [N, C/B, B], scales [N, C/B], integer zero points [N, C/B]:
    asymmetric min-max per block of B along C, the range always holding 0 (zero padding stays exact)."""
    n, c = m.shape
    blocks = m.reshape(n, c // block, block).astype(np.float64)
    lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
    qmax = 2**bits - 1
    scale = (hi - lo) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    zp = np.clip(np.rint(-lo / scale), 0, qmax)
    q = np.clip(np.rint(blocks / scale[..., None]) + zp[..., None], 0, qmax)
    return q.astype(np.uint8), scale.astype(np.float32), zp.astype(np.uint8)


def pack_rows(q: np.ndarray, bits: int) -> np.ndarray:
    """[N, blocks, B] integers -> MatMulNBits' packed bytes [N, blocks, B * bits / 8], low bits first."""
    if bits == 8:
        return q.astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
