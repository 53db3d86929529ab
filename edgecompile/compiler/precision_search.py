"""Accuracy-aware mixed precision: which layers break INT8, and which to keep in float.

* `layer_groups`: every quantizable compute node (Conv, Gemm, MatMul, ...) with the elementwise
  nodes on its data input back to the previous compute node (Add/Relu/Clip...). Keeping a layer in
  float keeps its whole group in float, so the tensor feeding it is not quantized either.
* `sensitivity`: one batched run of the FP32 graph and the fully quantized graph with every
  intermediate exposed (edgecompile.verify.compare.node_errors); a group's sensitivity is the relative
  error it *adds*: the error at its output minus the error of the tensor that enters it.
* `fallback`: greedy -- keep the most sensitive group in float, re-quantize from the cached
  calibration (no recalibration), re-measure the task metric, until the drop is within the bound;
  each step's batch-1 latency is measured against the previous step (interleaved) so the report can
  say what each float layer cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgecompile.passes.quantize import COMPUTE_OPS

MAX_STEPS = 12           # greedy steps (each: one QDQ insertion + one evaluation + a short latency probe)
SENSITIVITY_SAMPLES = 32


@dataclass
class Group:
    node: str                       # the compute node
    op_type: str
    members: list[str] = field(default_factory=list)     # node names kept in float with it (incl. node)
    entry: str | None = None        # the node producing the tensor that enters the group (None: graph input)


def layer_groups(proto) -> list[Group]:
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    inits = {i.name for i in proto.graph.initializer}
    stop = set(COMPUTE_OPS) | {"QuantizeLinear", "DequantizeLinear"}
    groups = []
    for node in proto.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        g = Group(node.name, node.op_type, [node.name])
        cur = node
        while True:
            data = [i for i in cur.input if i and i not in inits and i in producer]
            if not data:
                break
            prev = producer[data[0]]
            if (prev.op_type in stop or (cur is not node and len(data) > 1)
                    or any(consumers.get(o, 0) > 1 for o in prev.output)):
                g.entry = prev.name
                break
            g.members.append(prev.name)
            cur = prev
        groups.append(g)
    return groups


def sensitivity(fp32_bytes: bytes, int8_bytes: bytes, groups: list[Group], ds) -> list[dict]:
    """Per group: error added by quantizing it (relative L2 at its output minus at its entry),
    from one batched run of each graph. Sorted, most sensitive first."""
    from edgecompile.verify.localize import node_errors

    rows = {r["node"]: r for r in node_errors(fp32_bytes, int8_bytes, ds.take(SENSITIVITY_SAMPLES))["rows"]}
    consumer = _first_consumers(fp32_bytes)
    out = []
    for g in groups:
        # dynamic quantization replaces a MatMul by integer ops under other names: its error is
        # read at the output of the first node that consumes it (e.g. SkipLayerNormalization)
        r = rows.get(g.node) or rows.get(consumer.get(g.node))
        if r is None:
            continue
        entry = g.entry if g.entry in rows else consumer.get(g.entry)
        before = rows[entry]["rel_error"] if entry in rows and entry != consumer.get(g.node) else 0.0
        out.append({"node": g.node, "op_type": g.op_type, "added_error": max(0.0, r["rel_error"] - before),
                    "rel_error": r["rel_error"], "cosine": r["cosine"], "group": list(g.members)})
    out.sort(key=lambda d: -d["added_error"])
    return out


# Task-metric sensitivity re-measures the task metric once per layer group; above this many groups
# the output-error ranking (one batched run) is used instead and the report says so.
TASK_SENSITIVITY_MAX_GROUPS = 40


def task_sensitivity(qpass, groups: list[Group], metric_drop, l2_rows: list[dict]) -> list[dict]:
    """Per group: the task-metric drop (contract units: relative % for MSE, pt for mAP) when only
    that group is quantized and every other group stays in float (one requantize from the cached
    calibration + one evaluation each). Sorted, most harmful first; the output-error numbers of
    `sensitivity` ride along for the report. Regression and detection metrics react to
    quantization differently from output cosine (a detector's score map can move a lot without
    moving a box), so these rank by the metric that gates."""
    by_l2 = {r["node"]: r for r in l2_rows}
    members = {g.node: g.members for g in groups}
    out = []
    for g in groups:
        others = [m for n, ms in members.items() if n != g.node for m in ms if m not in g.members]
        res = qpass.requantize(others)
        if not res.notes.get("quantized_ops"):
            continue
        l2 = by_l2.get(g.node, {})
        out.append({"node": g.node, "op_type": g.op_type, "metric_drop": float(metric_drop(res.model)),
                    "added_error": l2.get("added_error", 0.0), "rel_error": l2.get("rel_error"),
                    "group": list(g.members)})
    out.sort(key=lambda d: -d["metric_drop"])
    return out

def _first_consumers(fp32_bytes: bytes) -> dict[str, str]:
    """node name -> name of the first node (topological order) that reads its first output."""
    import onnx

    proto = onnx.load_from_string(fp32_bytes)
    readers: dict[str, str] = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, n.name)
    return {n.name: readers[n.output[0]] for n in proto.graph.node if n.output and n.output[0] in readers}


def step_sizes(n: int) -> list[int]:
    """How many of the most sensitive layers each step keeps in float: 1, 2, 3, 4, then doubling
    (6, 8, 12, 16, 24, 32, ...) -- a fragile layer is found in the first steps, and error spread
    over many layers (depthwise nets) is still covered in a dozen re-measurements."""
    out, k = [], 1
    while k < n and len(out) < MAX_STEPS:
        out.append(k)
        k = k + 1 if k < 4 else (k * 3 // 2 if k & (k - 1) == 0 else k * 4 // 3)
    return out


def fallback(qpass, int8_bytes: bytes, groups_by_node: dict, ranked: list[dict], metric_drop, bound: float,
             latency_probe, progress=None) -> dict:
    """Greedy: keep the next most sensitive group in float until `metric_drop(model) <= bound`.

    `metric_drop(onnx_ir.Model) -> float` (contract units); `latency_probe(a, b) -> (ms_a, ms_b)`
    (interleaved). Returns {"steps": [...], "model": best-or-None, "exclude": [...], "drop": ...}."""
    import onnx_ir as ir

    steps, exclude, kept = [], [], []
    prev_bytes = int8_bytes
    best = None
    sizes = step_sizes(len(ranked))
    for i, k in enumerate(sizes):
        for row in ranked[len(kept):k]:
            kept.append(row["node"])
            exclude.extend(m for m in groups_by_node[row["node"]].members if m not in exclude)
        row = ranked[k - 1]
        if progress is not None:
            progress.debug(f"precision search: {k} most sensitive layer(s) in float (step {i + 1}/{len(sizes)})")
        res = qpass.requantize(exclude)
        if not res.notes.get("quantized_ops"):
            break                       # everything is float now: that is the fp32 candidate, not a mixed one
        drop = metric_drop(res.model)
        cur_bytes = ir.to_proto(res.model).SerializeToString()
        step = {
            "step": i + 1,
            "float_layers": k,
            "node": row["node"],
            "op_type": row["op_type"],
            "float_nodes": len(kept),
            "metric_drop": drop,
            "quantized_ops": res.notes.get("quantized_ops"),
        }
        ms_prev, ms_cur = latency_probe(prev_bytes, cur_bytes)
        step["latency_cost_ms"] = ms_cur - ms_prev
        steps.append(step)
        prev_bytes = cur_bytes
        if best is None or drop < best["drop"]:
            best = {"drop": drop, "model": res.model, "exclude": list(exclude), "kept": list(kept),
                    "notes": res.notes}
        if drop <= bound:
            return {"steps": steps, "found": True, **best}
    return {"steps": steps, "found": False, **(best or {"model": None, "exclude": [], "kept": [], "drop": None})}


# The search's result by calibration + bound + evaluation data: an `auto` build's backend candidates
# quantize the same graph from the same calibration and score it with the same ORT evaluator, so the
# layers to keep in float are the same for each; the search (a minute or more on MobileNetV2) runs once.
SEARCHES: dict[tuple, dict] = {}


def search_once(qpass, bound: float, evaluation, run) -> dict:
    """`run()` (precision._search), or the result an earlier candidate's identical search found."""
    import onnx
    import onnx_ir as ir

    key = None if qpass._key is None or evaluation is None else (
        qpass._key, float(bound), evaluation.sha256(), tuple(sorted(qpass.exclude)))
    hit = SEARCHES.get(key) if key is not None else None
    if hit is not None:
        report = {**hit["report"], "reused": "the same search of another backend candidate of this build"}
        model = None if hit["model"] is None else ir.from_proto(onnx.load_from_string(hit["model"]))
        return {**hit, "report": report, "model": model}
    found = run()
    if key is not None:
        from edgecompile.passes.calibration_cache import remember

        model = found["model"]
        remember(key, {**found, "model": None if model is None else ir.to_proto(model).SerializeToString()},
                 SEARCHES)
    return found
