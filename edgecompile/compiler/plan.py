"""The plan: everything decided before any work is done (config, source, device profile, backend,
precision, data), the passes it asks for, and the content keys of the build cache's stages."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.cache import content_key
from edgecompile.compiler import registry
from edgecompile.compiler.buildcache import code_fingerprint
from edgecompile.compiler.config import Config, resolve_quantize_mode, resolve_quantize_ops
from edgecompile.compiler.writer import check_writable
from edgecompile.data import Dataset
from edgecompile.errors import ConfigError, TargetUnavailableError
from edgecompile.runtime.machine import machine_info, toolchain_versions
from edgecompile.source import ModelSource, load_data, resolve_source
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
    backend_note: str = ""      # why the backend is what it is, when no measurement chose it (said in CLI + report)

    def bundle_id(self) -> str:
        return content_key(
            "bundle/v1", self.source.kind, self.source.fingerprint, self.config.to_dict(), self.backend,
            self.profile.name, self.precision, toolchain_versions(),
            None if self.calibration is None else self.calibration.sha256(),
            None if self.evaluation is None else self.evaluation.sha256(),
        )


def make_plan(cfg: Config, *, output: str | Path | None, data: str | Path | None, options: dict,
              use_cache: bool = True, source: ModelSource | None = None) -> Plan:
    if not cfg.model.source and source is None:
        raise ConfigError("no model given", hint="pass MODEL (e.g. models/digits) or set [model] source in the config")
    profile = get_profile(cfg.build.target)
    backend = resolve_backend(profile, cfg.build.backend)
    backend, backend_note = _foreign_auto(profile, backend, cfg)
    if backend == "auto":
        from edgecompile.compiler.autochoice import AutoBackend

        target = AutoBackend(profile)
    else:
        target = registry.get_target(backend)
    avail = target.check_available()
    if not avail.ok:
        raise TargetUnavailableError(f"backend {backend!r} is not available: {avail.reason}",
                                     hint=avail.hint or f"pip install 'edgecompile[{backend}]'")
    target.check_config(cfg)      # e.g. an OpenVINO device this machine does not have
    source = source if source is not None else resolve_source(cfg.model.source, cfg.model.task,
                                                                        lora=cfg.model.lora)
    precision = cfg.build.precision or profile.default_precision
    if data is not None:
        ds_path = str(data)
        calibration = load_data(cfg.data.calibration or ds_path, source, default=None)
        evaluation = load_data(cfg.data.evaluation or ds_path, source, default=None)
    else:
        calibration = load_data(cfg.data.calibration, source, default=source.default_calibration)
        evaluation = load_data(cfg.data.evaluation, source, default=source.default_evaluation)
    if cfg.data.annotations:           # a third-party ONNX detector scored on COCO-style boxes (issue 25)
        from edgecompile.verify.coco_data import bind_annotations

        source, evaluation = bind_annotations(source, evaluation, cfg.data.annotations)
    from edgecompile.verify.gate_data import with_detection_spec

    # a detector's own decoding for data given as a file (no boxes: mAP against the reference's detections)
    evaluation = with_detection_spec(evaluation, source.frontend)
    train = source.dataset(source.train_split) if source.kind == "torch" and source.train_split else None
    out = Path(output) if output else Path(f"{source.name}-{profile.name}-{backend}-{precision}")
    check_writable(out)
    q, dtypes = cfg.passes.quantize, [s.dtype for s in source.inputs]
    resolved = {"passes.quantize.mode": resolve_quantize_mode(q.mode, dtypes, backend),
                "passes.quantize.ops": resolve_quantize_ops(q.ops, dtypes)}
    if resolved != {"passes.quantize.mode": q.mode, "passes.quantize.ops": q.ops}:
        cfg = cfg.with_overrides(resolved)
    return Plan(cfg, source, profile, backend, target, precision, calibration, evaluation, train, out,
                classifier=_is_classifier(source), options=options, use_cache=use_cache, backend_note=backend_note)


def _foreign_auto(profile, backend: str, cfg: Config) -> tuple[str, str]:
    """`--backend auto` for a target this host cannot run natively (aarch64 boards from x86): nothing here can
    measure which backend is faster there, so without a board it is the documented default, said so."""
    from edgecompile.runtime.machine import cpu_info
    from edgecompile.targets.profiles import NO_BOARD_DEFAULT

    if backend != "auto" or profile.arch == cpu_info()["arch"]:
        return backend, ""
    if cfg.tvm.remote:         # the candidates are measured on the board (compiler/autoboard.py)
        return backend, ""
    return NO_BOARD_DEFAULT, (
        f"--backend auto for {profile.name} ({profile.arch}) with no board to measure on: using the documented "
        f"default, {NO_BOARD_DEFAULT} (portable ONNX, fast without tuning); nothing was measured to choose it")


def _is_classifier(source) -> bool:
    if source.metric in ("top1", "top1_agreement"):
        return True
    out = source.outputs
    return False if not out else source.metric not in ("mse", "mae", "map", "map50", "output_closeness")


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
    """Graph passes (ONNX) for this plan. Precision passes are added by the precision stage.
    Hugging Face encoders on ORT get ORT's transformer fusions instead of onnxslim (the optimum
    export is already folded, and the fusions need the unslimmed subgraph patterns)."""
    if plan.source.kind == "hf" and plan.backend == "ort":
        return [registry.get_pass("transformer_fusion")(plan.source.model_type)]
    if plan.source.kind == "hf" and plan.backend == "auto":
        return []       # per candidate (compiler/autochoice.py): the fusions for ORT, onnxslim for the others
    return [registry.get_pass("simplify")()]


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
# Config the export stage does not depend on: backends' own tables (Backend.config_section) are added to it.
_EXPORT_IRRELEVANT = {"model": None, "data": None, "report": None, "auto": None,
                      "build": ("target", "backend", "precision", "strict", "force", "threads")}


def export_key(plan: Plan) -> str:
    """Content address of the export stage (module passes + torch -> ONNX + parity + reference)."""
    from edgecompile.compiler.export import DEFAULT_OPSET

    cfg = plan.config.to_dict()
    irrelevant = {**_EXPORT_IRRELEVANT, **{s: None for s in registry.backend_config_sections()}}
    for section, keys in irrelevant.items():
        if keys is None:
            cfg.pop(section, None)
        else:
            for k in keys:
                cfg[section].pop(k, None)
    qat = plan.precision == "int8" and plan.config.passes.quantize.mode == "qat"
    if not qat:        # [passes.quantize] reaches the export only through the QAT module pass
        cfg.get("passes", {}).pop("quantize", None)
    shas = [None if d is None else d.sha256() for d in (plan.evaluation, plan.calibration, plan.train)]
    teacher = plan.config.passes.distill.teacher
    if teacher:                          # the distilled student depends on the teacher's definition too
        shas.append(resolve_source(teacher).fingerprint)
    return content_key("export-cache/v2", plan.source.kind, plan.source.name, plan.source.fingerprint, cfg,
                       plan.profile.name,
                       plan.precision if qat else None, DEFAULT_OPSET, toolchain_versions(),
                       code_fingerprint(), machine_info()["cpu"], shas)
