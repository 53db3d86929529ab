"""TensorRT for NVIDIA Jetson, with a TVM AArch64 CPU fallback in the same bundle.

An engine is specific to the TensorRT version and the GPU it was built on, so the bundle carries
what is needed to build it on the device, plus the engine itself when the build machine has
TensorRT and the profile's GPU:

    tensorrt/model.onnx            prepared graph (fp32, or Q/DQ for explicit INT8)   role trt-onnx
    tensorrt/build_plan.json       every builder setting                             role trt-build-plan
    tensorrt/calibration.cache     implicit INT8 only: TensorRT calibration cache    role trt-calibration-cache
    tensorrt/checks.json           parser compatibility + Q/DQ check results         role trt-checks
    tensorrt/<ver>-sm<cc>.engine   only when built here on a matching GPU            role trt-engine
    fallback/cpu.so (+ cpu.json)   TVM library for the device's CPU (fp32)            role cpu-fallback

On the device `load()` uses, in order: the bundled engine (matching TensorRT version + compute
capability), a cached engine in `DIR/cache/tensorrt/` (key: TensorRT version + compute capability +
bundle_id), a fresh engine build (progress on stderr; persisted timing cache), and finally the TVM
CPU library with a RuntimeWarning. `prebuild()` (CLI: `edgecompile engine DIR`) builds ahead of time.

`tensorrt` and the CUDA runtime are imported lazily; nothing here imports torch.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgecompile.errors import CompileError
from edgecompile.targets.base import Artifacts, Availability, Backend, BuildContext, QuantPreset
from edgecompile.targets.tensorrt.run import (
    CALIB_FILE, CHECKS_FILE, FALLBACK_FILE, ONNX_FILE, PLAN_FILE, ROLE_CALIB, ROLE_CHECKS, ROLE_ENGINE,
    ROLE_FALLBACK, ROLE_FALLBACK_META, ROLE_ONNX, ROLE_PLAN, _profile_cc, _trt, build_engine, compute_capability,
    engine_availability,
)


# -- the Target ------------------------------------------------------------------------------------

class TensorRtTarget(Backend):
    name = "tensorrt"
    run_module = "edgecompile.targets.tensorrt.run"
    config_section = "tensorrt"
    quant_preset = QuantPreset("int8", "int8", symmetric_activations=True)   # TensorRT: zero-point 0 only
    precisions = ("fp32", "fp16", "int8")

    def check_available(self) -> Availability:
        """Bundles can always be *prepared* here; the engine itself needs TensorRT + the GPU."""
        try:
            import onnx_ir  # noqa: F401
        except ImportError as exc:
            return Availability(False, f"onnx-ir is not installed ({exc})", hint="pip install 'edgecompile[build]'")
        eng = engine_availability()
        if eng.ok:
            return Availability(True, f"{eng.reason}: engines built here when the GPU matches the profile")
        return Availability(True, f"prepare-only ({eng.reason}); the engine is built on the device "
                                  "(`edgecompile engine DIR`), with a TVM CPU fallback in the bundle")

    # -- build time ---------------------------------------------------------------------------
    def compile(self, model, ctx: BuildContext) -> Artifacts:
        import onnx_ir as ir

        from edgecompile.targets.tensorrt import compat as trt_compat

        from edgecompile.targets.tensorrt import prepare as trt_prepare

        cfg = ctx.config.tensorrt
        progress = ctx.progress
        qdq_present = trt_compat.has_qdq(model)
        int8_mode = None
        if ctx.precision == "int8" or qdq_present:
            int8_mode = cfg.int8 if cfg.int8 != "auto" else ("explicit" if qdq_present else "implicit")
            if int8_mode == "explicit" and not qdq_present:
                raise CompileError(
                    "[tensorrt] int8 = 'explicit' needs a Q/DQ graph, and this graph has none",
                    hint="enable the quantize pass, or set [tensorrt] int8 = 'implicit' (calibration cache)",
                )
        precision = "int8" if int8_mode else ctx.precision
        prepared = {}
        if int8_mode == "implicit" and qdq_present:
            # TensorRT cannot mix both: drop the Q/DQ (weights keep their quantized values) and calibrate
            model, removed = trt_prepare.strip_qdq(model)
            prepared["Q/DQ removed for implicit INT8"] = removed
            qdq_present = False
        if qdq_present:
            model, folded = trt_prepare.fold_int32_dequantize(ir.from_proto(ir.to_proto(model)))
            if folded:
                prepared["int32 bias DequantizeLinear folded to float (TensorRT dequantizes int8 only)"] = folded
        compat = trt_compat.check_graph(model)
        qdq = trt_compat.check_qdq(model) if qdq_present else None
        if qdq is not None and not qdq.ok:
            raise CompileError(f"the INT8 graph fails TensorRT's Q/DQ rules: {qdq.summary()}",
                               hint=qdq.errors[0].fallback)
        files: dict[str, str] = {}
        status: dict[str, dict] = {}

        proto = ir.to_proto(model)
        ctx.writer.path(ONNX_FILE).write_bytes(proto.SerializeToString())
        files[ONNX_FILE] = ROLE_ONNX

        calib_file = None
        if int8_mode == "implicit":
            samples = ctx.config.passes.quantize.calib_samples
            with _maybe_step(progress, "calibrate", f"entropy, {samples} samples -> TensorRT calibration cache"):
                amax = trt_prepare.calibrate(model, ctx.calibration, samples=samples, progress=progress)
            ctx.writer.path(CALIB_FILE).write_text(trt_prepare.calibration_cache_text(amax, cfg.version))
            files[CALIB_FILE] = ROLE_CALIB
            calib_file = CALIB_FILE
            why = (f"implicit INT8: {len(amax)} tensor ranges from {min(samples, len(ctx.calibration))} "
                   f"calibration samples (entropy)")
            status[CALIB_FILE] = {"state": "built", "why": why}
            if ctx.evaluation is not None:
                with _maybe_step(progress, "int8 estimate", "ORT simulation of the calibration cache"):
                    est = trt_prepare.estimate_implicit_int8(model, amax, ctx.evaluation)
                status[CALIB_FILE]["estimate"] = est
                if est["top1_agreement"] is not None:
                    why += f"; simulated int8 top-1 agreement with fp32 {100 * est['top1_agreement']:.1f} %"
                status[CALIB_FILE]["why"] = why + f", output cosine {est['output_cosine']:.4f} (n={est['n']}, ORT)"

        checks = {"compatibility": compat.to_dict(), "qdq": qdq.to_dict() if qdq else None}
        ctx.writer.path(CHECKS_FILE).write_text(json.dumps(checks, indent=2) + "\n")
        files[CHECKS_FILE] = ROLE_CHECKS

        plan = trt_prepare.build_plan(model, precision=precision, int8_mode=int8_mode, profile=ctx.profile,
                                      cfg=cfg, onnx_file=ONNX_FILE, calibration_file=calib_file,
                                      compatibility={"ok": compat.ok, "summary": compat.summary()},
                                      qdq=None if qdq is None else {"ok": qdq.ok, "summary": qdq.summary()})
        ctx.writer.path(PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n")
        files[PLAN_FILE] = ROLE_PLAN
        status[PLAN_FILE] = {"state": "built", "why": "prepared ONNX + builder settings for the device"}
        if prepared:
            status[ONNX_FILE] = {"state": "built", "why": "prepared for TensorRT: " + ", ".join(
                f"{k}: {v}" for k, v in prepared.items()) }

        engine_state = self._engine_here(ctx, plan, compat, files, calib_file)
        status["tensorrt engine"] = engine_state
        status[FALLBACK_FILE] = self._fallback_here(model, ctx, files)
        for name, st in status.items():
            if st.pop("warn", False) and progress is not None:
                progress.warn(f"{name}: {st['state']}: {st['why']}")
        fallback_built = status[FALLBACK_FILE]["state"] == "built"
        return Artifacts(
            files=files,
            backend_options={
                "tensorrt_plan": {k: plan[k] for k in ("tensorrt_version", "precision", "flags", "int8",
                                                       "workspace_bytes", "optimization_level", "profiles",
                                                       "dla", "timing_cache", "engine_cache")},
                "execution": {
                    "gpu": f"TensorRT engine on sm_{(ctx.profile.gpu or {}).get('sm')}: "
                           + {"fp32": "fp32", "fp16": "fp16 (builder FP16 flag; the ONNX stays fp32)",
                              "int8": f"int8 {int8_mode} quantization (INT8+FP16 flags)"}[precision],
                    "cpu_fallback": (f"TVM {ctx.profile.arch} library, fp32 (used when TensorRT is unavailable)"
                                     if fallback_built else None),
                },
                "engine_lookup": ["bundled engine for this TensorRT version + compute capability",
                                  "DIR/cache/tensorrt/<trt version>-sm<cc>-<bundle_id[:16]>.engine",
                                  "build on the device (edgecompile engine DIR)", "TVM CPU fallback"],
                "checks": {"compatibility": compat.summary(), "qdq": qdq.summary() if qdq else None},
            },
            notes={"artifact_status": status})

    def _engine_here(self, ctx, plan, compat, files, calib_file) -> dict:
        if not compat.ok:
            return {"state": "skipped", "warn": True,
                    "why": f"{compat.summary()} (see {CHECKS_FILE}); the device uses the CPU fallback"}
        avail = engine_availability()
        if not avail.ok:
            return {"state": "deferred", "why": f"{avail.reason}; built on the device on first load "
                                                f"or with `edgecompile engine DIR`"}
        want = _profile_cc(ctx.profile)
        have = compute_capability()
        if want is not None and have != want:
            return {"state": "deferred", "why": f"this GPU is sm_{have[0]}{have[1]}, the profile is "
                                                f"sm_{want[0]}{want[1]}; built on the device"}
        version = _trt().__version__
        rel = f"tensorrt/{version}-sm{have[0]}{have[1]}.engine"
        calib = ctx.writer.path(calib_file).read_bytes() if calib_file else None
        timing = None
        if plan["timing_cache"]["enabled"]:
            from edgecompile.cache import subdir

            timing = subdir("tensorrt") / f"timing-{version}-sm{have[0]}{have[1]}.cache"
        engine = build_engine(ctx.writer.path(ONNX_FILE), plan, calibration_cache=calib, timing_cache=timing,
                              progress=ctx.progress)
        ctx.writer.path(rel).write_bytes(engine)
        files[rel] = ROLE_ENGINE
        return {"state": "built", "why": f"{avail.reason} matches the profile", "file": rel}

    def _fallback_here(self, model, ctx, files) -> dict:
        if not ctx.config.tensorrt.cpu_fallback:
            return {"state": "skipped", "why": "disabled by [tensorrt] cpu_fallback = false"}
        try:
            from edgecompile.targets.tvm.build import compile_library
        except ImportError as exc:
            return {"state": "skipped", "warn": True,
                    "why": f"the TVM backend is not available in this installation ({exc})"}
        from edgecompile.targets.tensorrt.prepare import strip_qdq

        fp32, removed = strip_qdq(model)
        out = ctx.writer.path(FALLBACK_FILE)
        tvm_cfg = ctx.config.tvm
        with _maybe_step(ctx.progress, "fallback", f"TVM {ctx.profile.arch} CPU library (fp32)"):
            info = compile_library(fp32, ctx.profile, out, tune_trials=tvm_cfg.tune_trials,
                                   tune_timeout=tvm_cfg.tune_timeout, progress=ctx.progress,
                                   cache=ctx.options.get("tvm_cache", True))
        files[FALLBACK_FILE] = ROLE_FALLBACK
        folder = Path(FALLBACK_FILE).parent
        for name in (info or {}).get("files", []):         # the library's metadata, read by load_library
            rel = str(folder / name)
            if rel != FALLBACK_FILE and (ctx.staging / rel).is_file():
                files[rel] = ROLE_FALLBACK_META
        why = f"fp32 {ctx.profile.arch} CPU library for when TensorRT is unavailable"
        if removed:
            why += f" (Q/DQ removed: {removed} nodes; weights keep their quantized values)"
        return {"state": "built", "why": why, "arch": ctx.profile.arch,
                "tvm": {k: info.get(k) for k in ("tvm_version", "target", "cross_compiler", "compiled_batch",
                                                 "tuning") if k in (info or {})}}

class _NullStep:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _maybe_step(progress, name: str, detail: str):
    return progress.step(name, detail) if progress is not None else _NullStep()
