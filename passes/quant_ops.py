"""Where static INT8 puts its Q/DQ pairs ([passes.quantize] ops): on every op ONNX Runtime's QDQ registry
lists ("all"), or, for transformers, on the MatMul/Gemm inputs only ("matmul"): their outputs, norms,
softmax, GELU and residual adds stay float, and so do the MatMuls reading attention probabilities."""
from __future__ import annotations

MATMUL_OPS = ("MatMul", "Gemm")


def op_types(ops: str) -> list[str]:
    """The op types static QDQ quantizes."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if ops == "matmul":
        return list(MATMUL_OPS)
    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def float_probabilities(proto, ops: str) -> list[str]:
    """ops = "matmul": MatMuls reading a Softmax output (attention probabilities x V) stay float, as in
    NNCF's transformer scheme: probabilities span decades below 1, 256 linear levels flatten them."""
    if ops != "matmul":
        return []
    soft = {o for n in proto.graph.node if n.op_type == "Softmax" for o in n.output}
    return [n.name for n in proto.graph.node if n.op_type in MATMUL_OPS and soft & set(n.input)]


def output_rule(ops: str) -> dict:
    """ORT QDQQuantizer extra options. ops = "matmul": no Q/DQ on MatMul/Gemm outputs (a transformer's FFN
    output carries the residual stream's few huge channels; one per-tensor INT8 range there costs most of
    the accuracy)."""
    return {"OpTypesToExcludeOutputQuantization": list(MATMUL_OPS)} if ops == "matmul" else {}
