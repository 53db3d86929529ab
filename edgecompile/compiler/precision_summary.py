"""The report records of the precision stage: INT8 and FP16 against FP32 side by side, and the QAT summary.
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


def metric_drop(plan, before, after, ctx=None):
    """(drop in contract units, unit name, metric name) from the pass record's metric values (scored by
    ctx.evaluator, whose `metric` names the metric it bound, e.g. top1_agreement for too few confident)."""
    if before is None or after is None or plan.evaluation is None:
        return None, None, None
    from edgecompile.verify.evaluate import choose_metric

    m = getattr(getattr(ctx, "evaluator", None), "metric", None) or choose_metric(
        plan.source.metric, plan.evaluation, plan.classifier)
    if m.kind == "error":
        return 100.0 * (after - before) / max(abs(before), 1e-12), "%", m.name
    loss = before - after if m.higher_is_better else after - before
    return 100.0 * loss, "pt", m.name


def int8_summary(plan, fp_bytes: bytes, int8_model, record, feeds: dict, ctx=None) -> dict:
    """The report's `quantization` record: size ratio, batch-1 latency ratio (ORT, interleaved, on `feeds`),
    output cosine and SNR, calibration used. `fp_bytes`: the serialized FP32 graph."""
    import onnx_ir as ir

    from edgecompile.verify.metrics import raw_similarity

    q_bytes = ir.to_proto(int8_model).SerializeToString()
    notes = record.notes
    out = {"mode": notes.get("mode"), "preset": notes.get("preset"),
           "activations": notes.get("activations"), "weights": notes.get("weights"),
           "per_channel": notes.get("per_channel"), "symmetric_activations": notes.get("symmetric_activations"),
           "calibration": ({"method": notes.get("calibrate"), "samples": notes.get("calib_samples"),
                            "data": notes.get("calib_data"), **({"percentile": notes["percentile"]}
                                                                 if "percentile" in notes else {})}
                           if notes.get("mode") == "static" else None),
           "quantized_ops": notes.get("quantized_ops"), "smoothing": notes.get("smoothing"),
           "size_bytes": {"fp32": len(fp_bytes), "int8": len(q_bytes)},
           "size_ratio": len(q_bytes) / len(fp_bytes)}
    drop, unit, metric = metric_drop(plan, record.metric_before, record.metric_after, ctx)
    if drop is not None:
        out.update(metric=metric, metric_fp32_graph=record.metric_before, metric_int8_graph=record.metric_after,
                   metric_drop=drop, metric_drop_unit=unit)
    outs = _outputs(plan, q_bytes, fp_bytes)
    if outs is not None:
        sim = raw_similarity(*outs)
        out["output_cosine"] = sim["cosine"]
        out["output_snr_db"] = sim["snr_db"]
    out["latency"] = pair_latency(plan, fp_bytes, q_bytes, feeds)
    return out


def latency_feeds(plan, fp32_model) -> dict:
    """One batch-1 feed, the same for every candidate."""
    from edgecompile.verify.bench import synthetic_feeds

    data = plan.evaluation if plan.evaluation is not None else plan.calibration
    if data is not None:
        return data.first_feed()
    from edgecompile.data import TensorSpec

    specs = [TensorSpec(v.name, tuple(v.shape or ()), v.dtype.numpy().name) for v in fp32_model.graph.inputs]
    return synthetic_feeds(specs, 1)


def pair_latency(plan, fp_bytes: bytes, q_bytes: bytes, feeds, rounds: int = 8, seconds: float = 1.5) -> dict:
    """Batch-1 latency of the FP32 graph and a quantized one through ORT, interleaved, same feeds."""
    from edgecompile.verify.bench import interleaved
    from edgecompile.targets.ort.run import create_session

    threads = plan.config.build.threads
    s32 = create_session(fp_bytes, threads=threads)
    s8 = create_session(q_bytes, threads=threads)
    lat = interleaved({"fp32": lambda: s32.run(None, feeds), "int8": lambda: s8.run(None, feeds)},
                      rounds=rounds, seconds=seconds)
    paired = [a / b for a, b in zip(lat["fp32"]["samples_ms"], lat["int8"]["samples_ms"])]
    return {"fp32_ms": lat["fp32"]["ms"], "int8_ms": lat["int8"]["ms"],
            "fp32_p99_ms": lat["fp32"]["p99_ms"], "int8_p99_ms": lat["int8"]["p99_ms"],
            "speedup": lat["fp32"]["ms"] / lat["int8"]["ms"], "batch": 1,
            "slower_rounds": sum(1 for r in paired if r < 1.0),
            "threads": threads or "ort default", "measured_with": "onnxruntime CPU, interleaved",
            "rounds": lat["fp32"]["rounds"]}


def output_cosine(plan, fp_bytes: bytes, q_bytes: bytes) -> float | None:
    """Cosine of a quantized graph's outputs to the FP32 graph's on up to 128 evaluation samples (ORT)."""
    from edgecompile.verify.metrics import raw_similarity

    outs = _outputs(plan, q_bytes, fp_bytes)
    return None if outs is None else raw_similarity(*outs)["cosine"]


def _outputs(plan, *graphs: bytes):
    """Each graph's first output on up to 128 evaluation (else calibration) samples, through ORT; None
    without data."""
    from edgecompile.targets.ort.run import create_session

    data = plan.evaluation if plan.evaluation is not None else plan.calibration
    if data is None:
        return None
    ds = data.take(128)
    outs = []
    for b in graphs:
        s = create_session(b, threads=plan.config.build.threads)
        outs.append(ds.stack_outputs([s.run(None, f)[0] for f in ds.batches(64)]))
    return outs
