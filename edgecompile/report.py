"""report.json (machine-readable) and report.md (for people), derived files beside the manifest."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

REPORT_SCHEMA_VERSION = 1


def build_report(plan, manifest: dict, measured: dict, records, parity, precision_notes: dict, progress,
                 build_seconds: float) -> dict:
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
    }


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
        writer.write_derived("report.md", render_md(report))


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
    else:
        rows.append(("accuracy", "not measured (no evaluation data)" if not report.get("skipped") else report["skipped"]))
    if lat:
        rows += [("latency p50/p90/p99", f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} ms "
                                         f"(batch {lat['batch']}, {lat['runs']} runs, {lat['threads']} threads)")]
    if report.get("cold_start_ms") is not None:
        rows.append(("cold start", f"{report['cold_start_ms']:.1f} ms (load + first inference)"))
    if report.get("peak_rss_mb") is not None:
        rows.append(("peak RSS", f"{report['peak_rss_mb']:.1f} MB (runtime process)"))
    rows.append(("size", f"{report['size_bytes'] / 1024:.1f} KiB"))
    cpu = report["machine"]["cpu"]
    rows.append(("measured on", f"{cpu['model']} ({cpu['cores']} cores)"))
    rows.append(("build time", f"{report['build_seconds']:.1f} s"))
    return rows


def render_table(report: dict) -> str:
    rows = summary_rows(report)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def render_md(report: dict) -> str:
    lines = [f"# EdgeCompile report: {report['model']} -> {report['target']} ({report['backend']}, {report['precision']})",
             "", f"bundle `{report['bundle_id'][:16]}`, built {report['created_at']}", ""]
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in report["warnings"]] + [""]
    lines += ["## Summary", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(report)]
    if report.get("passes"):
        lines += ["", "## Passes", "", "| pass | kind | time (s) | nodes | size (KiB) | metric delta | notes |",
                  "|---|---|---|---|---|---|---|"]
        for p in report["passes"]:
            nodes = f"{p['nodes_before']} -> {p['nodes_after']}" if p.get("nodes_before") is not None else ""
            size = (f"{p['size_before'] / 1024:.1f} -> {p['size_after'] / 1024:.1f}"
                    if p.get("size_before") is not None else "")
            delta = f"{p['metric_delta']:+.4f}" if p.get("metric_delta") is not None else ""
            notes = "; ".join(f"{k}: {v}" for k, v in (p.get("notes") or {}).items())
            lines.append(f"| {p['name']} | {p['kind']} | {p['seconds']:.2f} | {nodes} | {size} | {delta} | {notes} |")
    if report.get("quantization"):
        lines += ["", "## Quantization", ""] + _quant_md(report["quantization"])
    if report.get("export"):
        lines += ["", "## Export parity (ONNX vs torch)", "", "| output | cosine | max-abs | agreement |", "|---|---|---|---|"]
        for name, s in report["export"]["outputs"].items():
            lines.append(f"| {name} | {s['cosine']:.6f} | {s['max_abs']:.3g} | {_fmt(s.get('agreement'), '.4f')} |")
    lines += ["", "## Artifacts", "", "| file | role | bytes |", "|---|---|---|"]
    lines += [f"| {k} | {v['role']} | {v['size']} |" for k, v in report["artifacts"].items()]
    cpu = report["machine"]["cpu"]
    lines += ["", "## Environment", "", f"- CPU: {cpu['model']} ({cpu['arch']}, {cpu['cores']} cores)",
              f"- CPU flags: {' '.join(cpu['flags']) or 'none detected'}",
              "- toolchain: " + ", ".join(f"{k} {v}" for k, v in report["toolchain"].items()), ""]
    return "\n".join(lines)


def _quant_md(q: dict) -> list[str]:
    if q.get("nothing_to_quantize"):
        return [f"Nothing to quantize ({q.get('mode')} mode): {q['nothing_to_quantize']}"]
    rows = [("mode / preset", f"{q.get('mode')} / {q.get('preset')}")]
    if q.get("activations"):
        rows.append(("types", f"activations {q['activations']}{' symmetric' if q.get('symmetric_activations') else ''}, "
                              f"weights {q['weights']} {'per-channel' if q.get('per_channel') else 'per-tensor'}"))
    cal = q.get("calibration")
    if cal:
        extra = f" (p{cal['percentile']:g})" if cal.get("percentile") else ""
        rows.append(("calibration", f"{cal['method']}{extra}, {cal['samples']} samples of {cal['data']}"))
    if q.get("quantized_ops") is not None:
        rows.append(("quantized ops", str(q["quantized_ops"])))
    if q.get("size_ratio") is not None:
        sb = q["size_bytes"]
        rows.append(("size int8 / fp32", f"{q['size_ratio']:.3f} ({sb['int8'] / 1024:.1f} / {sb['fp32'] / 1024:.1f} KiB)"))
    lat = q.get("latency")
    if lat:
        rows.append(("speedup vs fp32", f"{lat['speedup']:.2f}x ({lat['int8_ms']:.4f} vs {lat['fp32_ms']:.4f} ms, "
                                        f"batch {lat['batch']}, {lat['measured_with']})"))
    if q.get("accuracy_delta") is not None:
        rows.append((f"accuracy delta ({q['accuracy_metric']})", f"{q['accuracy_delta']:+.4f}"))
    if q.get("output_cosine") is not None:
        rows.append(("output cosine vs fp32 graph", f"{q['output_cosine']:.6f}"))
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def load_report(bundle_dir: str | Path) -> dict:
    return json.loads((Path(bundle_dir) / "report.json").read_text())
