"""The report's sections, derived from report.json: one list that the Markdown, HTML and JSON
renderings all walk, so the three formats always carry the same sections.

Each section is `Section(id, title, status, data)`; status is "ok" or a sentence saying why the
section is not applicable to this bundle (e.g. "not applicable: fp32 bundle, nothing quantized").

Optional inputs other passes may record (all lists of flat dicts; extra keys are shown as columns):
* per-layer quantization error: `report["per_layer"]`, `report["quantization"]["per_layer"]`,
  `report["sensitivity"]`, or a pass's notes under `per_layer` / `sensitivity`;
  each entry names its node (`node`, `name` or `layer`) and has numeric error columns;
* nodes kept in float: `report["float_nodes"]`, `precision_notes["float_nodes"]` or
  `precision_notes["excluded_nodes"]`, or a pass's notes under `float_nodes` / `excluded_nodes`;
  entries are dicts (`node`, `op_type`, `reason`, ...) or plain node names;
* candidates tried: `report["candidates"]` or `precision_notes["candidates"]` (dicts).
"""
from __future__ import annotations

from pathlib import Path

from edgecompile.report.model import OK, Section
from edgecompile.report.summary import summary_rows
from edgecompile.report.tasks import task_sections



# -- size by op type ------------------------------------------------------------------------------

_PASS_THROUGH = {"DequantizeLinear", "QuantizeLinear", "Cast", "Transpose", "Reshape", "Identity"}


def size_by_op(onnx_path: str | Path) -> dict:
    """Bytes of the ONNX file attributed to op types: each initializer counts for the op consuming it
    (through DequantizeLinear/Cast/...), the remainder is graph structure and metadata."""
    import onnx

    path = Path(onnx_path)
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    consumers: dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes_per_op: dict[str, int] = {}
    for node in g.node:
        nodes_per_op[node.op_type] = nodes_per_op.get(node.op_type, 0) + 1

    def owner(tensor: str, depth: int = 0) -> str:
        users = consumers.get(tensor, [])
        if not users:
            return "(unused)"
        node = users[0]
        if node.op_type in _PASS_THROUGH and depth < 4 and node.output:
            nxt = owner(node.output[0], depth + 1)
            return node.op_type if nxt == "(unused)" else nxt
        return node.op_type

    bytes_per_op: dict[str, int] = {}
    params_per_op: dict[str, int] = {}
    total_init = 0
    for init in g.initializer:
        op = owner(init.name)
        size = init.ByteSize()
        n = 1
        for d in init.dims:
            n *= d
        bytes_per_op[op] = bytes_per_op.get(op, 0) + size
        params_per_op[op] = params_per_op.get(op, 0) + n
        total_init += size
    file_size = path.stat().st_size
    rows = [{"op_type": op, "nodes": nodes_per_op.get(op, 0), "params": params_per_op.get(op, 0), "bytes": b}
            for op, b in bytes_per_op.items()]
    rows += [{"op_type": op, "nodes": n, "params": 0, "bytes": 0} for op, n in nodes_per_op.items()
             if op not in bytes_per_op]
    rows.sort(key=lambda r: (-r["bytes"], -r["nodes"], r["op_type"]))
    rows.append({"op_type": "(graph structure, metadata)", "nodes": 0, "params": 0,
                 "bytes": max(file_size - total_init, 0)})
    return {"file": path.name, "file_bytes": file_size, "rows": rows}


def bundle_size_by_op(bundle_dir: str | Path, artifacts: dict) -> dict | None:
    """size_by_op of the bundle's ONNX artifact, if it has one (None for .so / IR / engine bundles)."""
    onnx_files = sorted(rel for rel in artifacts if rel.endswith(".onnx"))
    onnx_files.sort(key=lambda rel: artifacts[rel].get("role") != "model")
    if not onnx_files:
        return None
    try:
        return size_by_op(Path(bundle_dir) / onnx_files[0])
    except Exception:          # an unreadable artifact must not break the report; the bundle's verify says why
        return None


# -- looking up optional records ------------------------------------------------------------------

def _from_passes(report: dict, keys: tuple[str, ...]):
    for p in report.get("passes") or []:
        notes = p.get("notes") or {}
        for k in keys:
            if notes.get(k):
                return notes[k], p.get("name")
    return None, None


def _first(*values):
    for v in values:
        if v:
            return v
    return None


def _rows(value) -> list[dict]:
    if isinstance(value, dict):     # {node: value-or-dict}
        return [{"node": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in value.items()]
    return [v if isinstance(v, dict) else {"node": str(v)} for v in (value or [])]


def per_layer(report: dict) -> list[dict] | None:
    q = report.get("quantization") if isinstance(report.get("quantization"), dict) else {}
    found = _first(report.get("per_layer"), q.get("per_layer"), report.get("sensitivity"), q.get("sensitivity"))
    if not found:
        found, _ = _from_passes(report, ("per_layer", "sensitivity"))
    return _rows(found) if found else None


def float_nodes(report: dict) -> list[dict] | None:
    notes = report.get("precision_notes") or {}
    found = _first(report.get("float_nodes"), notes.get("float_nodes"), notes.get("excluded_nodes"))
    if not found:
        found, _ = _from_passes(report, ("float_nodes", "excluded_nodes", "nodes_to_exclude"))
    return _rows(found) if found else None


def candidates(report: dict) -> list[dict] | None:
    notes = report.get("precision_notes") or {}
    found = _first(report.get("candidates"), notes.get("candidates"))
    return _rows(found) if found else None


def waterfall(report: dict) -> list[dict]:
    """Steps from the FP32 reference through every pass that measured the metric to the bundle."""
    acc = report.get("accuracy")
    steps: list[dict] = []
    if acc:
        steps.append({"label": f"reference ({acc.get('reference_model', 'fp32')})", "value": acc["reference"],
                      "kind": "total"})
    for p in report.get("passes") or []:
        if p.get("metric_after") is None:
            continue
        if not steps and p.get("metric_before") is not None:
            steps.append({"label": "fp32 graph", "value": p["metric_before"], "kind": "total"})
        prev = steps[-1]["value"] if steps else p.get("metric_before")
        steps.append({"label": p["name"], "value": p["metric_after"],
                      "delta": None if prev is None else p["metric_after"] - prev, "kind": "step"})
    if acc:
        steps.append({"label": f"bundle ({report.get('precision', '?')}, measured)", "value": acc["candidate"],
                      "delta": acc["candidate"] - steps[-1]["value"], "kind": "total"})
    return steps


def numeric_column(rows: list[dict]) -> str | None:
    """The column a per-layer chart plots: an error-like number, preferring well-known names."""
    preferred = ("rel_error", "error", "mse", "metric_drop", "drop", "sensitivity", "delta", "max_abs", "value")
    keys = [k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for k in preferred:
        if k in keys:
            return k
    errorish = [k for k in keys if not any(t in k for t in ("cos", "snr", "agree", "index", "count"))]
    if errorish:
        return errorish[0]
    return next((k for k in keys if "cos" in k), None)      # plotted as 1 - cosine


def label_of(row: dict) -> str:
    return str(row.get("node") or row.get("name") or row.get("layer") or row.get("precision") or "?")


def quantization_rows(q: dict) -> list[list[str]]:
    """The report's `quantization` record (precision.py) as label/value rows."""
    if q.get("nothing_to_quantize"):
        return [["result", f"nothing to quantize ({q.get('mode')} mode): {q['nothing_to_quantize']}"]]
    rows = [["mode / preset", f"{q.get('mode')} / {q.get('preset')}"]]
    if q.get("activations"):
        rows.append(
            [
                "types",
                f"activations {q['activations']}{' symmetric' if q.get('symmetric_activations') else ''}, "
                f"weights {q['weights']} {'per-channel' if q.get('per_channel') else 'per-tensor'}",
            ]
        )
    cal = q.get("calibration")
    if cal:
        extra = f" (p{cal['percentile']:g})" if cal.get("percentile") else ""
        rows.append(["calibration", f"{cal['method']}{extra}, {cal['samples']} samples of {cal['data']}"])
    if q.get("quantized_ops") is not None:
        rows.append(["quantized ops", str(q["quantized_ops"])])
    if q.get("size_ratio") is not None:
        sb = q["size_bytes"]
        rows.append(
            ["size int8 / fp32", f"{q['size_ratio']:.3f} ({sb['int8'] / 1024:.1f} / {sb['fp32'] / 1024:.1f} KiB)"]
        )
    lat = q.get("latency")
    if lat:
        rows.append(["speedup vs fp32", f"{lat['speedup']:.2f}x ({lat['int8_ms']:.4f} vs {lat['fp32_ms']:.4f} ms, "
                                        f"batch {lat['batch']}, {lat['measured_with']})"])
    if q.get("accuracy_delta") is not None:
        rows.append([f"accuracy delta ({q['accuracy_metric']})", f"{q['accuracy_delta']:+.4f}"])
    if q.get("output_cosine") is not None:
        rows.append(["output cosine vs fp32 graph", f"{q['output_cosine']:.6f}"])
    rows.extend(qat_rows(q.get("qat"), q.get("epochs")))
    return rows


def qat_rows(c: dict | None, epochs) -> list[list[str]]:
    """QAT (issue 7): the task metric of the FP32, PTQ-initialised and QAT-trained module side by side."""
    if not c:
        return []
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"      # noqa: E731
    return [[f"{c['metric']} fp32 / ptq / qat",
             f"{fmt(c.get('fp32'))} / {fmt(c.get('ptq'))} / {fmt(c.get('qat'))} "
             f"({c.get('measured_with')} on {c.get('data')}, {epochs} QAT epochs)"]]


def fp16_rows(h: dict) -> list[list[str]]:
    """The report's FP16 record (precision.fp16, issue 7) as label/value rows."""
    sb = h["size_bytes"]
    rows = [["size fp16 / fp32", f"{h['size_ratio']:.3f} ({sb['fp16'] / 1024:.1f} / {sb['fp32'] / 1024:.1f} KiB)"],
            ["graph I/O", h.get("io_types") or "?"],
            ["ops kept in fp32", ", ".join(h.get("fp32_nodes") or []) or "none"]]
    if h.get("metric_delta") is not None:
        rows.append(["metric fp32 graph -> fp16 graph",
                     f"{h['metric_fp32_graph']:.4f} -> {h['metric_fp16_graph']:.4f} ({h['metric_delta']:+.4f})"])
    if h.get("output_cosine") is not None:
        rows.append(["output cosine vs fp32 graph", f"{h['output_cosine']:.6f}"])
    if h.get("clipped_weights"):
        rows.append(["weights clipped to the fp16 range", str(h["clipped_weights"])])
    lat = h.get("latency")
    if lat:
        rows.append(["speedup vs fp32", f"{lat['speedup']:.2f}x ({lat['fp16_ms']:.4f} vs {lat['fp32_ms']:.4f} ms, "
                                        f"batch {lat['batch']}, {lat['measured_with']})"
                     + (" -- FP16 is slower on this backend" if lat["speedup"] < 0.9 else "")])
    return rows


# -- the list -------------------------------------------------------------------------------------

def sections(report: dict, bundle_dir: str | Path | None = None) -> list[Section]:
    fp32 = report.get("precision") == "fp32"
    out = [Section("summary", "Summary", OK, [list(r) for r in summary_rows(report)])]
    out.append(Section("warnings", "Warnings", OK if report.get("warnings") else "none", report.get("warnings") or []))

    steps = waterfall(report)
    out.append(Section("accuracy", "Accuracy through the passes", OK if steps else
                       "not applicable: accuracy was not measured (no evaluation data)",
                       {"metric": (report.get("accuracy") or {}).get("metric"),
                        "kind": (report.get("accuracy") or {}).get("kind"), "steps": steps}))

    lat = report.get("latency_ms")
    out.append(Section("latency", "Latency distribution", OK if lat and lat.get("samples") else
                       "not applicable: latency was not measured on this host" + (
                           f" ({report['skipped']})" if report.get("skipped") else ""),
                       {k: lat[k] for k in ("p50", "p90", "p99", "mean", "min", "runs", "batch", "threads", "samples")
                        if k in lat} if lat else None))

    sizes = report.get("size_by_op")
    if sizes is None and bundle_dir is not None:
        sizes = bundle_size_by_op(bundle_dir, report.get("artifacts") or {})
    out.append(Section("size", "Size by op type", OK if sizes else
                       "not applicable: the bundle has no ONNX artifact to break down", sizes))

    quant = report.get("quantization")
    out.append(Section("quantization", "Quantization", OK if quant else
                       "not applicable: no INT8 quantization was requested",
                       quantization_rows(quant) if quant else None))

    half = (report.get("precision_notes") or {}).get("fp16")
    out.append(Section("fp16", "FP16", OK if half else "not applicable: no FP16 conversion was requested",
                       fp16_rows(half) if half else None))

    layers = per_layer(report)
    out.append(Section("per_layer", "Per-layer quantization error", OK if layers else (
        "not applicable: fp32 bundle, nothing was quantized" if fp32 else
        "not applicable: the quantization pass recorded no per-layer data"),
        {"rows": layers, "column": numeric_column(layers)} if layers else None))

    fl = float_nodes(report)
    out.append(Section("float_nodes", "Nodes kept in float", OK if fl else (
        "not applicable: fp32 bundle, every node is float" if fp32 else "none: every quantizable node was quantized"),
        fl))

    search = (report.get("precision_notes") or {}).get("precision_search") or {}
    sens = search.get("sensitivity")
    out.append(Section("sensitivity", "Layer sensitivity (precision search)", OK if sens else
                       "not applicable: no accuracy-aware precision search ran", sens))

    cands = candidates(report)
    out.append(Section("candidates", "Candidates tried", OK if cands else
                       "not applicable: a single configuration was built (no precision/backend search)", cands))

    out.append(Section("passes", "Passes", OK if report.get("passes") else "no passes ran", report.get("passes") or []))
    if report.get("distillation"):
        dist = report["distillation"]      # torch students: per-step rows; HF layer-dropping: flat rows
        out.append(Section("distillation", "Distillation", OK, dist.get("rows") or module_pass_rows(dist)))
    if report.get("pruning"):
        out.append(Section("pruning", "Pruning", OK, module_pass_rows(report["pruning"])))
    out.extend(task_sections(report))        # regression scatter, detection boxes (issue 25)
    notes = report.get("precision_notes") or {}
    if notes:
        out.append(
            Section(
                "precision_notes",
                "Precision decision",
                OK,
                {
                    k: v
                    for k, v in notes.items()
                    if k not in ("candidates", "float_nodes", "excluded_nodes", "precision_search")
                },
            )
        )
    out.append(Section("export", "Export parity (ONNX vs torch)", OK if report.get("export") else
                       "not applicable: the source was an ONNX model", report.get("export")))
    out.append(Section("artifacts", "Artifacts", OK, report.get("artifacts") or {}))
    out.append(Section("environment", "Environment and toolchain", OK,
                       {"machine": report.get("machine"), "toolchain": report.get("toolchain"),
                        "build_seconds": report.get("build_seconds"), "steps_seconds": report.get("steps_seconds")}))
    return out


def module_pass_rows(data: dict) -> list[dict]:
    """The prune/distill passes' per-step torch measurements as flat table rows (latency: batch 1)."""
    metric = data.get("metric") or "metric"
    steps = data.get("steps") or []
    base = steps[0] if steps else {}
    rows = []
    for r in steps:
        row = {"step": r["stage"]}
        if "ratio" in r:
            row["channel ratio"] = f"{r['ratio']:.3f}"
        if "params" in r:
            rel = lambda k, r=r: "" if r is base or not base.get(k) else f" ({r[k] / base[k]:.2f}x)"
            row.update(
                {
                    "params": f"{r['params']}{rel('params')}",
                    "FLOPs": f"{r['flops']:.3g}{rel('flops')}",
                    "size (KiB)": f"{r['size_bytes'] / 1024:.1f}",
                    "torch latency (ms, 1 thread)": f"{r['latency_ms']:.3f}",
                }
            )
        row[metric] = "" if r.get("metric") is None else f"{r['metric']:.4f}"
        rows.append(row)
    return rows


def with_sections(report: dict, bundle_dir: str | Path | None = None) -> dict:
    """report.json plus every section's derived data (what `edgecompile report --format json` prints)."""
    secs = sections(report, bundle_dir)
    out = dict(report)
    size = next(s for s in secs if s.id == "size")
    if out.get("size_by_op") is None and size.ok:
        out["size_by_op"] = size.data
    out["sections"] = {s.id: s.to_dict() for s in secs}
    return out
