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

from edgecompile.compiler import registry
from edgecompile.compiler.precision_summary import int8_summary, latency_feeds, metric_drop, output_cosine, pair_latency
from edgecompile.compiler.rounding import maybe_adaround
from edgecompile.errors import CompileError

# INT8 counts as "slower than FP32" only beyond this margin, and only when it lost every
# interleaved round (see measurably_slower): timing noise on shared machines is large.
SLOWER_TOLERANCE = 0.10


def supported(target) -> tuple[str, ...]:
    return tuple(target.precisions)


# `--precision auto` with no max_accuracy_drop configured: the bound it keeps (contract units).
AUTO_BOUND = 0.5


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
        if "int8" not in available:
            return model, "fp32", {"reason": f"backend {plan.backend!r} implements only {', '.join(available)}; "
                                             "auto kept fp32"}
        return int8(plan, model, ctx, records, progress, auto=True)
    if requested not in available:
        reason = f"backend {plan.backend!r} does not implement {requested} (it has: {', '.join(available)})"
        if plan.config.build.force:
            raise CompileError(f"cannot force precision {requested}: {reason}",
                               hint="choose a backend that implements it (see `edgecompile targets`)")
        return model, "fp32", {"reason": reason}
    if requested == "int8":
        return int8(plan, model, ctx, records, progress)
    if requested == "fp16" and plan.target.fp16_graph:
        return fp16(plan, model, ctx, records, progress)     # else the backend does FP16 itself (TensorRT)
    return model, requested, {}


# -- FP16 (issue 7) ----------------------------------------------------------------------------------

def fp16(plan, model, ctx, records, progress):
    """Run the fp16 graph pass (its record carries size and metric before/after) and measure
    FP16 against FP32 side by side for the report's `fp16` record."""
    from edgecompile.compiler.precision_summary import fp16_summary
    from edgecompile.passes.base import PassManager, default_instruments

    fp32_bytes = _serialize(model)
    with progress.step("fp16", "float16 weights/activations"):
        pm = PassManager([registry.get_pass("fp16")(plan.config.passes.fp16)], default_instruments(ctx.evaluator))
        hmodel = pm.run(model)
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

def int8(plan, model, ctx, records, progress, auto: bool = False):
    """Quantize, then choose among fp32 / int8 / mixed (int8 with the most sensitive layers kept in
    float) by measurement: the fastest candidate within the accuracy bound that is not measurably
    slower than FP32. Every candidate lands in notes["candidates"]."""
    import onnx_ir as ir

    from edgecompile.compiler.precision_search import search_once
    from edgecompile.passes.base import PassManager, default_instruments

    qcfg = plan.config.passes.quantize
    if qcfg.mode == "qat":
        return _qat(plan, model, ctx, records, progress)
    qpass = registry.get_pass("quantize")(qcfg, backend=ctx.backend, calibration=ctx.calibration,
                                          calibration_data=(ctx.options or {}).get("calibration_data"),
                                          threads=plan.config.build.threads, progress=ctx.progress)
    detail = f"{qcfg.mode} int8" + (f", {qcfg.calibrate} calibration" if qcfg.mode == "static" else "")
    with progress.step("quantize", detail):
        pm = PassManager([qpass], default_instruments(ctx.evaluator))
        qmodel = pm.run(model)
        records.extend(pm.records)
    rec = pm.records[-1]
    if not rec.modified:
        why = rec.notes.get("nothing_to_quantize", "the quantize pass changed nothing")
        return model, "fp32", {"reason": f"nothing to quantize: {why}",
                               "quantization": {"mode": qcfg.mode, "nothing_to_quantize": why}}
    bound = qcfg.max_accuracy_drop if qcfg.max_accuracy_drop is not None else (AUTO_BOUND if auto else None)
    rec, qmodel = maybe_adaround(plan, qpass, rec, qmodel, lambda m: metric_drop(plan, rec.metric_before, m, ctx)[0],
                                 bound, ctx, records, progress)
    fp_bytes = ir.to_proto(model).SerializeToString()
    feeds = latency_feeds(plan, model)
    with progress.step("int8 vs fp32", "size, latency (interleaved), output cosine"):
        summary = int8_summary(plan, fp_bytes, qmodel, rec, feeds, ctx=ctx)
    notes = {"quantization": summary}
    lat = summary["latency"]
    cands = [_row("fp32", [], lat["fp32_ms"], lat["fp32_p99_ms"], 1.0, summary["size_bytes"]["fp32"], 0.0, 1.0),
             _row("int8", [], lat["int8_ms"], lat["int8_p99_ms"], lat["speedup"], summary["size_bytes"]["int8"],
                  summary.get("metric_drop"), summary.get("output_cosine"))]
    notes["candidates"] = cands
    if plan.config.build.force and not auto:
        cands[1]["status"] = "chosen (--force)"
        cands[0]["status"] = "not chosen: --force ships the requested precision"
        return qmodel, "int8", notes

    drop = summary.get("metric_drop")
    models = {"fp32": model, "int8": qmodel}
    slow = {"int8": plan.backend == "ort" and measurably_slower(lat)}
    if bound is not None and drop is not None and drop > bound and qcfg.mode in ("static", "dynamic") \
            and ctx.evaluator:
        qpass.keep_nearest()       # the fallback starts from round-to-nearest (see Quantize.keep_nearest)
        with progress.step("precision search", f"sensitivity + greedy float fallback to {bound:g}"):
            found = search_once(qpass, bound, plan.evaluation,
                                lambda: _search(plan, qpass, rec, fp_bytes, qmodel, bound, feeds, ctx, progress))
        notes["precision_search"] = found["report"]
        if found.get("model") is not None:
            mixed = found["model"]
            m_bytes = ir.to_proto(mixed).SerializeToString()
            with progress.step("mixed vs fp32", "latency (interleaved), output cosine"):
                ml = pair_latency(plan, fp_bytes, m_bytes, feeds)
                cos = output_cosine(plan, fp_bytes, m_bytes)
            cands.append(_row("mixed", found["kept"], ml["int8_ms"], ml["int8_p99_ms"], ml["speedup"], len(m_bytes),
                              found["drop"], cos))
            models["mixed"] = mixed
            slow["mixed"] = plan.backend == "ort" and measurably_slower(ml)
            notes["float_nodes"] = found["float_nodes"]
            notes["mixed_latency"] = ml
    return _choose(plan, cands, models, slow, bound, notes, auto)


def _row(precision, float_nodes, p50, p99, speedup, size, drop, cosine) -> dict:
    return {"precision": precision, "float_nodes": len(float_nodes),
            "excluded": ", ".join(float_nodes[:6]) + (f" (+{len(float_nodes) - 6})" if len(float_nodes) > 6 else ""),
            "p50_ms": round(p50, 4), "p99_ms": round(p99, 4), "speedup": round(speedup, 3),
            "size_kib": round(size / 1024, 1), "accuracy_drop": None if drop is None else round(drop, 4),
            "output_cosine": None if cosine is None else round(cosine, 6), "status": ""}


def _choose(plan, cands, models, slow, bound, notes, auto):
    """The fastest quantized candidate within the bound and not measurably slower than FP32; else fp32."""
    ok = []
    for c in cands[1:]:
        name = c["precision"]
        if bound is not None and c["accuracy_drop"] is not None and c["accuracy_drop"] > bound:
            c["status"] = f"rejected: accuracy drop {c['accuracy_drop']:.3g} > max_accuracy_drop {bound:g}"
        elif slow.get(name):
            c["status"] = f"rejected: slower than fp32 ({c['speedup']:.2f}x) in every interleaved round"
        elif auto and c["speedup"] <= 1.0:           # auto keeps the fastest: fp32 unless beaten
            c["status"] = f"rejected: not faster than fp32 ({c['speedup']:.2f}x its speed)"
        else:
            ok.append(c)
    if ok:
        best = max(ok, key=lambda c: c["speedup"])
        for c in ok:
            c["status"] = "chosen" if c is best else f"not chosen: slower than {best['precision']}"
        within = "within the bound" if bound is not None else "(no max_accuracy_drop set)"
        cands[0]["status"] = f"not chosen: {best['precision']} is {best['speedup']:.2f}x faster {within}"
        if bound is None and (best["accuracy_drop"] or 0.0) > AUTO_BOUND:
            unit = (notes.get("quantization") or {}).get("metric_drop_unit") or "units"
            notes["warning"] = (f"{best['precision']} loses {best['accuracy_drop']:.3g} {unit} of the task metric "
                                "and no --max-accuracy-drop is set, so no layer fell back to float; set one to "
                                "keep the layers that cost it in float")
        if best["precision"] == "mixed":
            notes["note"] = (f"mixed precision: {best['float_nodes']} layer(s) kept in float to stay within "
                             f"max_accuracy_drop {bound:g}")
        return models[best["precision"]], best["precision"], notes
    cands[0]["status"] = "chosen: no quantized candidate meets the bound and is faster"
    tried = [c for c in cands[1:]]
    best = min(tried, key=lambda c: (c["accuracy_drop"] if c["accuracy_drop"] is not None else 0.0))
    why = "; ".join(_label(c) + ": " + c["status"].removeprefix("rejected: ") for c in tried)
    notes["reason"] = (
        f"no quantized candidate is within the bound and faster than fp32 ({why}); "
        f"best configuration found: {best['precision']}"
        + (f" with {best['float_nodes']} layer(s) in float ({best['excluded']})" if best["float_nodes"] else "")
        + (f", accuracy drop {best['accuracy_drop']:.3g}" if best["accuracy_drop"] is not None else "")
        + f", {best['speedup']:.2f}x fp32 speed"
    )
    return models["fp32"], "fp32", notes


def _label(c: dict) -> str:
    return c["precision"] + (f" ({c['float_nodes']} layers in float)" if c["float_nodes"] else "")


def _search(plan, qpass, rec, fp_bytes, qmodel, bound, feeds, ctx, progress) -> dict:
    import onnx
    import onnx_ir as ir

    from edgecompile.compiler import precision_search as ps

    q_bytes = ir.to_proto(qmodel).SerializeToString()
    groups = ps.layer_groups(onnx.load_from_string(fp_bytes))
    data = plan.evaluation if plan.evaluation is not None else plan.calibration
    ranked = ps.sensitivity(fp_bytes, q_bytes, groups, data)

    def drop_of(m):
        return metric_drop(plan, rec.metric_before, ctx.evaluator(m), ctx)[0]

    by_task = _ranks_by_task_metric(plan) and len(groups) <= ps.TASK_SENSITIVITY_MAX_GROUPS
    task = metric_drop(plan, 0.0, 0.0, ctx)[2] or plan.source.metric      # e.g. map_agreement on unlabelled data
    if by_task:          # regression / detection: rank by the gating metric itself (issue 25)
        with progress.step("sensitivity", f"{task} per layer group ({len(groups)} groups)"):
            ranked = ps.task_sensitivity(qpass, groups, drop_of, ranked)
    key = "metric_drop" if by_task else "added_error"

    def probe(a, b):
        lat = pair_latency(plan, a, b, feeds, rounds=4, seconds=0.4)
        return lat["fp32_ms"], lat["int8_ms"]

    res = ps.fallback(qpass, q_bytes, {g.node: g for g in groups}, ranked, drop_of, bound, probe, progress)
    step_of, prev = {}, 0
    for st in res["steps"]:                 # the step that moved each layer to float
        for n in [r["node"] for r in ranked[prev:st["float_layers"]]]:
            step_of[n] = st
        prev = st["float_layers"]
    by_node = {r["node"]: r for r in ranked}
    float_nodes = [{"node": n, "op_type": by_node[n]["op_type"], "sensitivity": round(by_node[n][key], 5),
                    "group": ", ".join(by_node[n]["group"]), "step": step_of[n]["step"],
                    "drop_after_step": round(step_of[n]["metric_drop"], 4),
                    "step_latency_cost_ms": round(step_of[n]["latency_cost_ms"], 4)} for n in res["kept"]]
    method = (f"{task} drop (contract units) with only that layer group quantized, on the "
              "evaluation data" if by_task else
              f"added relative L2 error per layer group (fp32 vs int8 intermediates, {ps.SENSITIVITY_SAMPLES} samples)")
    if _ranks_by_task_metric(plan) and not by_task:
        method += f" ({len(groups)} groups: too many to re-measure {task} for each)"
    report = {"bound": bound, "method": method + ", greedy float fallback re-measuring the task metric",
              "ranked_by": key,
              "found": res["found"], "sensitivity": [{k: (round(v, 6) if isinstance(v, float) else v)
                                                      for k, v in r.items() if k != "group"} for r in ranked[:25]],
              "steps": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in s.items()} for s in res["steps"]]}
    out = {"report": report, "float_nodes": float_nodes, "kept": res["kept"], "drop": res["drop"],
           "model": res["model"] if res["kept"] else None}
    return out


def _ranks_by_task_metric(plan) -> bool:
    """Regression and detection metrics rank layers by the metric itself (issue 25); classifiers keep
    the output-error ranking, whose one batched run is cheaper and tracks top-1 well."""
    if plan.evaluation is None:
        return False
    if plan.evaluation.labels is None:      # label-free: agreement; a detector's is mAP against the reference
        return plan.source.metric in ("map", "map50") and "detection" in plan.evaluation.meta
    from edgecompile.verify.metrics import get_metric

    return get_metric(plan.source.metric).kind == "error" or plan.source.metric in ("map", "map50")


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
    from edgecompile.compiler.precision_summary import qat_summary

    if not any(node.op_type == "QuantizeLinear" for node in model.graph):
        return model, "fp32", {"reason": "quantize mode 'qat': the exported graph has no QDQ nodes "
                                         "(is the QAT pass installed?)", "quantization": {"mode": "qat"}}
    with progress.step("qat", "fold weight QuantizeLinear into int8 initializers"):
        rec = next((r for r in [*ctx.module_records, *records] if r.name == "qat"), None)
        model, summary = qat_summary(model, rec)
    return model, "int8", {"quantization": summary}
