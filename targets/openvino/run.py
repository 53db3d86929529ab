"""OpenVINO, run side: the bundle's IR compiled on the device with the recorded precision hint."""
from __future__ import annotations

import warnings

import numpy as np

from edgecompile.errors import BundleError, TargetUnavailableError
from edgecompile.runtime.runner import Availability, Runner

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
                "EXECUTION_DEVICES", "DYNAMIC_QUANTIZATION_GROUP_SIZE"):
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


def availability() -> Availability:
    try:
        ov = _ov()
    except ImportError as exc:
        return Availability(False, f"openvino is not installed ({exc})", hint="pip install 'edgecompile[openvino]'")
    return Availability(True, f"openvino {ov.__version__.split('-')[0]}")


class OpenVinoRunner(Runner):
    thread_safe = False   # one InferRequest: the base class serializes calls with a lock

    def __init__(self, compiled, inputs, outputs, **kw):
        super().__init__(inputs, outputs, **kw)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._ports = [compiled.output(o.name) for o in outputs]

    def _run(self, feeds):
        res = self.request.infer({k: v if v.flags.c_contiguous else np.ascontiguousarray(v)   # keeps 0-d arrays 0-d
                                  for k, v in feeds.items()}, share_inputs=True)
        return [res[p] for p in self._ports]

    def _close(self):
        self.request = None
        self.compiled = None


def load(bundle, *, threads: int | None = None, validate: bool = True, progress=None) -> OpenVinoRunner:
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
        what = "" if bundle.manifest.get("precision") == "bf16" else "its float ops in "
        warnings.warn(f"bundle {bundle.path} was built to run {what}bf16, but OpenVINO on this {device} has no bf16: "
                      "it runs in f32 here (slower than measured at build time)", RuntimeWarning, stacklevel=3)
        config["INFERENCE_PRECISION_HINT"] = "f32"
    model = core().read_model(str(bundle.artifact("model")), str(bundle.artifact("weights")))
    compiled = core().compile_model(model, device, config)
    inputs, outputs = bundle.io_specs()
    return OpenVinoRunner(compiled, inputs, outputs, bundle=bundle, validate=validate)
