"""report.md: the section model (edgecompile.report.sections) rendered as Markdown, and the CLI table."""
from __future__ import annotations

from edgecompile.report.generation import render_generation_md
from edgecompile.report.sections import sections
from edgecompile.report.summary import _fmt, summary_rows
from edgecompile.report.tasks import MD as TASK_MD


def render_table(report: dict) -> str:
    rows = summary_rows(report)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    """A Markdown table of flat dicts (columns: union of keys in order of appearance)."""
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return lines


def render_md(report: dict, bundle_dir=None) -> str:
    """report.md: the same sections as report.html and `report --format json`, as text."""
    if report.get("generation"):         # decoder bundles have their own (short) report
        return render_generation_md(report)
    lines = [
        f"# EdgeCompile report: {report['model']} -> {report['target']} ({report['backend']}, {report['precision']})",
        "",
        f"bundle `{report['bundle_id'][:16]}`, built {report['created_at']}",
        "",
    ]
    for sec in sections(report, bundle_dir):
        if sec.id == "warnings" and not sec.ok:
            continue
        lines += [f"## {sec.title}", ""]
        if not sec.ok:
            lines += [f"_{sec.status}_", ""]
            continue
        lines += (_MD.get(sec.id) or TASK_MD[sec.id])(sec.data, report) + [""]
    return "\n".join(lines)


def _md_summary(data, report):
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in data]


def _md_warnings(data, report):
    return [f"- **{w}**" for w in data]


def _md_accuracy(data, report):
    pct = data.get("kind") == "percentage"
    f = (lambda x: f"{100 * x:.2f} %") if pct else (lambda x: f"{x:.6g}")
    d = (lambda x: f"{100 * x:+.2f} pt") if pct else (lambda x: f"{x:+.6g}")
    rows = [{"step": s["label"], data["metric"] or "metric": f(s["value"]),
             "change": "" if s.get("delta") is None else d(s["delta"])} for s in data["steps"]]
    return md_table(rows)


def _md_latency(data, report):
    import numpy as np

    ms = np.asarray(data["samples"])
    edges = np.quantile(ms, [0, 0.5, 0.9, 0.99, 1.0])
    lines = [
        f"p50 {data['p50']:.3f} ms, p90 {data['p90']:.3f} ms, p99 {data['p99']:.3f} ms, mean {data['mean']:.3f} ms "
        f"over {data['runs']} runs (batch {data['batch']}, {data['threads']} threads; {len(ms)} samples kept)",
        "",
    ]
    labels = ["fastest half (min..p50)", "p50..p90", "p90..p99", "slowest 1 % (p99..max)"]
    rows = [{"range": lab, "from (ms)": f"{lo:.4f}", "to (ms)": f"{hi:.4f}",
             "samples": int(np.sum((ms >= lo) & (ms <= hi)))} for lab, lo, hi in zip(labels, edges[:-1], edges[1:])]
    return lines + md_table(rows)


def _md_size(data, report):
    total = data["file_bytes"]
    rows = [{"op type": r["op_type"], "nodes": r["nodes"], "params": r["params"], "KiB": f"{r['bytes'] / 1024:.1f}",
             "share": f"{100 * r['bytes'] / max(total, 1):.1f} %"} for r in data["rows"]]
    return [f"{data['file']}: {total / 1024:.1f} KiB", ""] + md_table(rows)


def _md_rows(data, report):
    rows = data["rows"] if isinstance(data, dict) else data
    return md_table(rows)


def _md_passes(data, report):
    rows = []
    for p in data:
        rows.append({
            "pass": p["name"], "kind": p["kind"], "time (s)": f"{p['seconds']:.2f}",
            "nodes": f"{p['nodes_before']} -> {p['nodes_after']}" if p.get("nodes_before") is not None else "",
            "size (KiB)": (f"{p['size_before'] / 1024:.1f} -> {p['size_after'] / 1024:.1f}"
                           if p.get("size_before") is not None else ""),
            "metric delta": f"{p['metric_delta']:+.4f}" if p.get("metric_delta") is not None else "",
            "notes": "; ".join(f"{k}: {v}" for k, v in (p.get("notes") or {}).items()
                               if not isinstance(v, (list, dict))),
        })
    return md_table(rows)


def _md_kv(data, report):
    return [f"- {k}: {v}" for k, v in data.items()]


def _md_export(data, report):
    rows = [{"output": name, "cosine": f"{s['cosine']:.6f}", "max-abs": f"{s['max_abs']:.3g}",
             "agreement": _fmt(s.get("agreement"), ".4f")} for name, s in data["outputs"].items()]
    return [f"on {data['n']} samples", ""] + md_table(rows)


def _md_artifacts(data, report):
    return md_table([{"file": k, "role": v["role"], "bytes": v["size"]} for k, v in data.items()])


def _md_environment(data, report):
    cpu = (data.get("machine") or {}).get("cpu") or {}
    lines = [f"- CPU: {cpu.get('model')} ({cpu.get('arch')}, {cpu.get('cores')} cores)",
             f"- CPU flags: {' '.join(cpu.get('flags') or []) or 'none detected'}"]
    lines += [f"- {k} {v}" for k, v in (data.get("toolchain") or {}).items()]
    if data.get("steps_seconds"):
        lines.append("- build steps: " + ", ".join(f"{k} {v:.2f} s" for k, v in data["steps_seconds"].items()))
    return lines


def _md_quantization(rows, report):
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


_MD = {
    "summary": _md_summary,
    "quantization": _md_quantization,
    "fp16": _md_quantization,
    "warnings": _md_warnings,
    "accuracy": _md_accuracy,
    "latency": _md_latency,
    "size": _md_size,
    "per_layer": _md_rows,
    "float_nodes": _md_rows,
    "candidates": _md_rows,
    "sensitivity": _md_rows,
    "passes": _md_passes,
    "pruning": _md_rows,
    "distillation": _md_rows,
    "precision_notes": _md_kv,
    "export": _md_export,
    "artifacts": _md_artifacts,
    "environment": _md_environment,
}
