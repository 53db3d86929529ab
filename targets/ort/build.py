"""ONNX Runtime on CPU.

Portability: the bundle stores the ONNX graph as our passes left it (standard ONNX ops only).
ORT's fully optimized offline models contain layout transforms (NCHWc) and fused kernels chosen
for the build CPU, so we do *not* save at that level; the full level (ORT_ENABLE_ALL) is applied
when the runtime creates the session on the device.
"""
from __future__ import annotations


import numpy as np

from edgecompile.errors import CompileError
from edgecompile.targets.base import U8S8, Artifacts, Backend, BuildContext
from edgecompile.targets.ort.run import MODEL_FILE, _ort, create_session


class OrtTarget(Backend):
    name = "ort"
    run_module = "edgecompile.targets.ort.run"
    precisions = ("fp32", "fp16", "int8")   # int8: QDQ (static) or integer ops (dynamic) from the quantize pass;
                                            # fp16: the fp16 pass (CPU kernels are partial: often slower)
    portable = True                         # a plain ONNX graph: the same bundle runs on x86-64 and aarch64
    fp16_graph = True                       # precision fp16 = an FP16 ONNX graph (the fp16 pass), not an engine flag
    # every conv quantized: keeping the detector's narrow 3->8 stem float (`float_stem_channels = 4`) measured
    # faster on a loaded host and slower on a quiet one (bench/results/tasks.txt), so it is an option, not the preset
    quant_preset = U8S8

    def compile(self, model, ctx: BuildContext) -> Artifacts:
        import onnx_ir as ir

        path = ctx.writer.path(MODEL_FILE)
        proto = ir.to_proto(model)
        data = proto.SerializeToString()
        try:
            create_session(data, threads=ctx.threads)  # must load and plan on this ORT
        except Exception as exc:
            raise CompileError(
                f"ONNX Runtime cannot load the model: {explain_load_error(exc)}",
                hint="an op or opset this onnxruntime cannot run; try another backend or opset",
            ) from None
        path.write_bytes(data)
        return Artifacts(files={MODEL_FILE: "model"},
                         backend_options={"graph_optimization_level_at_load": "all",
                                          "stored_level": "as exported + edgecompile passes (portable)",
                                          "providers": ["CPUExecutionProvider"]})


def explain_load_error(exc: Exception) -> str:
    """ORT's load errors, reduced to one line that names the op or opset when ORT says which."""
    import re

    text = " ".join(str(exc).split())
    m = re.search(r"([\w.]*):(\w+)\((-?\d+)\) is not a registered function/op", text)
    if m:
        domain = m[1] or "ai.onnx"
        return f"op {m[2]!r} (domain {domain!r}) is not implemented by onnxruntime {_ort().__version__}"
    m = re.search(r"Opset (\d+) is under development.*?support for domain ([\w.]+) is till opset (\d+)", text)
    if m:
        return (f"opset {m[1]} (domain {m[2]!r}) is newer than onnxruntime {_ort().__version__} supports "
                f"(up to opset {m[3]})")
    m = re.search(r"No opset import for domain '?([\w.]+)'?", text)
    if m:
        return f"the model uses domain {m[1]!r} without importing an opset for it"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/onnxruntime_src/\S+ [^)]*\)\s*", "", text)      # C++ source location noise
    return text[:300] or exc.__class__.__name__


def ort_outputs(model_bytes: bytes, feeds_iter, threads: int | None = None, join=np.concatenate) -> list[np.ndarray]:
    """Run an ONNX model (bytes) over batches of feeds with ORT; outputs joined per output (concatenated, or
    `join=dataset.stack_outputs` for a dataset whose inputs are passed whole)."""
    sess = create_session(model_bytes, threads=threads)
    outs = None
    for feeds in feeds_iter:
        res = sess.run(None, feeds)
        outs = [[r] for r in res] if outs is None else [o + [r] for o, r in zip(outs, res)]
    return [join(o) for o in outs]
