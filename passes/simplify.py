"""Shape inference, constant folding and graph simplification, done by onnx-ir and onnxslim."""
from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from edgecompile.passes.base import FunctionalGraphPass, PassResult, graph_stats


class Simplify(FunctionalGraphPass):
    """onnxslim (constant folding, dead-code and pattern fusion) followed by onnx-ir cleanup and
    ONNX shape inference, so every value has a type and shape for later passes and backends."""

    name = "simplify"

    def __init__(self, slim: bool = True):
        self.slim = slim

    def options(self) -> dict:
        return {"slim": self.slim}

    def call(self, model: ir.Model) -> PassResult:
        before = graph_stats(model)
        notes = {}
        slimmed = None
        if self.slim:
            slimmed, why = _slim(model)
            if why:
                notes["slim_skipped"] = why
        model = slimmed if slimmed is not None else model.clone()
        cleanup = ir.passes.Sequential(common.RemoveUnusedNodesPass(), common.IdentityEliminationPass(),
                                       common.DeduplicateInitializersPass(), common.RemoveUnusedOpsetsPass(),
                                       common.ShapeInferencePass())
        model = cleanup(model).model
        after = graph_stats(model)
        return PassResult(model, modified=after != before, notes={"nodes": f"{before[0]} -> {after[0]}", **notes})


def _slim(model: ir.Model) -> tuple[ir.Model | None, str]:
    """onnxslim's graph, or (None, why) where it fails or changes the model's interface: it may fold a graph
    input into a constant (e.g. a Reshape's `shape` input when the output shape is declared), and a
    bundle must take the inputs the model declares."""
    import onnxslim

    try:
        out = onnxslim.slim(ir.to_proto(model))
    except Exception as exc:                 # e.g. graphs with ai.onnx.ml ops it cannot import
        return None, f"onnxslim failed ({exc.__class__.__name__}); graph kept as given"
    if out is None:
        return None, "onnxslim returned nothing; graph kept as given"
    slim = ir.from_proto(out)

    def io(m):
        return [v.name for v in m.graph.inputs], [v.name for v in m.graph.outputs]

    if io(slim) != io(model):
        return None, "onnxslim changed the graph inputs/outputs; graph kept as given"
    return slim, ""
