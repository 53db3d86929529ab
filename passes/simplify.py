"""Shape inference, constant folding and graph simplification, done by onnx-ir and onnxslim."""
from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from edgecompile.passes.base import PassContext, PassResult, graph_stats


class Simplify:
    """onnxslim (constant folding, dead-code and pattern fusion) followed by onnx-ir cleanup and
    ONNX shape inference, so every value has a type and shape for later passes and backends."""

    name = "simplify"

    def __init__(self, slim: bool = True):
        self.slim = slim

    def options(self) -> dict:
        return {"slim": self.slim}

    def __call__(self, model: ir.Model, ctx: PassContext | None = None) -> PassResult:
        before = graph_stats(model)
        notes = {}
        if self.slim:
            import onnxslim

            proto = onnxslim.slim(ir.to_proto(model))
            model = ir.from_proto(proto)
        for p in (common.RemoveUnusedNodesPass(), common.IdentityEliminationPass(),
                  common.DeduplicateInitializersPass(), common.RemoveUnusedOpsetsPass(),
                  common.ShapeInferencePass()):
            model = p(model).model
        after = graph_stats(model)
        notes["nodes"] = f"{before[0]} -> {after[0]}"
        return PassResult(model, modified=after != before, notes=notes)
