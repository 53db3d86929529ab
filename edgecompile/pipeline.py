"""The build pipeline: source -> module passes -> export (+parity) -> graph passes -> backend
compile -> bundle (staged) -> evaluate + bench -> report -> atomic commit.

Data flows forward only. Each stage is a function; `build()` wires them and is the Python API
behind `edgecompile build`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile import registry
from edgecompile.bundle import Bundle, BundleWriter, check_writable
from edgecompile.buildcache import StageCache, code_fingerprint
from edgecompile.cache import cache_dir, content_key
from edgecompile.config import Config
from edgecompile.data import Dataset, TensorSpec
from edgecompile.errors import ConfigError, GateError, TargetUnavailableError
from edgecompile.machine import machine_info, toolchain_versions
from edgecompile.passkit import PassContext, PassManager, PassRecord, run_module_passes
from edgecompile.progress import Progress
from edgecompile.source import ModelSource, load_data, resolve_source
from edgecompile.target import BuildContext
from edgecompile.targets.profiles import get_profile, resolve_backend


@dataclass
class Plan:
    """Everything decided before any work is done."""

    config: Config
    source: ModelSource
    profile: Any
    backend: str
    target: Any
    precision: str
    calibration: Dataset | None
    evaluation: Dataset | None
    train: Dataset | None
    output: Path
    classifier: bool
    options: dict = field(default_factory=dict)
    use_cache: bool = True
    started: float = field(default_factory=time.perf_counter)   # for the reported build time

    def bundle_id(self) -> str:
        return content_key(
            "bundle/v1", self.source.kind, self.source.fingerprint, self.config.to_dict(), self.backend,
            self.profile.name, self.precision, toolchain_versions(),
            None if self.calibration is None else self.calibration.sha256(),
            None if self.evaluation is None else self.evaluation.sha256(),
        )


def build(model: str | Path | None = None, target: str | None = None, *, output: str | Path | None = None,
          backend: str | None = None, precision: str | None = None, data: str | Path | None = None,
          config: Config | str | Path | None = None, strict: bool | None = None, force: bool | None = None,
          threads: int | None = None, progress: Progress | None = None, cache: bool = True,
          prune: float | None = None, finetune_epochs: int | None = None, distill: bool | None = None,
          **options: Any) -> Bundle:
    """Build a bundle. Keyword arguments override the config file, which overrides defaults.

    `cache=False` neither reads nor writes the build cache (see edgecompile.buildcache).
    `model` is a path/name or an already resolved `ModelSource` (e.g. a distilled student).
    `prune`, `finetune_epochs`, `distill` set [passes.prune] ratio / finetune_epochs / distill.
    `options` carries Python-API-only extras for passes (e.g. `finetune=callable`,
    `calibration_data=iterable of feed dicts`); builds with options bypass the build cache,
    since callables cannot be part of a content key. `tune_trials` / `tune_timeout` (minutes)
    override the config's [tvm] keys like the CLI's --tune / --tune-timeout (they are config, not options).
    """
    progress = progress or Progress(quiet=True)
    cfg = config if isinstance(config, Config) else (Config.from_file(config) if config else Config())
    source = model if model is not None and not isinstance(model, (str, Path)) else None
    cfg = cfg.with_overrides({"model.source": (source.name if source is not None else str(model)) if model is not None else None,
                              "build.target": target, "build.backend": backend, "build.precision": precision,
                              "build.strict": strict, "build.force": force, "build.threads": threads,
                              "passes.prune.ratio": prune, "passes.prune.finetune_epochs": finetune_epochs,
                              "passes.prune.distill": distill,
                              "tvm.tune_trials": options.pop("tune_trials", None),
                              "tvm.tune_timeout": options.pop("tune_timeout", None)})
    plan = make_plan(cfg, output=output, data=data, options=options, use_cache=cache, source=source)
    return execute(plan, progress)


def make_plan(cfg: Config, *, output: str | Path | None, data: str | Path | None, options: dict,
              use_cache: bool = True, source: ModelSource | None = None) -> Plan:
    if not cfg.model.source and source is None:
        raise ConfigError("no model given", hint="pass MODEL (e.g. models/digits) or set [model] source in the config")
    profile = get_profile(cfg.build.target)
    backend = resolve_backend(profile, cfg.build.backend)
    if backend == "auto":
        from edgecompile.autochoice import AutoBackend

        target = AutoBackend(profile)
    else:
        target = registry.get_target(backend)
    avail = target.check_available()
    if not avail.ok:
        raise TargetUnavailableError(f"backend {backend!r} is not available: {avail.reason}",
                                     hint=avail.hint or f"pip install 'edgecompile[{backend}]'")
    if hasattr(target, "check_config"):      # e.g. an OpenVINO device this machine does not have
        target.check_config(cfg)
    source = source if source is not None else resolve_source(cfg.model.source)
    precision = cfg.build.precision or profile.default_precision
    if data is not None:
        ds_path = str(data)
        calibration = load_data(cfg.data.calibration or ds_path, source, default=None)
        evaluation = load_data(cfg.data.evaluation or ds_path, source, default=None)
    else:
        calibration = load_data(cfg.data.calibration, source, default=source.default_calibration)
        evaluation = load_data(cfg.data.evaluation, source, default=source.default_evaluation)
    train = source.dataset(source.train_split) if source.kind == "torch" and source.train_split else None
    out = Path(output) if output else Path(f"{source.name}-{profile.name}-{backend}-{precision}")
    check_writable(out)
    return Plan(cfg, source, profile, backend, target, precision, calibration, evaluation, train, out,
                classifier=_is_classifier(source), options=options, use_cache=use_cache)


def _is_classifier(source) -> bool:
    if source.metric in ("top1", "top1_agreement"):
        return True
    out = source.outputs
    return False if not out else source.metric not in ("mse", "mae")


# -- stages ---------------------------------------------------------------------------------------

def reference_outputs(plan: Plan, module) -> np.ndarray | None:
    """FP32 reference on the evaluation set: torch for torch sources, ORT on the source ONNX otherwise."""
    ds = plan.evaluation
    if ds is None:
        return None
    if plan.source.kind == "torch":
        from edgecompile.training import predict

        return predict(module, ds)[0]
    from edgecompile.targets.ort import explain_load_error, ort_outputs

    try:
        return ort_outputs(plan.source.path.read_bytes(), ds.batches(64))[0]
    except Exception as exc:
        from edgecompile.errors import ModelLoadError

        raise ModelLoadError(f"{plan.source.path}: ONNX Runtime cannot run the source model for the FP32 "
                             f"reference: {explain_load_error(exc)}",
                             hint="the reference for .onnx sources is the model under ORT FP32; "
                                  "use ops/opsets onnxruntime supports") from None


def module_passes(plan: Plan) -> list:
    """Module passes (torch, before export) the config asks for, in order."""
    passes = []
    if plan.config.passes.distill.teacher:
        passes.append(registry.get_pass("distill")(plan.config.passes.distill))
    prune = plan.config.passes.prune
    if prune.ratio:
        passes.append(registry.get_pass("prune")(prune))
    if plan.precision == "int8" and plan.config.passes.quantize.mode == "qat":
        passes.append(registry.get_pass("qat")(plan.config.passes.quantize))
    return passes


def graph_passes(plan: Plan) -> list:
    """Graph passes (ONNX) for this plan. Precision passes are added by the precision stage."""
    return [registry.get_pass("simplify")()]


def load_onnx(plan: Plan):
    import onnx_ir as ir

    return ir.load(str(plan.source.path))


def cache_state(plan: Plan) -> str:
    """"on", or why the build cache is not used for this plan."""
    if not plan.use_cache:
        return "off (--no-cache)"
    if plan.options:
        return "off (Python-API options: " + ", ".join(sorted(plan.options)) + ")"
    return "on"


def bundle_key(plan: Plan) -> str:
    """Content address of the whole bundle: bundle_id (source, effective config, backend, profile,
    precision, toolchain versions, data sha256s), the fingerprint of EdgeCompile's code, and this
    machine (the manifest's `measured_on` and the report's measurements belong to it, so a cache
    directory shared between machines never serves another machine's numbers)."""
    return content_key("bundle-cache/v1", plan.bundle_id(), code_fingerprint(), machine_info())


# Config keys that cannot change the exported ONNX graph, its parity check or the torch reference
# outputs. Everything else in the config is part of the export key (a module pass reading a new
# key is therefore covered automatically); data is keyed by content (sha256) instead of spec, the
# device profile by its resolved name (module passes may tailor to a device), and the precision
# only where a module pass depends on it (QAT). Backends of one profile share the export.
_EXPORT_IRRELEVANT = {"model": None, "data": None, "report": None, "tvm": None, "openvino": None, "auto": None,
                      "build": ("target", "backend", "precision", "strict", "force", "threads")}


def export_key(plan: Plan) -> str:
    """Content address of the export stage (module passes + torch -> ONNX + parity + reference)."""
    from edgecompile.export import DEFAULT_OPSET

    cfg = plan.config.to_dict()
    for section, keys in _EXPORT_IRRELEVANT.items():
        if keys is None:
            cfg.pop(section, None)
        else:
            for k in keys:
                cfg[section].pop(k, None)
    qat = plan.precision == "int8" and plan.config.passes.quantize.mode == "qat"
    shas = [None if d is None else d.sha256() for d in (plan.evaluation, plan.calibration, plan.train)]
    teacher = plan.config.passes.distill.teacher
    if teacher:                          # the distilled student depends on the teacher's definition too
        shas.append(resolve_source(teacher).fingerprint)
    return content_key("export-cache/v1", plan.source.kind, plan.source.fingerprint, cfg, plan.profile.name,
                       plan.precision if qat else None, DEFAULT_OPSET, toolchain_versions(),
                       code_fingerprint(), machine_info()["cpu"], shas)


def export_stage(plan: Plan, ctx: PassContext, records: list, progress: Progress, cache: StageCache):
    """torch source -> (onnx_ir model, FP32 reference outputs, parity, "hit"|"miss"|None), from the
    cache when possible."""
    import onnx_ir as ir

    key = export_key(plan) if cache.enabled else None
    hit = cache.get("export", key) if key else None
    if hit is not None:
        import json

        import onnx

        with progress.step("export", f"cache hit {key[:12]}"):
            meta = json.loads((hit / "meta.json").read_text())
            model = ir.from_proto(onnx.load_model_from_string((hit / "model.onnx").read_bytes()))
            reference = np.load(hit / "reference.npy") if meta["reference"] else None
        for r in meta["records"]:
            r = dict(r)
            r.pop("metric_delta", None)
            records.append(PassRecord(**r))
        return model, reference, meta["parity"], "hit"

    with progress.step("load", plan.source.name):
        module = plan.source.module()
    reference = reference_outputs(plan, module)
    mpasses = module_passes(plan)
    first = len(records)
    if mpasses:
        import copy

        with progress.step("module passes", ", ".join(p.name for p in mpasses)):
            module = run_module_passes(mpasses, copy.deepcopy(module), ctx, records)
    from edgecompile.export import check_parity, export_torch

    example = plan.evaluation or plan.calibration or plan.train
    with progress.step("export", "torch -> ONNX (dynamo)"):
        model = export_torch(module, plan.source, example)
    with progress.step("parity", "ONNX vs torch"):
        parity = check_parity(model, module, example, plan.source.outputs, plan.classifier)
    if key:
        import json

        def fill(d: Path) -> None:
            (d / "model.onnx").write_bytes(ir.to_proto(model).SerializeToString())
            if reference is not None:
                np.save(d / "reference.npy", reference)
            meta = {"parity": parity, "reference": reference is not None,
                    "records": [r.to_dict() for r in records[first:]]}
            (d / "meta.json").write_text(json.dumps(meta, default=_json_default))

        cache.put("export", key, fill)
    return model, reference, parity, "miss" if key else None


def _json_default(o):
    from edgecompile.bundle import _json_default as default

    return default(o)


def bundle_from_cache(plan: Plan, entry: Path, key: str, progress: Progress, t_start: float) -> Bundle:
    """Copy a cached bundle (artifacts + manifest) into place atomically; re-render its reports."""
    import json
    import shutil

    from edgecompile import report as report_mod
    from edgecompile.bundle import MANIFEST

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

    evaluator = _onnx_evaluator(plan, reference)
    ctx.evaluator = evaluator
    with progress.step("passes", ", ".join(p.name for p in graph_passes(plan))):
        pm = PassManager(graph_passes(plan))
        model = pm.run(model, ctx)
        records.extend(pm.records)
    for r in pm.records:
        metric = "" if r.metric_after is None else f", metric {r.metric_before:.4f} -> {r.metric_after:.4f}"
        progress.debug(f"pass {r.name}: {r.seconds:.2f} s, nodes {r.nodes_before} -> {r.nodes_after}{metric}"
                       + "".join(f"; {k}: {v}" for k, v in r.notes.items() if not isinstance(v, (list, dict))))

    from edgecompile import precision as precision_stage

    fp32_graph = _serialize(model) if plan.precision != "fp32" and plan.evaluation is not None else None
    choice = chosen = None
    if plan.backend == "auto":
        from edgecompile import autochoice

        plan, model, achieved, precision_notes, choice, chosen = autochoice.run(
            plan, model, ctx, records, progress, reference)
    else:
        model, achieved, precision_notes = precision_stage.apply(plan, model, ctx, records, progress)
    per_layer = None
    if fp32_graph is not None and achieved != "fp32":
        from edgecompile.compare import per_layer_error

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
        man = _manifest(plan, model, achieved, records, artifacts, parity)
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
        from edgecompile.report_sections import per_layer as recorded_per_layer

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
    import onnx_ir as ir

    from edgecompile.evaluate import choose_metric, compare
    from edgecompile.targets.ort import ort_outputs

    ds = plan.evaluation.take(512)
    ref = reference[:len(ds)]
    metric = choose_metric(plan.source.metric, ds, plan.classifier)

    def evaluate_graph(model) -> float:
        out = ort_outputs(ir.to_proto(model).SerializeToString(), ds.batches(128))[0]
        return compare(out, ref, ds, metric, "fp32").candidate

    return evaluate_graph


def measure(plan: Plan, bundle: Bundle, reference: np.ndarray | None, progress: Progress | None = None) -> dict:
    """Accuracy (task metric vs reference) and latency through the runtime's Runner."""
    from edgecompile.bench import cold_start, latency, synthetic_feeds
    from edgecompile.evaluate import choose_metric, compare, run_outputs

    out: dict[str, Any] = {}
    if not bundle.manifest.get("runs_on_host", True):
        out["skipped"] = (f"the bundle is for {bundle.manifest['profile']['arch']}; this host cannot run it "
                          "(measure on the device, e.g. `edgecompile bench --remote`)")
        return out
    threads = plan.config.build.threads
    runner = plan.target.load(bundle, threads=threads)
    with runner:
        if plan.evaluation is not None and reference is not None:
            cand = run_outputs(runner, plan.evaluation, progress=progress)
            metric = choose_metric(plan.source.metric, plan.evaluation, plan.classifier)
            ref_name = "torch fp32" if plan.source.kind == "torch" else "source onnx (ORT fp32)"
            out["accuracy"] = compare(cand, reference, plan.evaluation, metric, ref_name)
        if plan.evaluation is not None:
            feeds = {k: v[:1] for k, v in next(plan.evaluation.batches(1)).items()}
        else:
            feeds = synthetic_feeds(runner.inputs, 1)
        out["latency"] = latency(runner, feeds, threads=threads)
    out["cold_start"] = cold_start(bundle.path, feeds, threads)
    if progress is not None:
        lat = out["latency"]
        progress.debug(f"latency p50 {lat['p50']:.3f} ms over {lat['runs']} runs; cold start "
                       f"{out['cold_start'].get('cold_start_ms', float('nan')):.1f} ms")
    return out


def _manifest(plan: Plan, model, precision: str, records, artifacts, parity) -> dict:

    from edgecompile import __version__

    def specs(values) -> list[dict]:
        res = []
        for v in values:
            shape = tuple(d if isinstance(d, int) else str(d) for d in (v.shape or ()))
            dtype = v.dtype.numpy().name if v.dtype is not None else "float32"
            res.append(TensorSpec(v.name, shape, dtype).to_dict())
        return res

    opsets = dict(model.opset_imports)
    return {
        "bundle_id": plan.bundle_id(),
        "created_by": f"edgecompile {__version__}",
        "model": {"name": plan.source.name, "kind": plan.source.kind, "fingerprint": plan.source.fingerprint,
                  "opset": opsets.get("", None)},
        "target": plan.profile.name,
        "backend": plan.backend,
        "profile": {"name": plan.profile.name, "description": plan.profile.description, "arch": plan.profile.arch},
        "precision": precision,
        "requested_precision": plan.precision,
        "inputs": specs(model.graph.inputs),
        "outputs": specs(model.graph.outputs),
        "preprocessing": plan.source.preprocessing,
        "labels": plan.source.class_labels,
        "metric": plan.source.metric,
        "passes": [{"name": r.name, "kind": r.kind, "options": r.options, "modified": r.modified} for r in records],
        "backend_options": artifacts.backend_options,
        "artifact_status": artifacts.notes.get("artifact_status"),
        "config": plan.config.to_dict(),
        "data": {"calibration": plan.calibration.describe() if plan.calibration is not None else None,
                 "evaluation": plan.evaluation.describe() if plan.evaluation is not None else None},
        "toolchain": toolchain_versions(),
        "measured_on": machine_info(),
        "runs_on_host": plan.profile.arch == machine_info()["cpu"]["arch"],
    }
