"""Weight-only INT8 for MatMul: constant weights stored as 8-bit integers behind a DequantizeLinear.

`Y = X @ W` with a constant 2-D W becomes `Y = X @ DequantizeLinear(Wq, scale, zero_point, axis=1)`:
per output channel (column n of W [K, N]) an asymmetric uint8 grid over [min(W[:, n], 0), max(W[:, n], 0)]
(symmetric int8 with `symmetric=True`). The graph stays float everywhere else; what runs the MatMul decides
what the integers buy. OpenVINO's CPU plugin keeps such weights compressed and, with its run-time
activation quantization (`DYNAMIC_QUANTIZATION_GROUP_SIZE`: int8 activations per group of K, scaled at
run time), computes the MatMul in int8 — the transformer INT8 of the OpenVINO backend (`mode = "dynamic"`).
A weight read by anything other than the B input of a quantizable MatMul is left as it is, and so are
MatMuls named in `exclude` (the accuracy fallback's float set).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgecompile.passes.base import FunctionalGraphPass, PassResult, add_initializer


class WeightOnlyInt8(FunctionalGraphPass):
    """Constant MatMul weights -> uint8/int8 per output channel + DequantizeLinear."""

    name = "weight-only-int8"

    def __init__(self, symmetric: bool = False, exclude=()):
        self.symmetric = symmetric
        self.exclude = frozenset(exclude)

    def options(self) -> dict:
        opts = {"symmetric": self.symmetric, "granularity": "per output channel"}
        if self.exclude:
            opts["exclude"] = sorted(self.exclude)
        return opts

    def call(self, model: ir.Model) -> PassResult:
        model = model.clone()
        graph = model.graph
        done, kept = [], []
        for value in list(graph.initializers.values()):
            users = list(value.uses())
            if not users or not _quantizable(value):
                continue
            if not all(u.node.op_type == "MatMul" and u.node.domain == "" and u.idx == 1 for u in users):
                continue
            names = [u.node.name for u in users]
            if any(n in self.exclude for n in names):
                kept += names
                continue
            self._rewrite(graph, value)
            done += names
        notes = {"quantized_matmuls": len(done)}
        if kept:
            notes["float_matmuls"] = kept
        return PassResult(model, bool(done), notes)

    def _rewrite(self, graph: ir.Graph, value: ir.Value) -> None:
        w = value.const_value.numpy().astype(np.float32)
        q, scale, zero = quantize_columns(w, self.symmetric)
        name = value.name
        graph.initializers.pop(name)          # (not renamed: its tensor may be shared with the input proto)
        q_v, s_v, z_v = (add_initializer(graph, f"{name}_{tag}", a)
                         for tag, a in (("quantized", q), ("scale", scale), ("zero_point", zero)))
        dq = ir.Node("", "DequantizeLinear", [q_v, s_v, z_v], [ir.AttrInt64("axis", 1)],
                     name=f"{name}/WeightDequantize")
        out = dq.outputs[0]
        value.replace_all_uses_with(out)
        out.name = name
        out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(w.shape)
        order = {id(n): i for i, n in enumerate(graph)}
        graph.insert_before(min((u.node for u in out.uses()), key=lambda n: order[id(n)]), dq)


def openvino_dynamic(proto, exclude, rewritten: int):
    """The quantize pass's dynamic mode for OpenVINO: (ModelProto or None, notes)."""
    res = WeightOnlyInt8(exclude=exclude)(ir.from_proto(proto))
    if not res.modified:
        return None, {"nothing_to_quantize": "no MatMul/Gemm with a constant 2-D weight to quantize dynamically"}
    return ir.to_proto(res.model), {"quantized_ops": res.notes["quantized_matmuls"], "gemm_rewritten": rewritten,
                                    "weights": "uint8 per output channel (DequantizeLinear)",
                                    "activations": "int8, quantized per group at run time by OpenVINO"}


def quantize_columns(w: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [K, N] -> (integers [K, N], scale [N], zero point [N]) per column; exact for a zero column."""
    if symmetric:
        scale = np.abs(w).max(axis=0) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        return q, scale.astype(np.float32), np.zeros(w.shape[1], np.int8)
    lo, hi = np.minimum(w.min(axis=0), 0.0), np.maximum(w.max(axis=0), 0.0)
    scale = (hi - lo) / 255.0
    scale[scale == 0] = 1.0
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    q = np.clip(np.rint(w / scale) + zero, 0, 255).astype(np.uint8)
    return q, scale.astype(np.float32), zero.astype(np.uint8)


def _quantizable(value: ir.Value) -> bool:
    cv = value.const_value
    return cv is not None and value.dtype == ir.DataType.FLOAT and len(cv.shape) == 2 and not value.is_graph_output()
