"""Where two ONNX graphs of the same model start to differ: nodes matched by position and op, tensors exposed
as extra outputs and compared in bisection rounds; per-node errors for the INT8 sensitivity ranking."""
from __future__ import annotations

from dataclasses import dataclass, field

import math

import numpy as np

from edgecompile.data import Dataset
from edgecompile.verify.metrics import raw_similarity

DEFAULT_TOLERANCE = 1e-3      # relative L2 error of an intermediate tensor
LOCALIZE_SAMPLES = 32          # samples pushed through the probe graphs
FANOUT = 8                     # tensors exposed per bisection round
_SKIP_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Identity", "Cast", "Shape",
             "Constant", "ConstantOfShape", "Range", "Squeeze", "Unsqueeze", "Size"}


def _collect(fn, ds: Dataset, batch: int = 64, progress=None, label: str = "run") -> list[np.ndarray]:
    outs = None
    batches = ds.batches(batch)
    if progress is not None:
        batches = progress.iterate(batches, -(-len(ds) // batch), label)
    for feeds in batches:
        res = [np.asarray(r) for r in fn(feeds)]
        outs = [[r] for r in res] if outs is None else [o + [r] for o, r in zip(outs, res)]
    return [ds.stack_outputs(o) for o in outs]

@dataclass
class _Node:
    index: int
    name: str
    op: str
    tensor: str


@dataclass
class _Graph:
    proto: object
    nodes: list[_Node]
    types: dict = field(default_factory=dict)      # tensor name -> ONNX elem type (where known)


def _graph(data: bytes) -> _Graph:
    import onnx

    proto = onnx.ModelProto.FromString(data)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        inferred = proto
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    nodes = [_Node(i, n.name or f"#{i}", n.op_type, n.output[0]) for i, n in enumerate(proto.graph.node)
             if n.output and n.output[0]]
    return _Graph(proto, nodes, types)


def _is_float(g: _Graph, tensor: str) -> bool:
    import onnx

    t = g.types.get(tensor)
    return t is None or t in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                              onnx.TensorProto.DOUBLE)


def match_nodes(ga: _Graph, gb: _Graph) -> tuple[list[tuple[_Node, _Node]], str]:
    """Pairs of corresponding nodes in A's topological order: by name, else by position per op type."""
    def usable(g, n):
        return n.op not in _SKIP_OPS and _is_float(g, n.tensor)

    by_name = {n.name: n for n in gb.nodes}
    named = [(n, by_name[n.name]) for n in ga.nodes
             if n.name in by_name and by_name[n.name].op == n.op and usable(ga, n) and usable(gb, by_name[n.name])]
    candidates_a = [n for n in ga.nodes if usable(ga, n)]
    if candidates_a and len(named) >= len(candidates_a) / 2:
        return named, "name"
    seq_b: dict[str, list[_Node]] = {}
    for n in gb.nodes:
        if usable(gb, n):
            seq_b.setdefault(n.op, []).append(n)
    seen: dict[str, int] = {}
    pairs = []
    for n in candidates_a:
        k = seen.get(n.op, 0)
        seen[n.op] = k + 1
        if k < len(seq_b.get(n.op, [])):
            pairs.append((n, seq_b[n.op][k]))
    return pairs, "position"


def _expose(g: _Graph, tensors: list[str]) -> bytes:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(g.proto)
    existing = {o.name for o in model.graph.output}
    for t in tensors:
        if t in existing:
            continue
        model.graph.output.append(onnx.helper.make_tensor_value_info(t, g.types[t], None) if t in g.types
                                  else onnx.ValueInfoProto(name=t))
        existing.add(t)
    return model.SerializeToString()


def _run_exposed(g: _Graph, tensors: list[str], ds: Dataset) -> dict[str, np.ndarray]:
    from edgecompile.targets.ort.run import create_session

    # No graph optimization: every exposed tensor means exactly what the graph says on both sides.
    sess = create_session(_expose(g, tensors), level="disable")
    wanted = list(dict.fromkeys(tensors))
    outs = _collect(lambda feeds: sess.run(wanted, feeds), ds)
    return dict(zip(wanted, outs))


def tensor_error(ref: np.ndarray, x: np.ndarray) -> dict | None:
    if ref.shape != x.shape:
        return None
    r, a = np.asarray(ref, np.float64).reshape(-1), np.asarray(x, np.float64).reshape(-1)
    finite = np.isfinite(r) & np.isfinite(a)
    if not finite.all():       # e.g. an attention-mask bias of -inf: compare the finite entries only
        same = (r == a) | (np.isnan(r) & np.isnan(a))
        if not (finite | same).all():          # one side non-finite where the other is not
            return {"cosine": float("nan"), "max_abs": float("inf"), "mean_abs": float("inf"),
                    "snr_db": float("-inf"), "rel_error": float("inf")}
        r, a = r[finite], a[finite]
    sim = raw_similarity(a, r)
    d = a - r
    sim["rel_error"] = float(np.linalg.norm(d) / max(np.linalg.norm(r), 1e-12))
    return sim


def localize(onnx_a: bytes, onnx_b: bytes, ds: Dataset, tolerance: float = DEFAULT_TOLERANCE,
             progress=None, fanout: int = FANOUT) -> dict:
    """Bisect matched nodes in A's topological order for the first one whose output differs from
    A's by more than `tolerance` (relative L2). One ORT run per side and round; `fanout` probes per round."""
    ga, gb = _graph(onnx_a), _graph(onnx_b)
    pairs, how = match_nodes(ga, gb)
    base = {"tolerance": tolerance, "matching": how, "matched_nodes": len(pairs), "samples": len(ds)}
    if not pairs:
        return {**base, "status": "not applicable", "reason": "no nodes could be matched between A and B"}
    errors: dict[int, dict | None] = {}
    rounds = 0
    lo, hi = -1, len(pairs)          # invariant: pairs[lo] within tolerance (or lo = -1), hi = first known diverged
    while hi - lo > 1:
        idx = _probe_indices(lo, hi, fanout, errors)
        if not idx:
            break
        rounds += 1
        ra = _run_exposed(ga, [pairs[i][0].tensor for i in idx], ds)
        rb = _run_exposed(gb, [pairs[i][1].tensor for i in idx], ds)
        for i in idx:
            errors[i] = tensor_error(ra[pairs[i][0].tensor], rb[pairs[i][1].tensor])
        if progress is not None:
            progress.debug(f"bisection round {rounds}: probed {len(idx)} nodes in ({lo}, {hi})")
        diverged = [i for i in idx if errors[i] is not None and errors[i]["rel_error"] > tolerance]
        if diverged:
            hi = min(diverged)
        ok = [i for i in idx if i < hi and errors[i] is not None]
        if ok:
            lo = max(lo, max(ok))
    probed = [{"node": pairs[i][0].name, "op_type": pairs[i][0].op,
               **({"rel_error": e["rel_error"], "cosine": e["cosine"]} if e else {"incomparable": "shapes differ"})}
              for i, e in sorted(errors.items())]
    base.update(rounds=rounds, probed=probed)
    if hi == len(pairs):
        last = next((pairs[i][0].name for i in range(len(pairs) - 1, -1, -1) if errors.get(i)), None)
        return {**base, "status": "no divergence",
                "reason": f"every matched node is within tolerance {tolerance:g}"
                          + (f" (last compared: {last})" if last else "")}
    na, nb = pairs[hi]
    e = errors[hi]
    first = {"node": na.name, "node_b": nb.name, "op_type": na.op, "tensor": na.tensor, **e}
    if lo >= 0:
        first["previous"] = {"node": pairs[lo][0].name, "op_type": pairs[lo][0].op,
                             "rel_error": errors[lo]["rel_error"]}
    return {**base, "status": "diverged", "first": first}


def node_errors(onnx_a: bytes, onnx_b: bytes, ds: Dataset, chunk: int = 64, max_nodes: int = 500) -> dict:
    """Error of every matched node's output in B against A (cumulative: it includes what flowed in
    from upstream), in A's topological order. This is the per-layer quantization error when A is the
    FP32 graph and B its QDQ version. Tensors are fetched `chunk` at a time to bound memory."""
    ga, gb = _graph(onnx_a), _graph(onnx_b)
    pairs, how = match_nodes(ga, gb)
    pairs = pairs[:max_nodes]
    rows = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        ra = _run_exposed(ga, [na.tensor for na, _ in part], ds)
        rb = _run_exposed(gb, [nb.tensor for _, nb in part], ds)
        for na, nb in part:
            e = tensor_error(ra[na.tensor], rb[nb.tensor])
            if e is not None:
                rows.append({"node": na.name, "op_type": na.op, "rel_error": e["rel_error"], "cosine": e["cosine"],
                             "snr_db": e["snr_db"] if math.isfinite(e["snr_db"]) else None})
    return {"matching": how, "samples": len(ds), "rows": rows}


def per_layer_error(
    fp32_onnx: bytes, final_onnx: bytes, ds: Dataset, progress=None, samples: int = 8
) -> list[dict] | None:
    """The build's per-layer quantization error: every matched node of the shipped graph against the
    FP32 graph on a few evaluation samples. A diagnostic: a failure is noted, never fatal."""
    try:
        return node_errors(fp32_onnx, final_onnx, ds.take(samples))["rows"] or None
    except Exception as exc:           # e.g. an op ORT cannot run unoptimized; the build itself is fine
        if progress is not None:
            progress.debug(f"per-layer error not computed: {exc.__class__.__name__}: {str(exc)[:200]}")
        return None


def _probe_indices(lo: int, hi: int, fanout: int, errors: dict) -> list[int]:
    """Up to `fanout` not-yet-probed indices spread evenly over the open interval (lo, hi)."""
    free = [i for i in range(lo + 1, hi) if i not in errors]
    if len(free) <= fanout:
        return free
    return sorted({free[(j + 1) * len(free) // (fanout + 1)] for j in range(fanout)})


