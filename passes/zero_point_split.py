"""Float zero points of MatMulNBits split into integer zero points plus an exact correction.

A weight-only block b (B rows of the reduction axis K, one column n) quantized with a scale d and a
FLOAT zero point f dequantizes to w = d * (q - f) (GGUF Q4_1's `m + d*q` with m = -d*f). ONNX Runtime's
fast MatMulNBits CPU kernels take integer zero points only; with float ones it dequantizes the weight
on every call. With the integer zero point z = clip(round(f), 0, 2**bits - 1):

    d * (q - f) = d * (q - z) + e,   e = d * (z - f)   (a constant per block and column)

so  X @ W = MatMulNBits_int(X) + S(X) @ E,  where S(X)[..., b] is the sum of X over block b's K rows
and E[b, n] = e. The clip never breaks this (e absorbs any zero point out of range). S(X) is one
MatMul with a 0/1 block-indicator matrix [K, ceil(K/B)] (any input rank; a last block shorter than B
sums only the K real rows, as ORT pads it), shared by every node that reads the same input.

Each rewritten node keeps its name and its weights (packed q and scales); its zero points become
ORT's uint8 packing, its output feeds `Add(., S(X) @ E)`, and the Add takes the original output
name. Integer-zero-point nodes (and those without zero points) are left untouched.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgecompile.passes.base import InPlaceGraphPass, PassResult, add_initializer

FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
CORRECTION_DTYPES = ("float32", "float16")


class ZeroPointSplit(InPlaceGraphPass):
    """MatMulNBits with float zero points -> MatMulNBits (uint8 zero points) + block-sum correction."""

    name = "zero-point-split"

    def __init__(self, accuracy_level: int | None = None, correction_dtype: str = "float32"):
        if correction_dtype not in CORRECTION_DTYPES:
            raise ValueError(f"correction_dtype must be one of {CORRECTION_DTYPES}")
        self.accuracy_level = accuracy_level          # None: keep each node's own
        self.correction_dtype = correction_dtype      # float16: E stored half-size, Cast to X's type

    def options(self) -> dict:
        return {"accuracy_level": self.accuracy_level, "correction_dtype": self.correction_dtype}

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        sums: dict[tuple, ir.Value] = {}
        split, skipped = [], {}
        for node in float_zero_point_nodes(graph, skipped):
            self._rewrite(graph, node, sums)
            split.append(node.name)
        notes = {"split": len(split), "block_sums": len(sums)}
        if skipped:
            notes["skipped"] = skipped
        return PassResult(model, modified=bool(split), notes=notes)

    def _rewrite(self, graph: ir.Graph, node: ir.Node, sums: dict) -> None:
        k, n, bits, block = (node.attributes[a].as_int() for a in ("K", "N", "bits", "block_size"))
        n_blocks = -(-k // block)
        x, zp_value = node.inputs[0], node.inputs[3]
        scales = node.inputs[2].const_value.numpy().reshape(n, n_blocks).astype(np.float32)
        f = zp_value.const_value.numpy().reshape(n, n_blocks).astype(np.float32)
        z = np.clip(np.rint(f), 0, 2**bits - 1).astype(np.uint8)
        e = np.ascontiguousarray((scales * (z.astype(np.float32) - f)).T)          # [n_blocks, N]
        x_dtype = np.float16 if x.dtype == ir.DataType.FLOAT16 else np.float32
        store = np.float16 if self.correction_dtype == "float16" else x_dtype

        new_zp = add_initializer(graph, f"{zp_value.name}_uint8", pack_zero_points(z, bits))
        node.replace_input_with(3, new_zp)
        if not zp_value.uses() and zp_value.is_initializer() and not zp_value.is_graph_output():
            graph.initializers.pop(zp_value.name)
        if self.accuracy_level is not None:
            node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", self.accuracy_level)

        key = (id(x), k, block)
        if key not in sums:
            ind = add_initializer(graph, f"{x.name}_block_indicator_{k}x{n_blocks}",
                                  block_indicator(k, block, x_dtype))
            s_node = ir.Node("", "MatMul", [x, ind], name=f"{node.name}/BlockSum")
            s_node.outputs[0].name = f"{x.name}_block_sums_{block}"
            graph.insert_before(node, s_node)
            sums[key] = s_node.outputs[0]
        e_value = add_initializer(graph, f"{node.name}_zp_correction", e.astype(store))
        extra = []
        if store != x_dtype:
            cast = ir.Node("", "Cast", [e_value], [ir.AttrInt64("to", ir.DataType.from_numpy(np.dtype(x_dtype)))],
                           name=f"{node.name}/CorrectionCast")
            cast.outputs[0].name = f"{node.name}_zp_correction_cast"
            extra.append(cast)
            e_value = cast.outputs[0]
        corr = ir.Node("", "MatMul", [sums[key], e_value], name=f"{node.name}/Correction")
        y = node.outputs[0]
        out_name = y.name
        corr.outputs[0].name = f"{out_name}_zp_correction"
        add = ir.Node("", "Add", [None, corr.outputs[0]], name=f"{node.name}/AddCorrection")
        y.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
        add.replace_input_with(0, y)
        y.name = f"{out_name}_int_zp"
        add.outputs[0].name = out_name
        if y.type is not None:
            add.outputs[0].type, add.outputs[0].shape = y.type, y.shape
        graph.insert_after(node, [*extra, corr, add])


def float_zero_point_nodes(graph: ir.Graph, skipped: dict) -> list[ir.Node]:
    """The MatMulNBits nodes with float zero points that can be rewritten; the others with float zero
    points go into `skipped` (name -> why)."""
    out = []
    for node in list(graph):
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        why = _unsupported(node)
        if why and why != "integer zero points":
            skipped[node.name] = why
        elif not why:
            out.append(node)
    return out


def _unsupported(node: ir.Node) -> str:
    """Why this MatMulNBits is not rewritten ("" when it is)."""
    ins = node.inputs
    if len(ins) < 4 or ins[3] is None:
        return "integer zero points"                  # none: symmetric, ORT's implicit zero point
    if ins[3].dtype not in FLOATS:
        return "integer zero points"
    if len(ins) > 4 and ins[4] is not None:
        return "g_idx (act-order) input"
    bits = node.attributes["bits"].as_int()
    if bits not in (4, 8):
        return f"{bits}-bit weights (4 and 8 are supported)"
    if ins[2].const_value is None or ins[3].const_value is None:
        return "scales or zero points are not constants"
    return ""


def pack_zero_points(z: np.ndarray, bits: int) -> np.ndarray:
    """[N, n_blocks] integers -> ORT's uint8 zero points [N, ceil(n_blocks * bits / 8)], low bits first."""
    if bits == 8:
        return z.astype(np.uint8)
    n, nb = z.shape
    padded = np.zeros((n, nb + nb % 2), np.uint8)
    padded[:, :nb] = z
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def block_indicator(k: int, block: int, dtype, columns: int | None = None) -> np.ndarray:
    """[K, ceil(K/B)] with a 1 where row i belongs to block i // B: X @ it sums X block by block
    (`columns`: that many columns, the ones past ceil(K/B) all zero)."""
    out = np.zeros((k, -(-k // block) if columns is None else columns), dtype)
    out[np.arange(k), np.arange(k) // block] = 1
    return out
