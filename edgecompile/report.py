"""report.json (machine-readable) and report.md (for people), derived files beside the manifest."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

REPORT_SCHEMA_VERSION = 1


def build_report(plan, manifest: dict, measured: dict, records, parity, precision_notes: dict, progress,
                 build_seconds: float, bundle_dir=None) -> dict:
    from edgecompile.report_sections import bundle_size_by_op

    acc = measured.get("accuracy")
    lat = measured.get("latency")
    cold = measured.get("cold_start", {})
    size = sum(a["size"] for a in manifest["artifacts"].values())
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "bundle_id": manifest["bundle_id"],
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": manifest["model"]["name"],
        "model_kind": manifest["model"]["kind"],
        "target": manifest["target"],
        "backend": manifest["backend"],
        "precision": manifest["precision"],
        "requested_precision": manifest["requested_precision"],
        "precision_notes": precision_notes,
        "accuracy": acc.to_dict() if acc is not None else None,
        "latency_ms": lat,
        "cold_start_ms": cold.get("cold_start_ms"),
        "cold_start": cold or None,
        "peak_rss_mb": cold.get("peak_rss_mb"),
        "size_bytes": size,
        "artifacts": {k: {"size": v["size"], "role": v["role"]} for k, v in manifest["artifacts"].items()},
        "artifact_status": manifest.get("artifact_status"),
        "execution": (manifest.get("backend_options") or {}).get("execution"),
        "export": parity,
        "quantization": quantization_section(precision_notes, acc),
        "passes": [r.to_dict() for r in records],
        "data": manifest["data"],
        "machine": manifest["measured_on"],
        "toolchain": manifest["toolchain"],
        "build_seconds": build_seconds,
        "steps_seconds": dict(progress.timings),
        "warnings": list(progress.warnings),
        "skipped": measured.get("skipped"),
        "size_by_op": bundle_size_by_op(bundle_dir, manifest["artifacts"]) if bundle_dir is not None else None,
        "backend_choice": manifest.get("autochoice"),
        "candidates": _choice_rows(manifest.get("autochoice")),
        "pruning": _module_pass_steps(records, "prune", "pruning"),
        "distillation": _module_pass_steps(records, "distill", "distillation"),
    }


def _choice_rows(choice: dict | None) -> list[dict] | None:
    """`--backend auto`'s candidate table as flat rows (the shared "Candidates tried" section)."""
    if not choice:
        return None

    def num(v, spec):
        return "" if v is None else format(v, spec)

    rows = [{"backend": c["backend"], "precision": c["precision"], "p50 (ms)": num(c["p50_ms"], ".3f"),
             "p99 (ms)": num(c["p99_ms"], ".3f"),
             "speedup vs ort fp32": num(c["speedup_vs_ort_fp32"], ".2f") + ("x" if c["speedup_vs_ort_fp32"] else ""),
             "accuracy delta": num(c["accuracy_delta"], "+.4f"), "status": c["status"], "why": c["reason"]}
            for c in choice["candidates"]]
    rows += [{"backend": name, "status": "not a candidate", "why": why}
             for name, why in (choice.get("excluded_backends") or {}).items()]
    return rows



def _module_pass_steps(records, name: str, key: str) -> dict | None:
    """A module pass's per-step measurements (params, FLOPs, size, latency, metric), if it ran."""
    for r in records:
        if r.name == name and isinstance(r.notes.get(key), dict):
            return r.notes[key]
    return None


def quantization_section(precision_notes: dict, acc) -> dict | None:
    """precision.py's INT8 summary plus the bundle's task-metric delta (None when not quantizing)."""
    quant = (precision_notes or {}).get("quantization")
    if not quant:
        return None
    quant = dict(quant)
    if acc is not None:
        quant["accuracy_delta"] = acc.delta
        quant["accuracy_metric"] = acc.metric
    return quant


def write_reports(writer, report: dict, formats) -> None:
    from edgecompile.bundle import write_json

    write_json(writer.staging / "report.json", report)
    if "md" in formats:
        writer.write_derived("report.md", render_md(report, writer.staging))
    if "html" in formats:
        from edgecompile.report_html import render_html

        writer.write_derived("report.html", render_html(report, writer.staging))


def _fmt(v, spec=".4f", none="n/a"):
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """Label/value pairs shared by the CLI table and report.md."""
    acc, lat = report.get("accuracy"), report.get("latency_ms")
    rows = [
        ("model", report["model"]),
        ("target / backend", f"{report['target']} / {report['backend']}"),
        ("precision", report["precision"] + ("" if report["precision"] == report["requested_precision"]
                                             else f" (requested {report['requested_precision']})")),
    ]
    if acc:
        pct = acc["kind"] == "percentage"
        f = (lambda x: f"{100 * x:.2f} %") if pct else (lambda x: f"{x:.6g}")
        rows += [
            (f"accuracy ({acc['metric']})", f"{f(acc['candidate'])}  [95% CI {f(acc['ci95'][0])} .. {f(acc['ci95'][1])}], n={acc['n']}"),
            ("reference", f"{f(acc['reference'])} ({acc['reference_model']})"),
            ("delta", f"{100 * acc['delta']:+.2f} pt" if pct else f"{acc['delta']:+.6g}"),
            ("output cosine", _fmt(acc["similarity"]["cosine"], ".6f")),
        ]
        ag = acc.get("agreement")
        if ag:
            conf = ag["confident_agreement"]
            rows.append(("agreement with reference",
                         f"top-1 {100 * ag['top1_agreement']:.2f} %, confident (p>={ag['confident_threshold']:g}, "
                         f"n={ag['confident_samples']}) " + ("n/a" if conf is None else f"{100 * conf:.2f} %")
                         + f", top-5 containment {100 * ag['top5_containment']:.2f} %, mean KL {ag['mean_kl']:.4f}"))
    else:
        rows.append(("accuracy", "not measured (no evaluation data)" if not report.get("skipped") else report["skipped"]))
    if lat:
        rows += [("latency p50/p90/p99", f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} ms "
                                         f"(batch {lat['batch']}, {lat['runs']} runs, {lat['threads']} threads)")]
    if report.get("cold_start_ms") is not None:
        rows.append(("cold start", f"{report['cold_start_ms']:.1f} ms (load + first inference)"))
    if report.get("peak_rss_mb") is not None:
        rows.append(("peak RSS", f"{report['peak_rss_mb']:.1f} MB (runtime process)"))
    choice = report.get("backend_choice")
    if choice:
        n = sum(1 for c in choice["candidates"] if c["p50_ms"] is not None)
        rows.append(("backend choice", f"auto: {choice['chosen']['backend']} {choice['chosen']['precision']}, "
                                       f"{choice['chosen']['reason']} ({n} measured here, bound "
                                       f"{choice['bound']:g} {choice['bound_units']}; see candidates)"))
        for note in choice.get("fit_notes") or []:
            rows.append(("backend note", note))
    if report.get("pruning"):
        pr = report["pruning"]
        rows.append(("pruning", f"{pr['ratio']:.0%} of channels: params {pr['params_ratio']:.2f}x, "
                                f"FLOPs {pr['flops_ratio']:.2f}x"))
    for name, st in (report.get("artifact_status") or {}).items():
        rows.append((name, f"{st['state']}: {st['why']}"))
    for where, what in (report.get("execution") or {}).items():
        if what:
            rows.append((f"runs on {where.replace('_', ' ')}", what))
    rows.append(("size", f"{report['size_bytes'] / 1024:.1f} KiB"))
    cpu = report["machine"]["cpu"]
    rows.append(("measured on", f"{cpu['model']} ({cpu['cores']} cores)"))
    rows.append(("build time", f"{report['build_seconds']:.1f} s"))
    cache = report.get("cache")
    if cache and cache.get("bundle") == "hit":
        rows.append(("build cache", f"hit (bundle {report['bundle_id'][:12]}, first built in "
                                    f"{cache.get('original_build_seconds', 0):.1f} s)"))
    elif cache:
        rows.append(("build cache", f"bundle {cache.get('bundle')}, export {cache.get('export') or 'n/a'}"))
    return rows


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
    from edgecompile.report_sections import sections

    lines = [f"# EdgeCompile report: {report['model']} -> {report['target']} ({report['backend']}, {report['precision']})",
             "", f"bundle `{report['bundle_id'][:16]}`, built {report['created_at']}", ""]
    for sec in sections(report, bundle_dir):
        if sec.id == "warnings" and not sec.ok:
            continue
        lines += [f"## {sec.title}", ""]
        if not sec.ok:
            lines += [f"_{sec.status}_", ""]
            continue
        lines += _MD[sec.id](sec.data, report) + [""]
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
    lines = [f"p50 {data['p50']:.3f} ms, p90 {data['p90']:.3f} ms, p99 {data['p99']:.3f} ms, mean {data['mean']:.3f} ms "
             f"over {data['runs']} runs (batch {data['batch']}, {data['threads']} threads; {len(ms)} samples kept)", ""]
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


_MD = {"summary": _md_summary, "quantization": _md_quantization, "fp16": _md_quantization, "warnings": _md_warnings, "accuracy": _md_accuracy, "latency": _md_latency,
       "size": _md_size, "per_layer": _md_rows, "float_nodes": _md_rows, "candidates": _md_rows, "sensitivity": _md_rows,
       "passes": _md_passes, "pruning": _md_rows, "distillation": _md_rows, "precision_notes": _md_kv, "export": _md_export, "artifacts": _md_artifacts,
       "environment": _md_environment}


def load_report(bundle_dir: str | Path) -> dict:
    from edgecompile.bundle import read_json
    from edgecompile.errors import BundleError

    path = Path(bundle_dir) / "report.json"
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no report.json" + ("" if (Path(bundle_dir) / "manifest.json").is_file()
                                                            else " (not a bundle directory)"),
                          hint="build the bundle with `edgecompile build MODEL -o DIR`")
    report = read_json(path, "report", hint="report.json is derived: rebuild the bundle to regenerate it")
    if not isinstance(report, dict) or "model" not in report or "precision" not in report:
        raise BundleError(f"{path}: not an EdgeCompile report", hint="rebuild the bundle to regenerate it")
    return report
