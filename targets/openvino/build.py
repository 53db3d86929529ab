"""OpenVINO (CPU, and GPU/NPU where OpenVINO reports them).

compile: our ONNX (FP32, or QDQ for int8) -> OpenVINO model -> serialized IR (`model.xml` +
`model.bin`, weights kept in FP32: `compress_to_fp16=False`) in the bundle. The IR is compiled on
the device when the runtime loads the bundle, with the precision hint recorded in the manifest:

- fp32 -> INFERENCE_PRECISION_HINT f32. OpenVINO's CPU plugin defaults to bf16 on CPUs that
  have it, which would silently break the "fp32 is real FP32" contract, so we always set it.
- bf16 -> bf16, only where the device lists BF16 in OPTIMIZATION_CAPABILITIES (asked of the
  plugin on this machine, never guessed from a CPU name).
- int8 -> the graph arrives as QDQ ONNX; OpenVINO runs the quantized ops in int8 (VNNI/AMX
  where present) and the rest with an f32 hint, so nothing is silently lowered to bf16. Dynamic mode
  arrives as int8 weights only (passes/weight_int8.py); the IR keeps them compressed and the plugin
  quantizes the MatMul inputs per group at run time (`DYNAMIC_QUANTIZATION_GROUP_SIZE`, recorded in
  the manifest's config and re-applied at load).

The compiled blob (`export_model`) is tied to the build machine's ISA, so the portable IR is
what the bundle stores; compiling it at load takes milliseconds for our models.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

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
            compiled = core().compile_model(core().read_model(str(xml)), device, config)
        except Exception as exc:
            raise CompileError(f"OpenVINO cannot compile the model for {device}: {first_line(exc)}",
                               hint="try --backend ort, or another [openvino] device") from None
        applied = compiled_properties(compiled)
        del compiled
        return Artifacts(
            files={XML_FILE: "model", BIN_FILE: "weights"},
            backend_options={"device": device, "config": config, "applied_at_build": applied,
                             "capabilities": capabilities(device), "format": fmt})


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
