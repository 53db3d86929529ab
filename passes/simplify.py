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
        if self.slim:
            import onnxslim

            model = ir.from_proto(onnxslim.slim(ir.to_proto(model)))
        else:
            model = model.clone()
        cleanup = ir.passes.Sequential(common.RemoveUnusedNodesPass(), common.IdentityEliminationPass(),
                                       common.DeduplicateInitializersPass(), common.RemoveUnusedOpsetsPass(),
                                       common.ShapeInferencePass())
        model = cleanup(model).model
        after = graph_stats(model)
        return PassResult(model, modified=after != before, notes={"nodes": f"{before[0]} -> {after[0]}"})
