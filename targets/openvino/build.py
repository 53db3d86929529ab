"""OpenVINO (CPU, and GPU/NPU where OpenVINO reports them).

compile: our ONNX (FP32, or QDQ for int8) -> OpenVINO model -> serialized IR (`model.xml` +
`model.bin`, weights kept in FP32: `compress_to_fp16=False`) in the bundle. The IR is compiled on
the device when the runtime loads the bundle, with the precision hint recorded in the manifest:

- fp32 -> INFERENCE_PRECISION_HINT f32. OpenVINO's CPU plugin defaults to bf16 on CPUs that
  have it, which would silently break the "fp32 is real FP32" contract, so we always set it.
- bf16 -> bf16, only where the device lists BF16 in OPTIMIZATION_CAPABILITIES (asked of the
  plugin on this machine, never guessed from a CPU name).
- int8 -> the graph arrives as QDQ ONNX; OpenVINO runs the quantized ops in int8 (VNNI/AMX
  where present) and the rest with an f32 hint, or bf16 where the device runs it natively and it
  measured faster with the same outputs (`choose_float_hint`; the report says which). Dynamic mode
  arrives as int8 weights only (passes/weight_int8.py); the IR keeps them compressed and the plugin
  quantizes the MatMul inputs per group at run time (`DYNAMIC_QUANTIZATION_GROUP_SIZE`, recorded in
  the manifest's config and re-applied at load).

The compiled blob (`export_model`) is tied to the build machine's ISA, so the portable IR is
what the bundle stores; compiling it at load takes milliseconds for our models.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgecompile.errors import CompileError, first_line
from edgecompile.targets.base import Artifacts, Availability, Backend, BuildContext
from edgecompile.targets.openvino.run import (
    BIN_FILE, HINTS, XML_FILE, _ov, capabilities, check_device, compile_config, compiled_properties, core,
    supports_bf16,
)


class OpenVinoTarget(Backend):
    name = "openvino"
    run_module = "edgecompile.targets.openvino.run"
    config_section = "openvino"

    @property
    def precisions(self) -> tuple[str, ...]:
        """What this machine's OpenVINO CPU plugin runs natively (int8 needs the quantize pass)."""
        from edgecompile.compiler import registry

        out = ["fp32"]
        if self.check_available().ok and supports_bf16("CPU"):
            out.append("bf16")
        if registry.has_pass("quantize"):
            out.append("int8")
        return tuple(out)

    def check_config(self, config) -> None:
        """Fail fast (before export) on a device OpenVINO does not list here."""
        check_device(config.openvino.device)

    def auto_candidate(self, model, plan) -> Availability:
        bad = unsupported_nodes(model)
        return Availability(not bad, "measured" if not bad else gap_text(bad))

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
        bad = unsupported_nodes(model)
        if bad:
            raise CompileError(f"OpenVINO cannot take {gap_text(bad)}",
                               hint="--backend ort runs every op ONNX Runtime implements (or use --backend auto)")
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
        fmt = "OpenVINO IR (weights fp32)"
        if weight_only_int8(model):
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(opts.dynamic_quantization_group_size)
            fmt = "OpenVINO IR (MatMul weights int8, compressed; other weights fp32)"
        try:   # must compile on the device with the settings the runtime will use
            saved = core().read_model(str(xml))      # the IR as the bundle stores it
            compiled = core().compile_model(saved, device, config)
        except Exception as exc:
            raise CompileError(f"OpenVINO cannot compile the model for {device}: {first_line(exc)}",
                               hint="try --backend ort, or another [openvino] device") from None
        execution = None
        # int8 only: a "mixed" graph keeps layers in float for accuracy, so they keep f32 too
        if ctx.precision == "int8" and opts.int8_float_hint != "f32":
            compiled, config, execution = choose_float_hint(compiled, saved, device, config, ctx,
                                                            forced=opts.int8_float_hint == "bf16")
            if weight_only_int8(model) and config.get("INFERENCE_PRECISION_HINT") == "bf16":
                execution = {**execution, "activations": BF16_WEIGHT_ONLY}
        applied = compiled_properties(compiled)
        del compiled
        options = {"device": device, "config": config, "applied_at_build": applied,
                   "capabilities": capabilities(device), "format": fmt}
        if execution:
            options["execution"] = execution
        return Artifacts(files={XML_FILE: "model", BIN_FILE: "weights"}, backend_options=options)


# bf16 for the ops of an INT8 graph that stay float only when it is this much faster, and its outputs this
# close to the f32-hinted ones on the calibration samples (the task metric is then evaluated as always)
BF16_MIN_GAIN = 1.05
BF16_MIN_COSINE = 0.9995
# measured on OpenVINO 2026.4: under the bf16 hint the CPU plugin quantizes no activations of a weight-only
# graph (accuracy and speed are the same for every DYNAMIC_QUANTIZATION_GROUP_SIZE, 0 included)
BF16_WEIGHT_ONLY = "bf16, not quantized (int8 weights, bf16 MatMuls: OpenVINO applies no dynamic quantization " \
                   "under the bf16 hint)"


def prefer_bf16(f32_ms: float, bf16_ms: float, cosine: float) -> bool:
    return f32_ms >= BF16_MIN_GAIN * bf16_ms and cosine >= BF16_MIN_COSINE


def choose_float_hint(compiled, saved, device: str, config: dict, ctx, *, forced: bool):
    """The hint for what an INT8 graph leaves in float (attention, normalisation, the MatMuls of dynamic
    mode): measured, never assumed. Where OpenVINO runs bf16 natively (AMX, AVX512-BF16), the model is
    compiled both ways; bf16 is kept when it is >= 5 % faster on a calibration sample and its outputs
    agree with the f32-hinted ones (cosine >= 0.9995 per output and sample, up to 16 samples: well inside
    the error INT8 itself adds, e.g. 0.9992-0.9996 for MiniLM).
    `[openvino] int8_float_hint = "bf16"` skips the checks, "f32" skips the measurement.
    `saved`: the IR read back from the bundle, as `compiled` was compiled from it.
    Returns (compiled, config, execution note or None)."""
    if not supports_bf16(device):
        if forced:
            raise CompileError(f"[openvino] int8_float_hint = 'bf16', but OpenVINO on {device} has no native bf16 here",
                               hint="set int8_float_hint to 'auto' or 'f32'")
        return compiled, config, None
    data = ctx.calibration if ctx.calibration is not None else ctx.evaluation
    bf_config = {**config, "INFERENCE_PRECISION_HINT": "bf16"}
    try:
        bf = core().compile_model(saved, device, bf_config)
    except Exception as exc:
        if forced:
            raise CompileError(f"OpenVINO cannot compile the model with bf16 for {device}: {first_line(exc)}",
                               hint="set [openvino] int8_float_hint to 'auto' or 'f32'") from None
        return compiled, config, {"float_ops": f"f32 (bf16 failed to compile: {first_line(exc)})"}
    if forced:
        return bf, bf_config, {"float_ops": "bf16 ([openvino] int8_float_hint)"}
    if data is None or not len(data):
        return compiled, config, {"float_ops": "f32 (no sample data to measure bf16 on)"}
    from edgecompile.verify.bench import interleaved
    from edgecompile.verify.textmetrics import row_cosines

    feeds = [dict(f) for _, f in zip(range(16), data.batches(1))]
    req = {"f32": compiled.create_infer_request(), "bf16": bf.create_infer_request()}
    try:
        outs = {k: [[np.asarray(v, np.float64).ravel() for v in r.infer(f).values()] for f in feeds]
                for k, r in req.items()}
        timed = interleaved({k: (lambda r=r: r.infer(feeds[0])) for k, r in req.items()}, rounds=6, seconds=1.2)
    except Exception as exc:    # noqa: BLE001  (the evaluation that follows runs the f32 form and reports)
        return compiled, config, {"float_ops": f"f32 (bf16 could not be measured here: {first_line(exc)})"}
    cosine = min((float(row_cosines(a[None], b[None])[0])
                  for fa, fb in zip(outs["f32"], outs["bf16"]) for a, b in zip(fa, fb) if a.size), default=1.0)
    f32_ms, bf_ms = timed["f32"]["ms"], timed["bf16"]["ms"]
    measured = f"{bf_ms:.2f} ms vs {f32_ms:.2f} ms in f32, outputs cosine {cosine:.6f} to f32"
    if prefer_bf16(f32_ms, bf_ms, cosine):
        return bf, bf_config, {"float_ops": f"bf16, measured here: {measured}"}
    return compiled, config, {"float_ops": f"f32 (bf16 measured here: {measured})"}


def weight_only_int8(model) -> bool:
    """Integer weights behind DequantizeLinear and no quantized activations (the quantize pass's dynamic
    mode for OpenVINO): the activations are quantized by the plugin at run time."""
    ops = {n.op_type for n in model.graph.all_nodes()}
    return "DequantizeLinear" in ops and not ops & {"QuantizeLinear", "DynamicQuantizeLinear"}


# Tensor element types OpenVINO's ONNX frontend has no CPU kernels for (it aborts the process on some).
_NO_OV_TYPES = {"STRING", "BFLOAT16", "COMPLEX64", "COMPLEX128"}


def unsupported_nodes(model) -> list[dict]:
    """Nodes of an onnx_ir model that touch a tensor type OpenVINO cannot run:
    [{"op_type", "name", "opset", "reason"}]."""
    opsets = dict(model.opset_imports)
    bad = []
    for node in model.graph.all_nodes():
        types = {v.dtype.name for v in [*node.inputs, *node.outputs] if v is not None and v.dtype is not None}
        odd = sorted(types & _NO_OV_TYPES)
        if odd:
            bad.append({"op_type": node.op_type, "name": node.name or "(unnamed)",
                        "opset": opsets.get(node.domain or ""), "reason": f"{'/'.join(odd).lower()} tensors"})
    return bad


def gap_text(bad: list[dict]) -> str:
    shown = "; ".join(f"{b['op_type']} {b['name']!r} (opset {b['opset']}): {b['reason']}" for b in bad[:5])
    return f"{len(bad)} node(s): {shown}" + (" ..." if len(bad) > 5 else "")
