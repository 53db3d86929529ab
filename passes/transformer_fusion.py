"""ONNX Runtime's transformer fusions for the ORT backend: the encoder's subgraphs become
`Attention`, `EmbedLayerNormalization`, `SkipLayerNormalization` and `Gelu`/`BiasGelu` contrib ops
(onnxruntime.transformers.optimizer, graph-level only: no ORT session optimisations are baked in).

The fused graph runs only on ONNX Runtime (com.microsoft ops); the pipeline applies this pass to
Hugging Face sources built for `--backend ort` and leaves other backends the plain graph.
"""
from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout

from edgecompile.errors import PassError
from edgecompile.passes.base import FunctionalGraphPass, PassResult, graph_stats

FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "LayerNormalization", "Gelu", "FastGelu", "BiasGelu")


class TransformerFusion(FunctionalGraphPass):
    """`model_type` as onnxruntime.transformers.optimizer names it (bert, gpt2, ...); `num_heads`
    and `hidden_size` 0 = detected from the graph."""

    name = "transformer_fusion"

    def __init__(self, model_type: str = "bert", num_heads: int = 0, hidden_size: int = 0):
        self.model_type = model_type
        self.num_heads = num_heads
        self.hidden_size = hidden_size

    def options(self) -> dict:
        return {"model_type": self.model_type, "num_heads": self.num_heads, "hidden_size": self.hidden_size}

    def call(self, model) -> PassResult:
        import onnx
        import onnx_ir as ir

        try:
            from onnxruntime.transformers.optimizer import optimize_model
        except ImportError:
            raise PassError("transformer fusion needs onnxruntime's transformers tools",
                            hint="pip install onnxruntime") from None
        before = graph_stats(model)
        for name in ("onnxruntime.transformers", "fusion", "onnx_model", "optimizer"):
            logging.getLogger(name).setLevel(logging.ERROR)
        proto = ir.to_proto(model)
        try:
            with redirect_stdout(io.StringIO()):
                fused = optimize_model(proto, model_type=self.model_type, num_heads=self.num_heads,
                                       hidden_size=self.hidden_size, opt_level=0)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
            raise PassError(f"transformer fusion ({self.model_type}) failed: {msg}",
                            hint="build with --backend openvino, or report the model") from None
        stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v and k in FUSED_OPS}
        result = fused.model
        if any(n.domain == "com.microsoft" for n in result.graph.node) and \
                not any(o.domain == "com.microsoft" for o in result.opset_import):
            result.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))   # the optimizer omits it
        # ONNX shape inference stops at contrib ops; ORT's symbolic inference types every value
        # (the quantizer needs the types of MatMuls fed by Attention/SkipLayerNormalization).
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        try:
            result = SymbolicShapeInference.infer_shapes(result, auto_merge=True)
        except Exception as exc:
            raise PassError(f"shape inference of the fused graph failed: {str(exc).splitlines()[0][:200]}",
                            hint="build with --backend openvino, or report the model") from None
        out = ir.from_proto(result)
        after = graph_stats(out)
        return PassResult(out, modified=bool(stats), notes={"fused": stats, "nodes": f"{before[0]} -> {after[0]}"})
