"""The build pipeline: source -> module passes -> export (+parity) -> graph passes -> backend
compile -> bundle (staged) -> evaluate + bench -> report -> atomic commit.

Data flows forward only. Each stage is a function; `build()` wires them and is the Python API
behind `edgecompile build`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile.cache import cache_dir
from edgecompile.compiler.buildcache import StageCache
from edgecompile.compiler.config import Config
from edgecompile.compiler.export_stage import export_stage, load_onnx, reference_outputs
from edgecompile.compiler.manifest import manifest as make_manifest
from edgecompile.compiler.plan import Plan, bundle_key, cache_state, graph_passes, make_plan
from edgecompile.compiler.writer import BundleWriter
from edgecompile.errors import ConfigError, GateError
from edgecompile.passes.base import PassContext, PassManager, PassRecord, default_instruments
from edgecompile.progress import Progress
from edgecompile.runtime.bundle import Bundle
from edgecompile.targets.base import BuildContext

__all__ = ["build", "execute", "make_plan", "Plan", "measure", "bundle_key"]


def build(model: str | Path | None = None, target: str | None = None, *, output: str | Path | None = None,
          backend: str | None = None, precision: str | None = None, data: str | Path | None = None,
          config: Config | str | Path | None = None, strict: bool | None = None, force: bool | None = None,
          threads: int | None = None, progress: Progress | None = None, cache: bool = True,
          prune: float | None = None, finetune_epochs: int | None = None, distill: bool | None = None,
          task: str | None = None, lora: str | Path | None = None, **options: Any) -> Bundle:
    """Build a bundle. Keyword arguments override the config file, which overrides defaults.

    `cache=False` neither reads nor writes the build cache (see edgecompile.compiler.buildcache).
    `model` is a path/name or an already resolved `ModelSource` (e.g. a distilled student).
    `prune`, `finetune_epochs`, `distill` set [passes.prune] ratio / finetune_epochs / distill.
    `task` sets [model] task (Hugging Face directories: feature-extraction | text-classification).
    `lora` sets [model] lora: a PEFT LoRA adapter directory merged into a Hugging Face model before export.
    `options` carries Python-API-only extras for passes (e.g. `finetune=callable`,
    `calibration_data=iterable of feed dicts`); builds with options bypass the build cache,
    since callables cannot be part of a content key. `tune_trials` / `tune_timeout` (minutes)
    override the config's [tvm] keys like the CLI's --tune / --tune-timeout (they are config, not options).
    """
    progress = progress or Progress(quiet=True)
    cfg = config if isinstance(config, Config) else (Config.from_file(config) if config else Config())
    source = model if model is not None and not isinstance(model, (str, Path)) else None
    cfg = cfg.with_overrides(
        {
            "model.source": (source.name if source is not None else str(model)) if model is not None else None,
            "model.task": task, "model.lora": str(lora) if lora is not None else None, "build.target": target,
            "build.backend": backend,
            "build.precision": precision,
            "build.strict": strict,
            "build.force": force,
            "build.threads": threads,
            "passes.prune.ratio": prune,
            "passes.prune.finetune_epochs": finetune_epochs,
            "passes.prune.distill": distill,
            "tvm.tune_trials": options.pop("tune_trials", None),
            "tvm.tune_timeout": options.pop("tune_timeout", None),
        }
    )
    plan = make_plan(cfg, output=output, data=data, options=options, use_cache=cache, source=source)
    return execute(plan, progress)


def bundle_from_cache(plan: Plan, entry: Path, key: str, progress: Progress, t_start: float) -> Bundle:
    """Copy a cached bundle (artifacts + manifest) into place atomically; re-render its reports."""
    import json
    import shutil

    from edgecompile import report as report_mod
    from edgecompile.runtime.bundle import MANIFEST

    manifest = json.loads((entry / MANIFEST).read_text())
    rep = json.loads((entry / "report.json").read_text())
    writer = BundleWriter(plan.output)
    try:
        with progress.step("cache", f"hit: bundle {key[:12]}"):
            t_copy = time.perf_counter()
            for rel in [MANIFEST, *manifest["artifacts"]]:
                shutil.copyfile(entry / rel, writer.path(rel))
            Bundle(writer.staging, manifest).verify()
            original = rep.get("build_seconds")
            rep["cache"] = {"bundle": "hit", "export": None, "key": key,
                            "original_build_seconds": (rep.get("cache") or {}).get("original_build_seconds", original)}
            rep["build_seconds"] = time.perf_counter() - t_start
            rep["steps_seconds"] = {**progress.timings, "cache": time.perf_counter() - t_copy}
            report_mod.write_reports(writer, rep, plan.config.report.formats)
        for w in rep.get("warnings", []):
            progress.warn(f"(cached build) {w}")
        final = writer.commit()
    finally:
        writer.abort()
    return Bundle(final, manifest)


def execute(plan: Plan, progress: Progress) -> Bundle:
    if plan.source.kind == "decoder":            # decoder LMs: their own stages (edgecompile.compiler.decoder)
        from edgecompile.compiler.decoder_build import build_decoder

        return build_decoder(plan, progress)
    if plan.precision == "int4":
        raise ConfigError("--precision int4 is weight-only quantization for decoder LMs",
                          hint="use it with a Hugging Face causal-LM directory or a .gguf file; int8 for this model")
    t_start = plan.started
    cfg = plan.config
    progress.info(f"edgecompile build {plan.source.name} -> target {plan.profile.name} "
                  f"(backend {plan.backend}, precision {plan.precision})")
    for what, ds in (("calibration", plan.calibration), ("evaluation", plan.evaluation), ("train", plan.train)):
        if ds is not None:
            progress.debug(f"{what} data: {ds.identity} ({len(ds)} samples, "
                           f"{'labels' if ds.labels is not None else 'no labels'})")
    progress.debug(f"output {plan.output.absolute()} (bundle id {plan.bundle_id()[:16]}), cache {cache_dir()}")
    state = cache_state(plan)
    cache = StageCache(enabled=state == "on")
    bkey = bundle_key(plan) if cache.enabled else None
    if bkey:
        entry = cache.get("bundle", bkey)
        if entry is not None:
            return bundle_from_cache(plan, entry, bkey, progress, t_start)
    if plan.backend_note:          # replayed from the report on a cache hit
        progress.warn(plan.backend_note)
    records: list[PassRecord] = []
    ctx = PassContext(config=cfg, profile=plan.profile, backend=plan.backend, source=plan.source,
                      calibration=plan.calibration, evaluation=plan.evaluation, train=plan.train,
                      cache=cache_dir(), progress=progress, options=plan.options)
    parity = None
    export_state = None
    if plan.source.kind == "torch":
        model, reference, parity, export_state = export_stage(plan, ctx, records, progress, cache)
        ctx.module_records = [r for r in records if r.kind == "module"]   # e.g. QAT's, for the precision stage
        export_state = export_state or state
    else:
        with progress.step("load", str(plan.source.path)):
            model = load_onnx(plan)
            reference = reference_outputs(plan, None)
        parity = plan.source.parity        # e.g. a Hugging Face export's (edgecompile.compiler.hf), else None

    evaluator = _onnx_evaluator(plan, reference)
    ctx.evaluator = evaluator
    passes = graph_passes(plan)       # none for `auto` on HF encoders: each backend candidate gets its own
    with progress.step("passes", ", ".join(p.name for p in passes) or "none before the backend candidates"):
        pm = PassManager(passes, default_instruments(evaluator)) if passes else None
        model = pm.run(model) if pm else model
        records.extend(pm.records if pm else [])
    for r in (pm.records if pm else []):
        metric = "" if r.metric_after is None else f", metric {r.metric_before:.4f} -> {r.metric_after:.4f}"
        progress.debug(f"pass {r.name}: {r.seconds:.2f} s, nodes {r.nodes_before} -> {r.nodes_after}{metric}"
                       + "".join(f"; {k}: {v}" for k, v in r.notes.items() if not isinstance(v, (list, dict))))

    from edgecompile.compiler import precision as precision_stage

    fp32_graph = _serialize(model) if plan.precision != "fp32" and plan.evaluation is not None else None
    choice = chosen = None
    if plan.backend == "auto":
        from edgecompile.compiler import autochoice

        plan, model, achieved, precision_notes, choice, chosen = autochoice.run(
            plan, model, ctx, records, progress, reference)
    else:
        model, achieved, precision_notes = precision_stage.apply(plan, model, ctx, records, progress)
    per_layer = None
    if fp32_graph is not None and achieved != "fp32":
        from edgecompile.verify.localize import per_layer_error

        with progress.step("per-layer", f"{achieved} vs the fp32 graph"):
            per_layer = per_layer_error(fp32_graph, _serialize(model), plan.evaluation, progress)

    writer = BundleWriter(plan.output)
    try:
        bctx = BuildContext(writer=writer, profile=plan.profile, config=cfg, precision=achieved,
                            source=plan.source, calibration=plan.calibration, evaluation=plan.evaluation,
                            threads=cfg.build.threads,
                            progress=progress, options=plan.options)
        if chosen is not None:      # ship the very bytes that were measured
            artifacts = autochoice.copy_into(chosen, writer)
            autochoice.cleanup(chosen)
        else:
            with progress.step("compile", plan.backend):
                artifacts = plan.target.compile(model, bctx)
        for rel, role in artifacts.files.items():
            writer.add_artifact(rel, role)
        man = make_manifest(plan, model, achieved, records, artifacts, parity)
        if plan.source.kind == "hf":       # text bundles: tokenizer artifact + manifest "frontend"
            man["frontend"] = plan.source.write_frontend(writer)
        if achieved == "mixed":           # int8 with the listed nodes kept in float (precision search)
            man["float_nodes"] = [n["node"] for n in precision_notes.get("float_nodes", [])]
        if choice is not None:
            man["autochoice"] = choice
        manifest = writer.write_manifest(man)
        staged = Bundle(writer.staging, manifest)

        from edgecompile import report as report_mod

        with progress.step("evaluate", "task metric + latency"):
            measured = measure(plan, staged, reference, progress)
        _gate_precision(plan, achieved, precision_notes, progress)     # before the report: it carries the warning
        rep = report_mod.build_report(plan, manifest, measured, records, parity, precision_notes,
                                      progress, time.perf_counter() - t_start, writer.staging)
        from edgecompile.report.sections import per_layer as recorded_per_layer

        if per_layer and not recorded_per_layer(rep):        # the quantization pass's own record wins
            rep["per_layer"] = per_layer
        rep["cache"] = {"bundle": "miss" if bkey else state, "export": export_state, "key": bkey}
        report_mod.write_reports(writer, rep, cfg.report.formats)
        if bkey:
            def fill(d: Path) -> None:
                import shutil

                for rel in ["manifest.json", "report.json", *manifest["artifacts"]]:
                    (d / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(writer.staging / rel, d / rel)

            cache.put("bundle", bkey, fill)
        final = writer.commit()
    finally:
        writer.abort()
        if chosen is not None:
            autochoice.cleanup(chosen)
    return Bundle(final, manifest)


def _serialize(model) -> bytes:
    import onnx_ir as ir

    return ir.to_proto(model).SerializeToString()


def _gate_precision(plan: Plan, achieved: str, notes: dict, progress: Progress) -> None:
    if notes.get("warning"):
        progress.warn(notes["warning"])
    if achieved == plan.precision or plan.precision == "auto":
        if plan.precision == "auto" and notes.get("reason"):
            progress.warn(f"precision auto kept {achieved}: {notes['reason']}")
        return
    if achieved == "mixed" and plan.precision == "int8":      # int8 that meets max_accuracy_drop
        progress.warn(f"requested precision int8 shipped as mixed: {notes.get('note', 'see report')}")
        return
    msg = (f"requested precision {plan.precision} was not met: shipping {achieved} "
           f"({notes.get('reason', 'see report')})")
    progress.warn(msg)
    if plan.config.build.strict:
        raise GateError(msg, hint="drop --strict to ship the fallback, or --force to ship the requested precision")


def _onnx_evaluator(plan: Plan, reference: np.ndarray | None):
    """Task metric of an ONNX graph (through ORT) on the evaluation set — for pass instruments."""
    if plan.evaluation is None or reference is None:
        return None
    import hashlib

    import onnx_ir as ir

    from edgecompile.verify.evaluate import choose_metric, compare
    from edgecompile.targets.ort.build import ort_outputs

    ds = plan.evaluation.take(512)
    ref = reference[:len(ds)]
    metric = choose_metric(plan.source.metric, ds, plan.classifier)

    scored: dict[str, float] = {}        # by graph sha256: auto's backend candidates share graphs

    def evaluate_graph(model) -> float:
        data = ir.to_proto(model).SerializeToString(deterministic=True)
        key = hashlib.sha256(data).hexdigest()
        if key not in scored:
            # batches of 64 like measure() (run_outputs): dynamic INT8 quantizes activations per batch
            out = ort_outputs(data, ds.batches(64), join=ds.stack_outputs)[0]
            scored[key] = compare(out, ref, ds, metric, "fp32").candidate
        return scored[key]

    from edgecompile.verify.metrics import bound_metric

    evaluate_graph.metric = bound_metric(metric, ref)      # the metric actually scored (precision_summary.metric_drop)
    return evaluate_graph


def measure(plan: Plan, bundle: Bundle, reference: np.ndarray | None, progress: Progress | None = None) -> dict:
    """Accuracy (task metric vs reference) and latency through the runtime's Runner."""
    from edgecompile.verify.bench import cold_start, latency, synthetic_feeds
    from edgecompile.verify.evaluate import choose_metric, compare, run_outputs

    out: dict[str, Any] = {}
    if not bundle.manifest.get("runs_on_host", True):
        out["skipped"] = (f"the bundle is for {bundle.manifest['profile']['arch']}; this host cannot run it "
                          "(measure on the device, e.g. `edgecompile bench --remote`)")
        return out
    threads = plan.config.build.threads
    host_arch = bundle.manifest["measured_on"]["cpu"]["arch"]
    if bundle.manifest["profile"]["arch"] != host_arch:     # a portable bundle for another arch (ORT for ARM)
        out["skipped"] = (f"latency not measured: the bundle is for {bundle.manifest['profile']['arch']} and this "
                          f"host is {host_arch}; accuracy was measured here with the same graph under "
                          f"{plan.backend} on {host_arch} (measure latency on the board: `edgecompile bench "
                          "BUNDLE --remote HOST:PORT --key KEY`, or `edgecompile bench BUNDLE` on it)")
    runner = plan.target.load(bundle, threads=threads)
    with runner:
        if plan.evaluation is not None and reference is not None:
            cand = run_outputs(runner, plan.evaluation, progress=progress)
            metric = choose_metric(plan.source.metric, plan.evaluation, plan.classifier)
            ref_name = {"torch": "torch fp32", "hf": "parity-checked optimum export (ORT fp32)"}.get(
                plan.source.kind, "source onnx (ORT fp32)")
            out["accuracy"] = compare(cand, reference, plan.evaluation, metric, ref_name)
        if plan.evaluation is not None:
            feeds = plan.evaluation.first_feed()
        else:
            feeds = synthetic_feeds(runner.inputs, 1)
        if "skipped" in out:
            return out
        out["latency"] = latency(runner, feeds, threads=threads)
        out["latency"]["feed_shapes"] = {k: list(np.shape(v)) for k, v in feeds.items()}
        if plan.evaluation is not None and not plan.evaluation.batched:
            out["latency"]["batch"] = 1           # one feed in the model's own shapes (it cannot be batched)
    out["cold_start"] = cold_start(bundle.path, feeds, threads)
    if progress is not None:
        lat = out["latency"]
        progress.debug(f"latency p50 {lat['p50']:.3f} ms over {lat['runs']} runs; cold start "
                       f"{out['cold_start'].get('cold_start_ms', float('nan')):.1f} ms")
    return out


