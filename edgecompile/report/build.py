"""report.json: what a build measured, assembled once; written with its Markdown and HTML renderings."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from edgecompile.report.markdown import render_md

REPORT_SCHEMA_VERSION = 1


def build_report(plan, manifest: dict, measured: dict, records, parity, precision_notes: dict, progress,
                 build_seconds: float, bundle_dir=None) -> dict:
    from edgecompile.report.sections import bundle_size_by_op

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
        "adapter": manifest["model"].get("adapter"),
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
    from edgecompile.compiler.writer import write_json

    write_json(writer.staging / "report.json", report)
    if "md" in formats:
        writer.write_derived("report.md", render_md(report, writer.staging))
    if "html" in formats:
        from edgecompile.report.html import render_html   # numpy + SVG: only when asked for

        writer.write_derived("report.html", render_html(report, writer.staging))


def load_report(bundle_dir: str | Path) -> dict:
    from edgecompile.runtime.bundle import read_json
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
