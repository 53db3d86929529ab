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
        "passes": [r.to_dict() for r in records],
        "data": manifest["data"],
        "machine": manifest["measured_on"],
        "toolchain": manifest["toolchain"],
        "build_seconds": build_seconds,
        "steps_seconds": dict(progress.timings),
        "warnings": list(progress.warnings),
        "skipped": measured.get("skipped"),
    }


def render_json(report: dict) -> str:
    from edgecompile.bundle import _json_default

    return json.dumps(report, indent=2, default=_json_default) + "\n"


# The one place that maps a report format to its renderer (report.json dict -> text). `build` writes
# `report.<fmt>` for each configured format; `edgecompile report --format` prints one of them.
RENDERERS = {
    "json": render_json,
    "md": lambda report: render_md(report),
}


def formats() -> list[str]:
    return list(RENDERERS)


def check_formats(requested) -> None:
    from edgecompile.errors import ConfigError

    unknown = [f for f in requested if f not in RENDERERS]
    if unknown:
        raise ConfigError(f"config key 'report.formats' has invalid value(s) {unknown}",
                          hint=f"allowed values: {', '.join(RENDERERS)}")


def render(report: dict, fmt: str) -> str:
    check_formats([fmt])
    return RENDERERS[fmt](report)


def write_reports(writer, report: dict, formats) -> None:
    """report.json always (the source of every other format), then the other configured formats."""
    check_formats(formats)
    for fmt in ["json", *(f for f in formats if f != "json")]:
        writer.write_derived(f"report.{fmt}", render(report, fmt))


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


def load_report(bundle_dir: str | Path) -> dict:
    return json.loads((Path(bundle_dir) / "report.json").read_text())
