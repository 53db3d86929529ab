"""OpenVINO (CPU, and GPU/NPU where OpenVINO reports them).

compile: our ONNX (FP32, or QDQ for int8) -> OpenVINO model -> serialized IR (`model.xml` +
`model.bin`, weights kept in FP32: `compress_to_fp16=False`) in the bundle. The IR is compiled on
the device when the runtime loads the bundle, with the precision hint recorded in the manifest:

- fp32 -> INFERENCE_PRECISION_HINT f32. OpenVINO's CPU plugin defaults to bf16 on CPUs that
  have it, which would silently break the "fp32 is real FP32" contract, so we always set it.
- bf16 -> bf16, only where the device lists BF16 in OPTIMIZATION_CAPABILITIES (asked of the
  plugin on this machine, never guessed from a CPU name).
- int8 -> the graph arrives as QDQ ONNX; OpenVINO runs the quantized ops in int8 (VNNI/AMX
  where present) and the rest with an f32 hint, so nothing is silently lowered to bf16.

The compiled blob (`export_model`) is tied to the build machine's ISA, so the portable IR is
what the bundle stores; compiling it at load takes milliseconds for our models.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgecompile.errors import BundleError, CompileError, TargetUnavailableError, first_line
from edgecompile.runtime import Runner
from edgecompile.target import Artifacts, Availability, BuildContext

XML_FILE = "model.xml"
BIN_FILE = "model.bin"

# precision -> INFERENCE_PRECISION_HINT for the non-quantized part of the graph
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "mixed": "f32"}   # int8/mixed: the QDQ graph, f32 elsewhere


def _ov():
    import openvino

    return openvino


_CORE = None


def core():
    """One ov.Core per process (creating it loads the plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = _ov().Core()
    return _CORE


def available_devices() -> list[str]:
    return list(core().available_devices)


def capabilities(device: str = "CPU") -> list[str]:
    """OPTIMIZATION_CAPABILITIES the plugin reports for `device` on this machine (e.g. BF16, INT8)."""
    try:
        return [str(c) for c in core().get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except Exception:   # device absent or plugin without the property
        return []


def supports_bf16(device: str = "CPU") -> bool:
    return "BF16" in capabilities(device)


def check_device(device: str) -> None:
    """A clear error unless OpenVINO lists `device` (CPU, GPU, GPU.1, NPU ...) on this machine."""
    devices = available_devices()
    family = device.split(".")[0]
    if device in devices or (device == family and any(d.split(".")[0] == family for d in devices)):
        return
    raise TargetUnavailableError(
        f"OpenVINO device {device!r} is not available on this machine (OpenVINO lists: {', '.join(devices) or 'none'})",
        hint="set [openvino] device to one of the listed devices (CPU is always there on x86)")


def compile_config(precision: str, threads: int | None, performance_hint: str, num_streams: int | None) -> dict:
    cfg = {"INFERENCE_PRECISION_HINT": HINTS.get(precision, "f32"), "PERFORMANCE_HINT": performance_hint}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if num_streams:
        cfg["NUM_STREAMS"] = int(num_streams)
    return cfg


def compiled_properties(compiled) -> dict:
    """What OpenVINO actually chose (the hint as applied, streams, threads, execution devices)."""
    out = {}
    for key in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                "EXECUTION_DEVICES"):
        try:
            value = compiled.get_property(key)
        except Exception:
            continue
        if key == "INFERENCE_PRECISION_HINT":
            value = _type_name(value)
        elif isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        elif not isinstance(value, (int, float, bool)):
            value = str(value)
        out[key] = value
    return out


def _type_name(t) -> str:
    """ov.Type -> 'f32' / 'bf16' ..."""
    try:
        return t.to_string()
    except AttributeError:
        return str(t)


class OpenVinoRunner(Runner):
    thread_safe = False   # one InferRequest: the base class serializes calls with a lock

    def __init__(self, compiled, inputs, outputs, **kw):
        super().__init__(inputs, outputs, **kw)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._ports = [compiled.output(o.name) for o in outputs]

    def _run(self, feeds):
        res = self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
        return [res[p] for p in self._ports]

    def _close(self):
        self.request = None
        self.compiled = None


class OpenVinoTarget:
    name = "openvino"

    @property
    def precisions(self) -> tuple[str, ...]:
        """What this machine's OpenVINO CPU plugin runs natively (int8 needs the quantize pass)."""
        from edgecompile import registry

        out = ["fp32"]
        if self.check_available().ok and supports_bf16("CPU"):
            out.append("bf16")
        if registry.has_pass("quantize"):
            out.append("int8")
        return tuple(out)

    def check_available(self) -> Availability:
        try:
            ov = _ov()
        except ImportError as exc:
            return Availability(False, f"openvino is not installed ({exc})", hint="pip install 'edgecompile[openvino]'")
        return Availability(True, f"openvino {ov.__version__.split('-')[0]}")

    def check_config(self, config) -> None:
        """Fail fast (before export) on a device OpenVINO does not list here."""
        check_device(config.openvino.device)

    def compile(self, model, ctx: BuildContext) -> Artifacts:
        import onnx_ir as ir

        ov = _ov()
        opts = ctx.config.openvino
        device = opts.device
        check_device(device)
        if ctx.precision == "bf16" and not supports_bf16(device):
            raise CompileError(f"OpenVINO on {device} has no native bf16 here "
                               f"(capabilities: {', '.join(capabilities(device)) or 'none'})",
                               hint="build with --precision fp32 or int8")
        if ctx.precision not in HINTS:
            raise CompileError(f"the openvino backend does not implement precision {ctx.precision!r}",
                               hint="use fp32, bf16 (where the CPU has it) or int8")
        with tempfile.TemporaryDirectory(prefix="edgecompile-ov-") as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            ir.save(model, str(onnx_path))
            try:
                ov_model = core().read_model(str(onnx_path))
            except Exception as exc:
                raise CompileError(f"OpenVINO cannot read the model: {first_line(exc)}",
                                   hint="an op or opset this OpenVINO cannot convert; try --backend ort") from None
        xml = ctx.writer.path(XML_FILE)
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        config = compile_config(ctx.precision, ctx.threads, opts.performance_hint, opts.num_streams)
        try:   # must compile on the device with the settings the runtime will use
            compiled = core().compile_model(core().read_model(str(xml)), device, config)
        except Exception as exc:
            raise CompileError(f"OpenVINO cannot compile the model for {device}: {first_line(exc)}",
                               hint="try --backend ort, or another [openvino] device") from None
        applied = compiled_properties(compiled)
        del compiled
        return Artifacts(
            files={XML_FILE: "model", BIN_FILE: "weights"},
            backend_options={"device": device, "config": config, "applied_at_build": applied,
                             "capabilities": capabilities(device), "format": "OpenVINO IR (weights fp32)"})

    def load(self, bundle, *, threads: int | None = None, validate: bool = True) -> OpenVinoRunner:
        opts = bundle.manifest.get("backend_options", {})
        device = opts.get("device", "CPU")
        config = dict(opts.get("config") or compile_config(bundle.manifest.get("precision", "fp32"), None,
                                                           "LATENCY", None))
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        else:
            config.pop("INFERENCE_NUM_THREADS", None)
        try:
            check_device(device)
        except TargetUnavailableError as exc:
            raise BundleError(f"{bundle.path}: {exc.message}", hint=exc.hint) from None
        if config.get("INFERENCE_PRECISION_HINT") == "bf16" and not supports_bf16(device):
            warnings.warn(f"bundle {bundle.path} was built for bf16, but OpenVINO on this {device} has no bf16: "
                          "it runs in f32 here (slower than measured at build time)", RuntimeWarning, stacklevel=3)
            config["INFERENCE_PRECISION_HINT"] = "f32"
        model = core().read_model(str(bundle.artifact("model")), str(bundle.artifact("weights")))
        compiled = core().compile_model(model, device, config)
        inputs, outputs = bundle.io_specs()
        return OpenVinoRunner(compiled, inputs, outputs, bundle=bundle, validate=validate)
