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

import ctypes
import ctypes.util
import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np

from edgecompile.errors import BundleError, CompileError, EdgeCompileError, TargetUnavailableError
from edgecompile.runtime import Runner
from edgecompile.target import Artifacts, Availability, BuildContext

ONNX_FILE = "tensorrt/model.onnx"
PLAN_FILE = "tensorrt/build_plan.json"
CALIB_FILE = "tensorrt/calibration.cache"
CHECKS_FILE = "tensorrt/checks.json"
FALLBACK_FILE = "fallback/cpu.so"
ROLE_ONNX, ROLE_PLAN, ROLE_CALIB = "trt-onnx", "trt-build-plan", "trt-calibration-cache"
ROLE_CHECKS, ROLE_ENGINE, ROLE_FALLBACK = "trt-checks", "trt-engine", "cpu-fallback"
ROLE_FALLBACK_META = "cpu-fallback-meta"
TRT_HINT = ("on a Jetson, use the TensorRT that JetPack installs (python3-libnvinfer); "
            "the PyPI wheels are download stubs")


# -- what is available here -------------------------------------------------------------------------

def _trt():
    import tensorrt

    return tensorrt


def _cudart():
    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12", "libcudart.so.11.0"]
    errors = []
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    raise OSError("libcudart not found" + (f" ({errors[-1]})" if errors else ""))


def compute_capability(device: int = 0) -> tuple[int, int]:
    """(major, minor) of CUDA device `device` through the CUDA runtime; OSError if there is none."""
    lib = _cudart()
    count = ctypes.c_int(0)
    rc = lib.cudaGetDeviceCount(ctypes.byref(count))
    if rc != 0 or count.value == 0:
        raise OSError(f"no CUDA GPU (cudaGetDeviceCount returned {rc}, {count.value} devices)")
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    # cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76
    if lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device) or \
            lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device):
        raise OSError("cudaDeviceGetAttribute failed")
    return major.value, minor.value


def engine_availability() -> Availability:
    """Can this machine build and run TensorRT engines? Says exactly why not."""
    try:
        trt = _trt()
    except ImportError as exc:
        return Availability(False, f"the tensorrt Python package is not installed ({exc})", hint=TRT_HINT)
    try:
        major, minor = compute_capability()
    except OSError as exc:
        return Availability(False, f"tensorrt {trt.__version__} is installed but there is no usable CUDA GPU ({exc})",
                            hint="run on the Jetson (or a machine with the profile's GPU)")
    return Availability(True, f"tensorrt {trt.__version__} on a sm_{major}{minor} GPU")


def _profile_cc(profile) -> tuple[int, int] | None:
    sm = (profile.gpu or {}).get("sm")
    return None if sm is None else (int(sm) // 10, int(sm) % 10)


# -- building an engine (needs TensorRT) ------------------------------------------------------------

def _calibrator(trt, cache: bytes):
    """IInt8EntropyCalibrator2 that serves our precomputed cache; TensorRT then skips calibration."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cache = cache

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None                      # no batches: every range is in the cache

        def read_calibration_cache(self):
            return self.cache

        def write_calibration_cache(self, cache):
            return None

    return CacheCalibrator()


def build_engine(onnx_path: Path, plan: dict, *, calibration_cache: bytes | None = None,
                 timing_cache: Path | None = None, progress=None) -> bytes:
    """Parse the prepared ONNX and build a serialized engine exactly as `plan` says."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)                 # TensorRT 10: always explicit batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise CompileError(f"TensorRT's ONNX parser rejected the graph: {errors[0] if errors else 'unknown error'}",
                           hint=f"{len(errors)} parser error(s); see tensorrt/checks.json in the bundle")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan["workspace_bytes"]))
    config.builder_optimization_level = int(plan.get("optimization_level", 3))
    for flag in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profiles = []
    for shapes in plan["profiles"]:
        prof = builder.create_optimization_profile()
        for name, s in shapes.items():
            prof.set_shape(name, s["min"], s["opt"], s["max"])
        config.add_optimization_profile(prof)
        profiles.append(prof)
    if plan.get("dla"):
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan["dla"]["core"])
    int8 = plan.get("int8") or {}
    if int8.get("mode") == "implicit":
        if calibration_cache is None:
            raise CompileError("implicit INT8 plan without a calibration cache", hint="rebuild the bundle")
        if not hasattr(config, "int8_calibrator"):
            raise CompileError(f"TensorRT {trt.__version__} no longer supports implicit INT8 (calibrators)",
                               hint="rebuild the bundle with explicit Q/DQ INT8 ([tensorrt] int8 = 'explicit')")
        config.int8_calibrator = _calibrator(trt, calibration_cache)
        if profiles:
            config.set_calibration_profile(profiles[0])
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    if progress is not None:
        progress.info(f"  building TensorRT engine ({', '.join(plan['flags']) or 'FP32'}); this takes a while")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompileError("TensorRT failed to build the engine", hint="see TensorRT's log above; try a larger "
                           "[tensorrt] workspace_mb or another precision")
    if cache is not None and timing_cache is not None:
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- the runner (needs TensorRT + CUDA) ------------------------------------------------------------

class TrtRunner(Runner):
    """Executes a deserialized engine: host arrays -> device buffers -> execute_async_v3 -> host."""

    thread_safe = False         # one execution context and stream per runner

    def __init__(self, engine_bytes: bytes, inputs, outputs, *, origin: str = "", **kw):
        super().__init__(inputs, outputs, **kw)
        from polygraphy import cuda

        trt = _trt()
        self._trt, self._cuda = trt, cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BundleError("TensorRT could not deserialize the engine (built by another TensorRT version or GPU?)",
                              hint="delete DIR/cache/tensorrt and run `edgecompile engine DIR`")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.origin = origin
        self._buffers: dict[str, object] = {}

    def _buffer(self, name: str, shape, dtype):
        dtype = np.dtype(dtype)
        buf, have = self._buffers.get(name, (None, None))
        if buf is None or have != dtype:          # (DeviceArray.dtype is deprecated: track it here)
            if buf is not None:
                buf.free()
            buf = self._cuda.DeviceArray(shape=tuple(shape), dtype=dtype)
            self._buffers[name] = (buf, dtype)
        return buf.resize(tuple(shape))

    def _run(self, feeds):
        for spec in self.inputs:
            arr = np.ascontiguousarray(feeds[spec.name])
            buf = self._buffer(spec.name, arr.shape, arr.dtype)
            buf.copy_from(arr, self.stream)
            self.context.set_input_shape(spec.name, arr.shape)
            self.context.set_tensor_address(spec.name, buf.ptr)
        results = []
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            dtype = self._trt.nptype(self.engine.get_tensor_dtype(spec.name))
            buf = self._buffer(spec.name, shape, dtype)
            self.context.set_tensor_address(spec.name, buf.ptr)
            results.append((buf, np.empty(shape, dtype)))
        if not self.context.execute_async_v3(self.stream.ptr):
            raise BundleError("TensorRT execution failed", hint="see TensorRT's log above")
        for buf, host in results:
            buf.copy_to(host, self.stream)
        self.stream.synchronize()
        return [host for _, host in results]

    def _close(self):
        for buf, _ in self._buffers.values():
            buf.free()
        self._buffers.clear()
        self.stream.free()
        self.context = self.engine = None


# -- engines on the device: bundled, cached, or built now ------------------------------------------

def engine_key(trt_version: str, compute_capability: tuple[int, int], bundle_id: str) -> str:
    """Cache key of a device-built engine: TensorRT version + GPU compute capability + bundle."""
    major, minor = compute_capability
    return f"{trt_version}-sm{major}{minor}-{bundle_id[:16]}"


def _engine_cache_path(bundle, key: str) -> Path:
    return bundle.path / "cache" / "tensorrt" / f"{key}.engine"


def ensure_engine(bundle, *, progress=None, rebuild: bool = False) -> tuple[bytes, str, Path]:
    """The engine for this device: (bytes, origin "bundled"|"cached"|"built", path)."""
    trt = _trt()
    cc = compute_capability()
    version = trt.__version__
    if not rebuild:
        for path in bundle.artifacts_with_role(ROLE_ENGINE):
            if path.stem == f"{version}-sm{cc[0]}{cc[1]}":
                return path.read_bytes(), "bundled", path
    key = engine_key(version, cc, bundle.bundle_id)
    cached = _engine_cache_path(bundle, key)
    if cached.is_file() and not rebuild:
        return cached.read_bytes(), "cached", cached
    plan = json.loads(bundle.artifact(ROLE_PLAN).read_text())
    calib = None
    if (plan.get("int8") or {}).get("mode") == "implicit":
        calib = bundle.artifact(ROLE_CALIB).read_bytes()
    timing = None
    if plan.get("timing_cache", {}).get("enabled", True):
        timing = bundle.path / "cache" / "tensorrt" / f"timing-{version}-sm{cc[0]}{cc[1]}.cache"
    engine = build_engine(bundle.artifact(ROLE_ONNX), plan, calibration_cache=calib, timing_cache=timing,
                          progress=progress)
    _atomic_write(cached, engine)
    return engine, "built", cached


def prebuild(path, *, progress=None, rebuild: bool = False) -> dict:
    """`edgecompile engine DIR`: build (or find) the engine for this device and cache it in DIR/cache/."""
    from edgecompile.bundle import Bundle

    bundle = Bundle.open(path)
    if bundle.backend != "tensorrt":
        raise BundleError(f"{path}: a {bundle.backend!r} bundle has no TensorRT engine to build",
                          hint="`edgecompile engine` is for --target jetson bundles")
    avail = engine_availability()
    if not avail.ok:
        raise TargetUnavailableError(f"cannot build the TensorRT engine here: {avail.reason}",
                                     hint=avail.hint or "run `edgecompile engine DIR` on the Jetson")
    engine, origin, where = ensure_engine(bundle, progress=progress, rebuild=rebuild)
    return {"engine": str(where), "origin": origin, "bytes": len(engine), "tensorrt": avail.reason}


# -- the Target ------------------------------------------------------------------------------------

class TensorRtTarget:
    name = "tensorrt"
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

        from edgecompile.targets import trt_compat, trt_prepare

        cfg = ctx.config.tensorrt
        progress = ctx.progress
        qdq_present = trt_compat.has_qdq(model)
        int8_mode = None
        if ctx.precision == "int8" or qdq_present:
            int8_mode = cfg.int8 if cfg.int8 != "auto" else ("explicit" if qdq_present else "implicit")
            if int8_mode == "explicit" and not qdq_present:
                raise CompileError("[tensorrt] int8 = 'explicit' needs a Q/DQ graph, and this graph has none",
                                   hint="enable the quantize pass, or set [tensorrt] int8 = 'implicit' (calibration cache)")
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
            from edgecompile.targets.tvm import compile_library
        except ImportError as exc:
            return {"state": "skipped", "warn": True,
                    "why": f"the TVM backend is not available in this installation ({exc})"}
        from edgecompile.targets.trt_prepare import strip_qdq

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

    # -- run time -----------------------------------------------------------------------------
    def load(self, bundle, *, threads: int | None = None, validate: bool = True, progress=None) -> Runner:
        inputs, outputs = bundle.io_specs()
        avail = engine_availability()
        if avail.ok:
            try:
                if progress is None:
                    from edgecompile.progress import Progress

                    progress = Progress()
                engine, origin, _ = ensure_engine(bundle, progress=progress)
                return TrtRunner(engine, inputs, outputs, origin=origin, bundle=bundle, validate=validate)
            except EdgeCompileError as exc:
                reason = f"the TensorRT engine could not be built or loaded ({exc.message})"
        else:
            reason = f"TensorRT is unavailable here: {avail.reason}"
        return self._load_fallback(bundle, inputs, outputs, reason, threads, validate)

    def _load_fallback(self, bundle, inputs, outputs, reason: str, threads, validate) -> Runner:
        libs = bundle.artifacts_with_role(ROLE_FALLBACK)
        if not libs:
            raise BundleError(f"{bundle.path}: cannot run: {reason}, and the bundle has no CPU fallback",
                              hint="run it on the Jetson with TensorRT, or rebuild with the TVM backend installed")
        arch = bundle.manifest.get("profile", {}).get("arch", "aarch64")
        host = platform.machine()
        if host != arch:
            raise BundleError(f"{bundle.path}: cannot run here: {reason}, and the CPU fallback is an {arch} "
                              f"library (this host is {host})",
                              hint="copy the bundle to the Jetson; `edgecompile engine DIR` there prebuilds the engine")
        from edgecompile.targets.tvm import load_library

        warnings.warn(f"{reason}; running the TVM CPU fallback (fp32) instead of the GPU engine", RuntimeWarning,
                      stacklevel=3)
        return load_library(libs[0], inputs, outputs, threads=threads, bundle=bundle, validate=validate)


class _NullStep:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _maybe_step(progress, name: str, detail: str):
    return progress.step(name, detail) if progress is not None else _NullStep()
