"""TensorRT, run side: the engine (bundled, cached on the device, or built there on first load), the
Runner over CUDA buffers, and the TVM AArch64 CPU fallback when TensorRT or the GPU is missing.

`tensorrt` and the CUDA runtime are imported lazily; nothing here imports torch or onnx.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
import warnings
from pathlib import Path

import numpy as np

from edgecompile.errors import BundleError, CompileError, DataError, EdgeCompileError, TargetUnavailableError
from edgecompile.runtime.runner import Availability, Runner

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
        from edgecompile.targets.tensorrt.enginecache import atomic_write

        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


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

    def profile_max_batch(self) -> int | None:
        """The largest batch optimization profile 0 allows (min over batched inputs), None if not batched."""
        maxes = []
        for spec in self.inputs:
            if spec.shape and not isinstance(spec.shape[0], int):
                _, _, hi = self.engine.get_tensor_profile_shape(spec.name, 0)
                maxes.append(int(hi[0]))
        return min(maxes) if maxes else None

    def _run(self, feeds):
        arrays = [feeds[s.name] for s in self.inputs]
        n = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
        top = self.profile_max_batch()
        if top is None or n <= top:
            return self._run_once(feeds)
        chunks = [self._run_once({s.name: a[i:i + top] for s, a in zip(self.inputs, arrays)})
                  for i in range(0, n, top)]               # batches above the profile run in chunks of its max
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    def _run_once(self, feeds):
        for spec in self.inputs:
            arr = np.ascontiguousarray(feeds[spec.name])
            if not self.context.set_input_shape(spec.name, arr.shape):
                lo, _, hi = self.engine.get_tensor_profile_shape(spec.name, 0)
                raise DataError(f"input {spec.name!r} has shape {list(arr.shape)}, outside the engine's optimization "
                                f"profile ({list(lo)} .. {list(hi)})",
                                hint="rebuild with [tensorrt] min_batch/max_batch covering this shape")
            buf = self._buffer(spec.name, arr.shape, arr.dtype)
            buf.copy_from(arr, self.stream)
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


def ensure_engine(bundle, *, progress=None, rebuild: bool = False) -> tuple[bytes, str, Path]:
    """The engine for this device: (bytes, origin "bundled"|"cached"|"built", path)."""
    trt = _trt()
    cc = compute_capability()
    version = trt.__version__
    if not rebuild:
        for path in bundle.artifacts_with_role(ROLE_ENGINE):
            if path.stem == f"{version}-sm{cc[0]}{cc[1]}":
                return path.read_bytes(), "bundled", path
    from edgecompile.targets.tensorrt.enginecache import cache_root, get_or_build

    cached = cache_root(bundle) / f"{engine_key(version, cc, bundle.bundle_id)}.engine"

    def build() -> bytes:
        plan = bundle.read_artifact_json(ROLE_PLAN)
        calib = None
        if (plan.get("int8") or {}).get("mode") == "implicit":
            calib = bundle.artifact(ROLE_CALIB).read_bytes()
        timing = None
        if (plan.get("timing_cache") or {}).get("enabled", True):
            timing = cached.parent / f"timing-{version}-sm{cc[0]}{cc[1]}.cache"
        return build_engine(bundle.artifact(ROLE_ONNX), plan, calibration_cache=calib, timing_cache=timing,
                            progress=progress)

    engine, origin = get_or_build(cached, build, rebuild=rebuild)
    return engine, origin, cached


def prebuild(path, *, progress=None, rebuild: bool = False) -> dict:
    """`edgecompile engine DIR`: build (or find) the engine for this device and cache it in DIR/cache/."""
    from edgecompile.runtime.bundle import Bundle

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


def availability() -> Availability:
    """Bundles load where the engine runs, or where their CPU fallback does (an aarch64 host)."""
    eng = engine_availability()
    if eng.ok:
        return eng
    return Availability(True, f"CPU fallback only ({eng.reason})")


def load(bundle, *, threads: int | None = None, validate: bool = True, progress=None) -> Runner:
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
    return _load_fallback(bundle, inputs, outputs, reason, threads, validate)

def _load_fallback(bundle, inputs, outputs, reason: str, threads, validate) -> Runner:
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
    from edgecompile.targets.tvm.run import load_library

    warnings.warn(f"{reason}; running the TVM CPU fallback (fp32) instead of the GPU engine", RuntimeWarning,
                  stacklevel=3)
    return load_library(libs[0], inputs, outputs, threads=threads, bundle=bundle, validate=validate)
