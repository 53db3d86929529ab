"""Build-time checks of an ONNX graph against TensorRT, without TensorRT.

`check_graph(model)`: every node against the parser's support table (`trt_ops`) and the
restrictions that decide whether the parser imports it; unsupported nodes are listed with a
suggested fallback. `check_qdq(model)`: explicit quantization as TensorRT requires it —
symmetric int8 (zero points 0, int8 types), per-tensor activations, per-channel weights only on
the output-channel axis, Q always feeding DQ, DQ fed by a Q or by constant int8 weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir

from edgecompile.targets.tensorrt import ops as trt_ops


@dataclass(frozen=True)
class Issue:
    node: str
    op: str
    problem: str
    fallback: str
    severity: str = "error"          # "error": TensorRT rejects it; "warning": imported with a caveat

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    check: str
    tensorrt_version: str
    nodes: int
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        if self.ok:
            warn = len(self.issues)
            return f"{self.check}: ok ({self.nodes} nodes{f', {warn} warnings' if warn else ''})"
        ops = sorted({i.op for i in self.errors})
        return (f"{self.check}: {len(self.errors)} problem(s) in {len({i.node for i in self.errors})} node(s) "
                f"({', '.join(ops)}); first: {self.errors[0].node}: {self.errors[0].problem}")

    def to_dict(self) -> dict:
        return {"check": self.check, "tensorrt_version": self.tensorrt_version, "nodes": self.nodes,
                "ok": self.ok, "issues": [i.to_dict() for i in self.issues]}


# -- helpers ---------------------------------------------------------------------------------------

def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _const(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array when it is an initializer or a Constant node's output."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    prod = value.producer()
    if prod is not None and prod.op_type == "Constant" and prod.domain in ("", "ai.onnx"):
        t = _attr(prod, "value")
        if t is not None and hasattr(t, "numpy"):
            return t.numpy()
    return None


def _is_const(value: ir.Value | None) -> bool:
    return value is not None and (value.const_value is not None or
                                  (value.producer() is not None and value.producer().op_type == "Constant"))


def _name(node: ir.Node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _dtype(value: ir.Value | None) -> str | None:
    return None if value is None or value.dtype is None else value.dtype.short_name()


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


# -- operator restrictions (TensorRT 10.1 parser) --------------------------------------------------

_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3, "CumSum": 1, "ReduceL1": 1, "ReduceL2": 1,
               "ReduceLogSum": 1, "ReduceLogSumExp": 1, "ReduceMax": 1, "ReduceMean": 1, "ReduceMin": 1,
               "ReduceProd": 1, "ReduceSum": 1, "ReduceSumSquare": 1}
_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODE = {"nearest", "linear"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_FOLD = "constant-fold it (the simplify pass does when its inputs are static)"


def _restrictions(node: ir.Node) -> list[tuple[str, str]]:
    """(problem, fallback) pairs for restrictions this node violates."""
    op, out = node.op_type, []
    if op in _AXES_INPUT:
        idx = _AXES_INPUT[op]
        if len(node.inputs) > idx and node.inputs[idx] is not None and not _is_const(node.inputs[idx]):
            label = "axis" if op == "CumSum" else "axes"
            out.append((f"`{label}` input must be a constant initializer", _FOLD))
    if op in ("AveragePool", "MaxPool", "LpPool"):
        dil = _attr(node, "dilations")
        if dil and any(d != 1 for d in dil):
            out.append(("pooling dilations other than 1 are unsupported", "rewrite as a dilated Conv or unfold"))
        rank = _rank(node.inputs[0])
        if op != "LpPool" and rank is not None and rank not in (4, 5):
            out.append((f"only 2D or 3D pooling is supported (input rank {rank})", "reshape to 4D around the pool"))
        if op == "MaxPool" and len(node.outputs) > 1 and _used(node.outputs[1]):
            out.append(("the `Indices` output of MaxPool is unsupported", "drop the indices output"))
    if op == "TopK":
        if _attr(node, "sorted", 1) != 1:
            out.append(("`sorted` must be 1", "sort the result (sorted=1) and re-order in post-processing"))
        k = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        if k is not None and int(np.asarray(k).reshape(-1)[0]) >= 3840:
            out.append((f"K={int(np.asarray(k).reshape(-1)[0])} must be below 3840", "split into chunked TopKs"))
    if op == "Resize":
        coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
        mode = _attr(node, "mode", "nearest")
        if coord not in _RESIZE_COORD:
            out.append((f"coordinate_transformation_mode {coord!r} is unsupported", "export with half_pixel"))
        if mode not in _RESIZE_MODE:
            out.append((f"resize mode {mode!r} is unsupported (nearest, linear)", "use mode linear"))
        if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST:
            out.append((f"nearest_mode {_attr(node, 'nearest_mode')!r} is unsupported", "use round_prefer_floor"))
        if _attr(node, "antialias", 0):
            out.append(("antialiasing is unsupported", "resize without antialias"))
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            out.append(("only keep_aspect_ratio_policy 'stretch' is supported", "resize in pre-processing"))
    if op == "LSTM":
        if _attr(node, "input_forget", 0) != 0 or _attr(node, "layout", 0) != 0:
            out.append(("LSTM `input_forget` and `layout` must be 0", "export with batch_first=False"))
    if op == "ScatterND" and _attr(node, "reduction", "none") != "none":
        out.append(("ScatterND with a reduction is unsupported", "scatter, then reduce in a separate op"))
    if op == "Dropout" and len(node.inputs) > 2 and node.inputs[2] is not None:
        training = _const(node.inputs[2])
        if training is None or bool(np.asarray(training).any()):
            out.append(("Dropout `training_mode` must be a constant False", "export the model in eval mode"))
    if op == "LayerNormalization" and any(_used(o) for o in node.outputs[1:]):
        out.append(("only the first output (Y) of LayerNormalization is supported", "drop Mean/InvStdDev outputs"))
    if op == "Constant":
        for bad in ("sparse_value", "value_string", "value_strings"):
            if bad in node.attributes:
                out.append((f"Constant with `{bad}` is unsupported", "use a dense numeric constant"))
    if op == "OneHot" and len(node.inputs) > 1 and not _is_const(node.inputs[1]):
        out.append(("OneHot `depth` must be a build-time constant", _FOLD))
    if op == "GridSample" and _rank(node.inputs[0]) not in (None, 4):
        out.append(("GridSample input must be 4D", "reshape to 4D"))
    if op in ("QuantizeLinear", "DequantizeLinear"):
        zp = _const(node.inputs[2]) if len(node.inputs) > 2 else None
        if zp is not None and np.any(zp != 0):
            out.append(("zero point must be 0 (symmetric quantization)", "quantize with the TensorRT preset"))
    return out


def _dtype_issue(node: ir.Node) -> tuple[str, str, str] | None:
    types = trt_ops.SUPPORTED.get(node.op_type, "").split()
    if not types or not node.inputs or node.inputs[0] is None:
        return None
    dt = _dtype(node.inputs[0])
    if dt is None or node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast", "CastLike", "Shape", "Size"):
        return None
    dt = {"b8": "bool"}.get(dt, dt)
    if dt in types:
        return None
    if dt in trt_ops.CAST_DOWN_TYPES:
        return (f"{dt} input is cast down to {trt_ops.CAST_DOWN_TYPES[dt]} by the parser",
                "export in float32", "warning")
    if dt in trt_ops.QUANTIZED_TYPES and node.op_type in ("Reshape", "Transpose", "Concat", "Identity", "Flatten",
                                                          "Squeeze", "Unsqueeze", "Slice", "Gather", "Split"):
        return None        # shuffles of quantized tensors between Q and DQ are fine
    return (f"input type {dt} is unsupported (supported: {', '.join(types)})",
            "insert a Cast to a supported type or run this part on the CPU fallback", "error")


def check_graph(model: ir.Model) -> Report:
    """Every node against TensorRT's ONNX parser (version trt_ops.TRT_VERSION)."""
    rep = Report("tensorrt-compatibility", trt_ops.TRT_VERSION, 0)
    opset = dict(model.opset_imports).get("", dict(model.opset_imports).get("ai.onnx"))
    lo, hi = trt_ops.OPSET_RANGE
    if opset is not None and not lo <= opset <= hi:
        rep.issues.append(Issue("<model>", "opset", f"opset {opset} is outside the parser's range {lo}..{hi}",
                                f"export with an opset in {lo}..{hi}"))
    for i, node in enumerate(model.graph):
        rep.nodes += 1
        name = _name(node, i)
        if node.domain not in ("", "ai.onnx"):
            rep.issues.append(Issue(name, f"{node.domain}::{node.op_type}",
                                    f"custom domain {node.domain!r} is not an ONNX operator",
                                    "a TensorRT plugin with this name, or " + trt_ops.GENERIC_FALLBACK))
            continue
        op = node.op_type
        if op in trt_ops.UNSUPPORTED or op not in trt_ops.SUPPORTED:
            why = "not supported by the parser" if op in trt_ops.UNSUPPORTED else "not in the parser's operator table"
            fb = trt_ops.FALLBACKS.get(op) or (trt_ops.SEQUENCE_FALLBACK if op.startswith(("Sequence", "Optional"))
                                               else trt_ops.GENERIC_FALLBACK)
            rep.issues.append(Issue(name, op, f"{op} is {why} (TensorRT {trt_ops.TRT_VERSION})", fb))
            continue
        for problem, fallback in _restrictions(node):
            rep.issues.append(Issue(name, op, problem, fallback))
        dt = _dtype_issue(node)
        if dt is not None:
            rep.issues.append(Issue(name, op, dt[0], dt[1], dt[2]))
    return rep


# -- explicit quantization (Q/DQ) ------------------------------------------------------------------

# Weight input index and the output-channel axis TensorRT expects for per-channel weight scales.
def _weight_axis(consumer: ir.Node, index: int, rank: int | None) -> int | None:
    op = consumer.op_type
    if op == "Conv" and index == 1:
        return 0
    if op == "ConvTranspose" and index == 1:
        return 1
    if op == "Gemm" and index == 1:
        return 0 if _attr(consumer, "transB", 0) else 1
    if op == "MatMul" and index == 1 and rank:
        return rank - 1
    return None


def has_qdq(model: ir.Model) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)


def check_qdq(model: ir.Model) -> Report:
    """TensorRT explicit-quantization rules for the graph's QuantizeLinear/DequantizeLinear nodes."""
    rep = Report("tensorrt-qdq", trt_ops.TRT_VERSION, 0)
    add = lambda n, problem, fix, sev="error": rep.issues.append(Issue(n[0], n[1], problem, fix, sev))  # noqa: E731
    fix = "quantize with the TensorRT preset (symmetric int8, zero point 0)"
    for i, node in enumerate(model.graph):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            continue
        rep.nodes += 1
        key = (_name(node, i), node.op_type)
        x = node.inputs[0]
        scale = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        zp_value = node.inputs[2] if len(node.inputs) > 2 else None
        zp = _const(zp_value)
        if scale is None:
            add(key, "scale must be a constant initializer", fix)
        else:
            if scale.dtype.kind != "f":
                add(key, f"scale must be floating point, got {scale.dtype}", fix)
            elif not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                add(key, "scale must be finite and positive", "recalibrate; a zero scale means a constant tensor")
        if zp_value is not None and zp is None:
            add(key, "zero point must be a constant initializer", fix)
        if zp is not None and np.any(zp != 0):
            add(key, f"zero point must be 0 (found values {np.unique(zp)[:4].tolist()})", fix)
        if node.op_type == "QuantizeLinear":
            out = node.outputs[0]
            if out.dtype is not None:
                qtype = out.dtype.numpy().name
            elif zp is not None:
                qtype = zp.dtype.name
            else:   # no zero point: uint8 unless output_dtype (opset 21) says otherwise
                qtype = "int8" if int(_attr(node, "output_dtype", 0) or 0) == ir.DataType.INT8 else "uint8"
            if qtype != "int8":
                add(key, f"quantized type must be int8, got {qtype}", fix)
            if scale is not None and scale.size > 1 and not _is_const(x):
                add(key, "per-channel quantization of an activation is unsupported (per-tensor scale required)",
                    "quantize activations per tensor")
            consumers = [u.node for u in out.uses()]
            if out.is_graph_output():
                add(key, "a quantized (int8) tensor must not be a graph output", "dequantize before the output")
            for c in consumers:
                if c.op_type != "DequantizeLinear":
                    add(key, f"QuantizeLinear output feeds {c.op_type}; TensorRT needs Q -> DQ pairs",
                        "insert a DequantizeLinear after every QuantizeLinear")
                else:
                    cs = _const(c.inputs[1]) if len(c.inputs) > 1 else None
                    if scale is not None and cs is not None and (cs.shape != scale.shape or not np.allclose(cs, scale)):
                        add(key, "Q/DQ pair with different scales (requantization)",
                            "use the same scale for a Q and its DQ", "warning")
        else:
            in_type = x.dtype.numpy().name if x is not None and x.dtype is not None else (
                zp.dtype.name if zp is not None else None)
            if in_type == "int32":
                add(key, "int32 (bias) dequantization is unsupported: TensorRT quantizes only int8",
                    "keep biases in float (e.g. ORT quantize_static extra_options QuantizeBias=False)")
            elif in_type is not None and in_type != "int8":
                add(key, f"dequantized type must be int8, got {in_type}", fix)
            prod = x.producer() if x is not None else None
            const_w = _const(x)
            if const_w is None and (prod is None or prod.op_type != "QuantizeLinear"):
                add(key, "DequantizeLinear input must come from a QuantizeLinear or be constant int8 weights",
                    "quantize the tensor with a Q -> DQ pair")
            if scale is not None and scale.size > 1:
                if const_w is None and (prod is None or not _is_const(prod.inputs[0])):
                    add(key, "per-channel dequantization of an activation is unsupported",
                        "quantize activations per tensor")
                axis = int(_attr(node, "axis", 1))
                rank = const_w.ndim if const_w is not None else _rank(x)
                if rank and axis < 0:
                    axis += rank
                for use in node.outputs[0].uses():
                    want = _weight_axis(use.node, use.idx, rank)
                    if want is not None and axis != want:
                        add(
                            key,
                            f"per-channel weight axis {axis} feeding {use.node.op_type}: TensorRT needs the "
                            f"output-channel axis {want}",
                            f"quantize {use.node.op_type} weights along axis {want}",
                        )
    if rep.nodes == 0:
        rep.issues.append(Issue("<model>", "-", "no QuantizeLinear/DequantizeLinear nodes (not an explicit-INT8 graph)",
                                "run the quantize pass, or use implicit INT8 with a calibration cache", "warning"))
    return rep
