"""The report records of the precision stage: FP16 against FP32 side by side, and the QAT summary.
(Passes return notes; measuring and summarising them for the report happens here, not in the pass files.)"""
from __future__ import annotations

import numpy as np

from edgecompile.passes.module.qat_graph import fold_weight_quantize


def fp16_summary(plan, fp32_bytes: bytes, fp16_bytes: bytes, record) -> dict:
    """The report's `fp16` record: size ratio, metric delta (FP32 graph -> FP16 graph, from the
    pass record), output cosine and batch-1 latency FP16 vs FP32 under ORT CPU, interleaved."""
    from edgecompile.verify.bench import interleaved
    from edgecompile.verify.metrics import raw_similarity
    from edgecompile.targets.ort.run import create_session

    notes = record.notes
    out = {"io_types": notes.get("io_types"), "fp32_nodes": notes.get("fp32_nodes"),
           "fp32_islands": notes.get("fp32_islands"), "clipped_weights": notes.get("clipped_weights"),
           "size_bytes": {"fp32": len(fp32_bytes), "fp16": len(fp16_bytes)},
           "size_ratio": len(fp16_bytes) / len(fp32_bytes)}
    if record.metric_before is not None and record.metric_after is not None:
        out.update(metric_fp32_graph=record.metric_before, metric_fp16_graph=record.metric_after,
                   metric_delta=record.metric_after - record.metric_before)
    data = plan.evaluation if plan.evaluation is not None else plan.calibration
    if data is None:
        return out
    threads = plan.config.build.threads
    s32 = create_session(fp32_bytes, threads=threads)
    s16 = create_session(fp16_bytes, threads=threads)
    types16 = {i.name: (np.float16 if i.type == "tensor(float16)" else None) for i in s16.get_inputs()}

    def feeds16(f):
        return {k: v.astype(types16[k]) if types16.get(k) else v for k, v in f.items()}

    ds = data.take(128)
    a = ds.stack_outputs([s16.run(None, feeds16(f))[0].astype(np.float32) for f in ds.batches(64)])
    b = ds.stack_outputs([s32.run(None, f)[0] for f in ds.batches(64)])
    sim = raw_similarity(a, b)
    out["output_cosine"] = sim["cosine"]
    one = ds.first_feed()
    one16 = feeds16(one)
    lat = interleaved({"fp32": lambda: s32.run(None, one), "fp16": lambda: s16.run(None, one16)},
                      rounds=6, seconds=1.0)
    out["latency"] = {"fp32_ms": lat["fp32"]["ms"], "fp16_ms": lat["fp16"]["ms"],
                      "speedup": lat["fp32"]["ms"] / lat["fp16"]["ms"], "batch": 1,
                      "threads": threads or "ort default", "rounds": lat["fp32"]["rounds"],
                      "measured_with": "onnxruntime CPU, interleaved"}
    return out


def qat_summary(model, record) -> tuple:
    """(model with folded weights, the report's `quantization` record) for an exported QAT graph."""
    import onnx_ir as ir

    before = ir.to_proto(model).ByteSize()
    folded = fold_weight_quantize(model)
    after = ir.to_proto(model).ByteSize()
    notes = record.notes if record is not None else {}
    out = {"mode": "qat", "preset": notes.get("preset"), "activations": notes.get("activations"),
           "weights": notes.get("weights"), "per_channel": notes.get("per_channel"),
           "symmetric_activations": notes.get("symmetric_activations"),
           "calibration": notes.get("calibration"), "epochs": notes.get("epochs"),
           "trained_with": notes.get("trained_with"),
           "quantized_ops": _quantized_ops(model), "weights_folded": folded,
           "size_bytes": {"qdq_float_weights": before, "int8": after}}
    if notes.get("comparison"):
        out["qat"] = notes["comparison"]
    return model, out


def _quantized_ops(model) -> int:
    from edgecompile.passes.quantize import _quantized_ops as count
    import onnx_ir as ir

    return count(ir.to_proto(model))
