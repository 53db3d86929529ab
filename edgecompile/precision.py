"""The precision stage: turn the FP32 graph into the requested precision, or say why not.

Contract: `fp32` is real FP32. A request that cannot be met ships the best precision that does,
says so loudly (CLI + report) and exits 0; `--strict` makes that exit 3; `--force` ships the
requested precision regardless of accuracy/latency (it cannot conjure a precision the backend
does not implement: that is a CompileError).

INT8: `[passes.quantize] mode` static/dynamic runs the `quantize` graph pass through a
PassManager (so its record -- time, size, metric delta -- lands in the report), then measures
the INT8 graph against the FP32 graph side by side (ORT, same feeds, same threads, interleaved)
for the report's `quantization` section. It falls back to FP32 when the pass finds nothing to
quantize, when the task metric drops more than `max_accuracy_drop`, or (ORT backend) when INT8
is measurably slower than FP32 -- unless `--force`. Mode `qat` is the QAT module pass's: the
exported graph already carries the QDQ nodes and this stage only checks that (see `_qat`).
"""
from __future__ import annotations

from edgecompile import registry
from edgecompile.errors import CompileError

# INT8 counts as "slower than FP32" only beyond this margin, and only when it lost every
# interleaved round (see measurably_slower): timing noise on shared machines is large.
SLOWER_TOLERANCE = 0.10


def supported(target) -> tuple[str, ...]:
    return tuple(getattr(target, "precisions", ("fp32",)))


def apply(plan, model, ctx, records, progress):
    """Returns (model, achieved precision, notes)."""
    requested = plan.precision
    if requested != "int8" and _is_qat_graph(plan, model):
        # issue 7: automatic backend choice asks for fp32 baselines, but a QAT export is int8 by
        # construction -- offering it as "fp32" would mislabel a Q/DQ graph
        return model, "int8", {"reason": "the QAT export is an int8 (Q/DQ) graph; it has no fp32/fp16 form"}
    if requested == "fp32":
        return model, "fp32", {}
    available = supported(plan.target)
    if requested == "auto":
        return model, "fp32", {"reason": "automatic precision choice is not implemented yet; kept fp32"}
    if requested not in available:
        reason = f"backend {plan.backend!r} does not implement {requested} (it has: {', '.join(available)})"
        if plan.config.build.force:
            raise CompileError(f"cannot force precision {requested}: {reason}",
                               hint="choose a backend that implements it (see `edgecompile targets`)")
        return model, "fp32", {"reason": reason}
    if requested == "int8":
        return int8(plan, model, ctx, records, progress)
    if requested == "fp16" and getattr(plan.target, "fp16_graph", False):
        return fp16(plan, model, ctx, records, progress)     # else the backend does FP16 itself (TensorRT)
    return model, requested, {}


# -- FP16 (issue 7) ----------------------------------------------------------------------------------

def fp16(plan, model, ctx, records, progress):
    """Run the fp16 graph pass (its record carries size and metric before/after) and measure
    FP16 against FP32 side by side for the report's `fp16` record."""
    from edgecompile.passes.fp16 import summarize as fp16_summary
    from edgecompile.passkit import PassManager

    fp32_bytes = _serialize(model)
    with progress.step("fp16", "float16 weights/activations"):
        pm = PassManager([registry.get_pass("fp16")(plan.config.passes.fp16)])
        hmodel = pm.run(model, ctx)
        records.extend(pm.records)
    rec = pm.records[-1]
    if not rec.modified:
        why = rec.notes.get("nothing_to_convert") or rec.notes.get("not_converted") or "nothing changed"
        return model, "fp32", {"reason": f"fp16: {why}"}
    with progress.step("fp16 vs fp32", "size, latency (interleaved)"):
        summary = fp16_summary(plan, fp32_bytes, _serialize(hmodel), rec)
    return hmodel, "fp16", {"fp16": summary}


def _serialize(model) -> bytes:
    import onnx_ir as ir

    return ir.to_proto(model).SerializeToString()


# -- INT8 ------------------------------------------------------------------------------------------

def int8(plan, model, ctx, records, progress):
    from edgecompile.passkit import PassManager

    qcfg = plan.config.passes.quantize
    if qcfg.mode == "qat":
        return _qat(plan, model, ctx, records, progress)
    qpass = registry.get_pass("quantize")(qcfg)
    detail = f"{qcfg.mode} int8" + (f", {qcfg.calibrate} calibration" if qcfg.mode == "static" else "")
    with progress.step("quantize", detail):
        pm = PassManager([qpass])
        qmodel = pm.run(model, ctx)
        records.extend(pm.records)
    rec = pm.records[-1]
    if not rec.modified:
        why = rec.notes.get("nothing_to_quantize", "the quantize pass changed nothing")
        return model, "fp32", {"reason": f"nothing to quantize: {why}",
                               "quantization": {"mode": qcfg.mode, "nothing_to_quantize": why}}
    with progress.step("int8 vs fp32", "size, latency (interleaved), output cosine"):
        summary = summarize(plan, model, qmodel, rec)
    notes = {"quantization": summary}
    if plan.config.build.force:
        return qmodel, "int8", notes
    bound = qcfg.max_accuracy_drop
    drop = summary.get("metric_drop")
    if bound is not None and drop is not None and drop > bound:
        notes["reason"] = (f"INT8 loses {drop:.3g} {summary['metric_drop_unit']} of {summary['metric']} "
                           f"(bound max_accuracy_drop = {bound:g})")
        return model, "fp32", notes
    lat = summary.get("latency") or {}
    if plan.backend == "ort" and lat and measurably_slower(lat):
        notes["reason"] = (f"INT8 is slower than FP32 here ({lat['speedup']:.2f}x the FP32 speed at batch 1, "
                           f"slower in all {lat['rounds']} interleaved rounds)")
        return model, "fp32", notes
    return qmodel, "int8", notes


def measurably_slower(lat: dict) -> bool:
    """INT8 slower than FP32 beyond the tolerance *and* in every interleaved round: a loaded,
    noisy machine must not turn a coin flip into a precision fallback."""
    return lat["speedup"] < 1.0 - SLOWER_TOLERANCE and lat["slower_rounds"] == lat["rounds"]


def _is_qat_graph(plan, model) -> bool:
    return plan.config.passes.quantize.mode == "qat" and any(n.op_type == "QuantizeLinear" for n in model.graph)


def _qat(plan, model, ctx, records, progress):
    """QAT (issue 7): the module pass fake-quantized the torch module, so the exported graph
    already carries QuantizeLinear/DequantizeLinear pairs; the PTQ pass is skipped. Weight
    QuantizeLinear nodes are folded into int8 initializers (PTQ's layout); the QAT record's
    FP32 / PTQ-initialised / QAT metrics go to the report's quantization section."""
    from edgecompile.passes.qat import qat_summary

    if not any(node.op_type == "QuantizeLinear" for node in model.graph):
        return model, "fp32", {"reason": "quantize mode 'qat': the exported graph has no QDQ nodes "
                                         "(is the QAT pass installed?)", "quantization": {"mode": "qat"}}
    with progress.step("qat", "fold weight QuantizeLinear into int8 initializers"):
        rec = next((r for r in [*getattr(ctx, "module_records", []), *records] if r.name == "qat"), None)
        model, summary = qat_summary(model, rec)
    return model, "int8", {"quantization": summary}


def _metric_drop(plan, before, after):
    """(drop in contract units, unit name, metric name) from the pass record's metric values."""
    if before is None or after is None or plan.evaluation is None:
        return None, None, None
    from edgecompile.evaluate import choose_metric

    m = choose_metric(plan.source.metric, plan.evaluation, plan.classifier)
    if m.kind == "error":
        return 100.0 * (after - before) / max(abs(before), 1e-12), "%", m.name
    loss = before - after if m.higher_is_better else after - before
    return 100.0 * loss, "pt", m.name


def summarize(plan, fp32_model, int8_model, record) -> dict:
    """Size ratio, batch-1 latency ratio (ORT, interleaved), output cosine, calibration used."""
    import onnx_ir as ir
    import numpy as np

    from edgecompile.bench import interleaved, synthetic_feeds
    from edgecompile.metrics import raw_similarity
    from edgecompile.targets.ort import create_session

    fp_bytes = ir.to_proto(fp32_model).SerializeToString()
    q_bytes = ir.to_proto(int8_model).SerializeToString()
    notes = record.notes
    out = {"mode": notes.get("mode"), "preset": notes.get("preset"),
           "activations": notes.get("activations"), "weights": notes.get("weights"),
           "per_channel": notes.get("per_channel"), "symmetric_activations": notes.get("symmetric_activations"),
           "calibration": ({"method": notes.get("calibrate"), "samples": notes.get("calib_samples"),
                            "data": notes.get("calib_data"), **({"percentile": notes["percentile"]}
                                                                 if "percentile" in notes else {})}
                           if notes.get("mode") == "static" else None),
           "quantized_ops": notes.get("quantized_ops"),
           "size_bytes": {"fp32": len(fp_bytes), "int8": len(q_bytes)},
           "size_ratio": len(q_bytes) / len(fp_bytes)}
    drop, unit, metric = _metric_drop(plan, record.metric_before, record.metric_after)
    if drop is not None:
        out.update(metric=metric, metric_fp32_graph=record.metric_before, metric_int8_graph=record.metric_after,
                   metric_drop=drop, metric_drop_unit=unit)
    threads = plan.config.build.threads
    s32 = create_session(fp_bytes, threads=threads)
    s8 = create_session(q_bytes, threads=threads)
    data = plan.evaluation if plan.evaluation is not None else plan.calibration
    if data is not None:
        ds = data.take(128)
        a = np.concatenate([s8.run(None, f)[0] for f in ds.batches(64)])
        b = np.concatenate([s32.run(None, f)[0] for f in ds.batches(64)])
        sim = raw_similarity(a, b)
        out["output_cosine"] = sim["cosine"]
        out["output_snr_db"] = sim["snr_db"]
        feeds = {k: v[:1] for k, v in next(ds.batches(1)).items()}
    else:
        from edgecompile.data import TensorSpec

        specs = [TensorSpec(v.name, tuple(v.shape or ()), v.dtype.numpy().name) for v in fp32_model.graph.inputs]
        feeds = synthetic_feeds(specs, 1)
    lat = interleaved({"fp32": lambda: s32.run(None, feeds), "int8": lambda: s8.run(None, feeds)},
                      rounds=8, seconds=1.5)
    paired = [a / b for a, b in zip(lat["fp32"]["samples_ms"], lat["int8"]["samples_ms"])]
    out["latency"] = {"fp32_ms": lat["fp32"]["ms"], "int8_ms": lat["int8"]["ms"],
                      "speedup": lat["fp32"]["ms"] / lat["int8"]["ms"], "batch": 1,
                      "slower_rounds": sum(1 for r in paired if r < 1.0),
                      "threads": threads or "ort default", "measured_with": "onnxruntime CPU, interleaved",
                      "rounds": lat["fp32"]["rounds"]}
    return out
