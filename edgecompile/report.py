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
        "pruning": _module_pass_steps(records, "prune", "pruning"),
        "distillation": _module_pass_steps(records, "distill", "distillation"),
    }


def _module_pass_steps(records, name: str, key: str) -> dict | None:
    """A module pass's per-step measurements (params, FLOPs, size, latency, metric), if it ran."""
    for r in records:
        if r.name == name and isinstance(r.notes.get(key), dict):
            return r.notes[key]
    return None


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
    if report.get("pruning"):
        pr = report["pruning"]
        rows.append(("pruning", f"{pr['ratio']:.0%} of channels: params {pr['params_ratio']:.2f}x, "
                                f"FLOPs {pr['flops_ratio']:.2f}x"))
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
            notes = "; ".join(f"{k}: {v}" for k, v in (p.get("notes") or {}).items() if not isinstance(v, (dict, list)))
            lines.append(f"| {p['name']} | {p['kind']} | {p['seconds']:.2f} | {nodes} | {size} | {delta} | {notes} |")
    if report.get("distillation"):
        lines += ["", *render_distillation_md(report["distillation"])]
    if report.get("pruning"):
        lines += ["", *render_pruning_md(report["pruning"])]
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


def render_pruning_md(pruning: dict) -> list[str]:
    """The per-step pruning table (torch measurements on the module, latency at batch 1)."""
    metric = pruning.get("metric")
    lines = ["## Pruning", "",
             f"importance {pruning['importance']}, {'global' if pruning['global'] else 'uniform'} ratio "
             f"{pruning['ratio']:.3f}, kept at full width: {', '.join(pruning['ignored_layers']) or 'none'}", "",
             f"| step | channel ratio | params | FLOPs | size (KiB) | torch latency (ms, batch 1) | {metric or 'metric'} |",
             "|---|---|---|---|---|---|---|"]
    base = pruning["steps"][0]
    for r in pruning["steps"]:
        rel = "" if r is base else f" ({r['params'] / base['params']:.2f}x)"
        frel = "" if r is base else f" ({r['flops'] / base['flops']:.2f}x)"
        lines.append(f"| {r['stage']} | {r['ratio']:.3f} | {r['params']}{rel} | {r['flops']:.3g}{frel} | "
                     f"{r['size_bytes'] / 1024:.1f} | {r['latency_ms']:.3f} | {_fmt(r.get('metric'))} |")
    return lines


def render_distillation_md(dist: dict) -> list[str]:
    metric = dist.get("metric")
    lines = ["## Distillation", "", f"teacher {dist['teacher']}, logit KD T={dist['temperature']:g}, alpha={dist['alpha']:g}"
             + (f", feature KD on {', '.join(dist['features'])}" if dist.get("features") else ""), "",
             f"| model | params | FLOPs | size (KiB) | torch latency (ms) | {metric or 'metric'} |", "|---|---|---|---|---|---|"]
    for r in dist["steps"]:
        if "params" not in r:
            lines.append(f"| {r['stage']} | | | | | |")
            continue
        lines.append(f"| {r['stage']} | {r['params']} | {r['flops']:.3g} | {r['size_bytes'] / 1024:.1f} | "
                     f"{r['latency_ms']:.3f} | {_fmt(r.get('metric'))} |")
    return lines


def load_report(bundle_dir: str | Path) -> dict:
    return json.loads((Path(bundle_dir) / "report.json").read_text())
