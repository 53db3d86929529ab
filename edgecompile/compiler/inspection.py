"""What is in an ONNX model or a bundle: inputs, outputs, op histogram, parameters, MACs/FLOPs, opset.

`inspect_path(path) -> dict` is the Python API behind `edgecompile inspect`. FLOPs count the
multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul (and their quantized forms) from shapes after
ONNX shape inference, with symbolic dimensions (e.g. the batch) taken as 1; FLOPs = 2 x MACs.
Other ops (activations, pooling, normalization) are not counted.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from edgecompile.errors import ModelLoadError

# op type -> (index of the input whose shape gives the reduction, index of the weight input or None)
_MAC_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


def read_onnx(path: str | Path):
    """Parse an ONNX file into a ModelProto; a one-line ModelLoadError for missing, empty, truncated
    or non-ONNX files."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {str(path)!r} does not exist", hint="check the path")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file", hint="pass a .onnx file or a bundle directory")
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path}: file is empty (0 bytes)", hint="re-export the model")
    try:
        import onnx
    except ImportError:
        raise ModelLoadError("reading ONNX files needs the onnx package",
                             hint="pip install 'edgecompile[build]'") from None
    try:
        proto = onnx.ModelProto.FromString(data)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({exc.__class__.__name__})",
                             hint="the file may be truncated or not ONNX; re-export it") from None
    if not proto.graph.node:
        raise ModelLoadError(f"{path}: not a valid ONNX model (graph has no nodes)",
                             hint="the file may be truncated or not ONNX; re-export it")
    if not proto.opset_import:
        raise ModelLoadError(f"{path}: not a valid ONNX model (no opset_import; truncated?)",
                             hint="the file may be truncated; re-export it")
    return proto


def inspect_path(path: str | Path) -> dict:
    """A bundle directory (manifest summary + its ONNX model, if it has one) or an ONNX file."""
    path = Path(path)
    if path.is_dir():
        return inspect_bundle(path)
    return {"kind": "onnx", "path": str(path), **inspect_onnx(read_onnx(path))}


def inspect_bundle(path: Path) -> dict:
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.errors import BundleError

    bundle = Bundle.open(path, verify=False)
    try:
        bundle.verify()
        verified, problem = True, None
    except BundleError as exc:
        verified, problem = False, exc.message
    m = bundle.manifest
    summary = {
        "bundle_id": m.get("bundle_id"), "schema_version": m.get("schema_version"),
        "created_by": m.get("created_by"), "model": (m.get("model") or {}).get("name"),
        "target": m.get("target"), "backend": m.get("backend"), "precision": m.get("precision"),
        "requested_precision": m.get("requested_precision"), "metric": m.get("metric"),
        "inputs": m.get("inputs"), "outputs": m.get("outputs"),
        "passes": [p.get("name") for p in m.get("passes", [])],
        "artifacts": {k: {"role": v.get("role"), "size": v.get("size"), "sha256": v.get("sha256")}
                      for k, v in m["artifacts"].items()},
        "size_bytes": sum(v.get("size", 0) for v in m["artifacts"].values()),
        "toolchain": m.get("toolchain"), "verified": verified, "verify_error": problem,
    }
    out = {"kind": "bundle", "path": str(path), "manifest": summary, "model": None}
    onnx_files = [p for p in bundle.artifacts_with_role("model") if p.suffix == ".onnx"]
    if onnx_files and verified:
        out["model"] = {"file": onnx_files[0].name, **inspect_onnx(read_onnx(onnx_files[0]))}
    return out


def graph_inputs(proto) -> list[tuple[str, tuple, str]]:
    """(name, dims, numpy dtype name) of an ONNX graph's real inputs (initializers excluded); a
    symbolic dimension is its name, "?" when it has none."""
    inits = {i.name for i in proto.graph.initializer}
    return [(vi.name, tuple(_dims(vi.type) or ()), _dtype(vi.type.tensor_type.elem_type))
            for vi in proto.graph.input if vi.name not in inits]


def _dims(type_proto) -> list | None:
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def _dtype(elem_type: int) -> str:
    import onnx

    if elem_type == onnx.TensorProto.STRING:
        return "str"                   # given as numpy unicode arrays
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "unknown"


def inspect_onnx(proto) -> dict:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:            # custom ops or broken graphs: count what the file already declares
        inferred = proto
    g = inferred.graph
    init = {i.name: list(i.dims) for i in g.initializer}
    shapes: dict[str, list] = dict(init)
    for vi in [*g.input, *g.value_info, *g.output]:
        d = _dims(vi.type)
        if d is not None:
            shapes[vi.name] = d

    def tensors(values):
        return [{"name": v.name, "shape": _dims(v.type), "dtype": _dtype(v.type.tensor_type.elem_type)}
                for v in values if v.name not in init]

    ops = Counter((f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in g.node)
    params = sum(math.prod(i.dims) for i in g.initializer)
    params += sum(math.prod(a.t.dims) for n in g.node if n.op_type == "Constant"
                  for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR)
    param_bytes = sum(len(i.raw_data) if i.raw_data else 0 for i in g.initializer)
    macs, counted, unknown = _macs(g, shapes)
    return {
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "opset": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "inputs": tensors(g.input),
        "outputs": tensors(g.output),
        "nodes": len(g.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "params": int(params),
        "param_bytes": int(param_bytes),
        "macs": int(macs),
        "flops": int(2 * macs),
        "flops_note": (f"MACs of {counted} Conv/Gemm/MatMul node(s) at batch 1 (symbolic dims = 1)"
                       + (f"; {unknown} node(s) with unknown shapes not counted" if unknown else "")),
    }


def _num(dims) -> list[int] | None:
    if dims is None:
        return None
    return [d if isinstance(d, int) and d > 0 else 1 for d in dims]


def _macs(graph, shapes: dict) -> tuple[int, int, int]:
    total, counted, unknown = 0, 0, 0
    for n in graph.node:
        op = n.op_type
        if n.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        if op in _MAC_OPS:
            w = _num(shapes.get(n.input[_MAC_OPS[op]])) if len(n.input) > _MAC_OPS[op] else None
            ref = _num(shapes.get(n.input[0] if op == "ConvTranspose" else n.output[0]))
            if w is None or ref is None or len(w) < 2:
                unknown += 1
                continue
            total += math.prod(ref) * math.prod(w[1:])
        elif op == "Gemm":
            a, out = _num(shapes.get(n.input[0])), _num(shapes.get(n.output[0]))
            if a is None or out is None or len(a) != 2:
                unknown += 1
                continue
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            total += math.prod(out) * (a[0] if trans_a else a[1])
        elif op in _MATMUL_OPS:
            ia, _ = _MATMUL_OPS[op]
            a, out = _num(shapes.get(n.input[ia])), _num(shapes.get(n.output[0]))
            if a is None or out is None or not a:
                unknown += 1
                continue
            total += math.prod(out) * a[-1]
        else:
            continue
        counted += 1
    return total, counted, unknown
