"""report.html: one self-contained page (inline CSS and SVG, no script, no network) rendered from
report.json through the same sections as report.md (see report_sections.py)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgecompile.report.htmlkit import cell, esc, table, ticks
from edgecompile.report.sections import Section, label_of, sections
from edgecompile.report.tasks import HTML as TASK_HTML

W = 760            # plot width in px

_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d9dee5;--bg:#f6f7f9;--card:#fff;--blue:#2f6fde;--green:#1f9d55;
--red:#d64545;--grey:#8a94a3;--amber:#c77c02}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}header{background:#1d2330;color:#fff;padding:20px 32px}
header h1{margin:0 0 4px;font-size:22px}header .sub{color:#b8c1cf;margin:0}header code{background:#2a3242;color:#fff}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:#2a3242;border-radius:8px;padding:10px 14px;min-width:130px}
.card .k{font-size:12px;color:#b8c1cf}.card .v{font-size:20px;font-weight:600}
.card .v.bad{color:#ff8b8b}.card .v.good{color:#7ee2a8}
nav{padding:8px 32px;background:#fff;border-bottom:1px solid var(--line);position:sticky;top:0}
nav a{margin-right:14px;color:var(--blue);text-decoration:none;font-size:13px}
main{padding:8px 32px 40px;max-width:1100px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 20px;margin:16px 0}
section h2{font-size:17px;margin:0 0 10px}.na{color:var(--muted);font-style:italic}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border-bottom:1px solid var(--line);
padding:4px 10px;text-align:left;vertical-align:top}th{background:#f0f2f5;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}.warn{background:#fff4e0;border-color:#f0c36d}
.warn li{color:#8a5300;font-weight:600}svg.plot{display:block;margin:6px 0;font-size:11px}
svg.plot text{fill:var(--fg)}svg.plot .axis{stroke:#9aa3b0;stroke-width:1}svg.plot .grid{stroke:#eceff3}
.legend{color:var(--muted);font-size:12px}code{background:#f0f2f5;padding:0 4px;border-radius:3px}
"""




def render_html(report: dict, bundle_dir: str | Path | None = None) -> str:
    secs = sections(report, bundle_dir)
    title = f"{report['model']} → {report['target']} ({report['backend']}, {report['precision']})"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>EdgeCompile report: {esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<header><h1>EdgeCompile report: {esc(title)}</h1>",
             f'<p class="sub">bundle <code>{esc(report["bundle_id"][:16])}</code> · built {esc(report["created_at"])}'
             f' · build time {report.get("build_seconds", 0):.1f} s</p>', _cards(report), "</header>",
             "<nav>" + "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in secs
                               if s.ok or s.id != "warnings") + "</nav><main>"]
    for sec in secs:
        if sec.id == "warnings" and not sec.ok:
            continue
        cls = ' class="warn"' if sec.id == "warnings" else ""
        parts.append(f'<section id="{sec.id}"{cls}><h2>{esc(sec.title)}</h2>')
        parts.append(_RENDER[sec.id](sec, report) if sec.ok else f'<p class="na">{esc(sec.status)}</p>')
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _cards(report: dict) -> str:
    cards = []
    acc, lat = report.get("accuracy"), report.get("latency_ms")
    prec = report["precision"]
    if prec != report.get("requested_precision"):
        cards.append(("precision", f"{prec} (asked {report.get('requested_precision')})", "bad"))
    else:
        cards.append(("precision", prec, ""))
    if acc:
        pct = acc["kind"] == "percentage"
        cards.append((acc["metric"], f"{100 * acc['candidate']:.2f} %" if pct else f"{acc['candidate']:.4g}", ""))
        worse = acc["delta"] < 0 if acc["higher_is_better"] else acc["delta"] > 0
        cards.append(("vs reference", f"{100 * acc['delta']:+.2f} pt" if pct else f"{acc['delta']:+.4g}",
                      "bad" if worse and abs(acc["delta"]) > 1e-12 else "good"))
    if lat:
        cards.append(("latency p50", f"{lat['p50']:.3f} ms", ""))
        cards.append(("latency p99", f"{lat['p99']:.3f} ms", ""))
    cards.append(("size", f"{report['size_bytes'] / 1024:.1f} KiB", ""))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v {c}">{esc(v)}</div></div>'
        for k, v, c in cards) + "</div>"


# -- tables ---------------------------------------------------------------------------------------

# -- plots (inline SVG) ---------------------------------------------------------------------------

def _svg(kind: str, height: int, body: list[str], label: str) -> str:
    return (f'<svg class="plot" data-plot="{kind}" role="img" aria-label="{esc(label)}" width="{W}" height="{height}" '
            f'viewBox="0 0 {W} {height}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>")


def hbar_chart(kind: str, items: list[tuple[str, float, str]], fmt, label: str, color: str = "var(--blue)") -> str:
    """Horizontal bars: (label, value >= 0, tooltip)."""
    bar, gap, left, right = 18, 6, 210, 90
    h = len(items) * (bar + gap) + 10
    top = max((v for _, v, _ in items), default=0) or 1.0
    body = []
    for i, (name, v, tip) in enumerate(items):
        y = 5 + i * (bar + gap)
        wbar = max((W - left - right) * v / top, 1 if v > 0 else 0)
        short = name if len(name) <= 30 else name[:28] + "…"
        body.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{esc(short)}</text>'
                    f'<rect x="{left}" y="{y}" width="{wbar:.1f}" height="{bar}" fill="{color}" rx="2">'
                    f"<title>{esc(tip)}</title></rect>"
                    f'<text x="{left + wbar + 6:.1f}" y="{y + 13}">{esc(fmt(v))}</text>')
    return _svg(kind, h, body, label)


def waterfall_chart(steps: list[dict], pct: bool, metric: str) -> str:
    h, left, bottom, top_pad = 300, 70, 70, 20
    vals = [s["value"] for s in steps]
    lo, hi = min(vals), max(vals)
    span = hi - lo
    pad = max(span * 0.25, (abs(hi) or 1.0) * (0.01 if pct else 0.02))
    y0, y1 = lo - pad, hi + pad
    if pct:
        y0, y1 = max(y0, 0.0), min(y1, 1.0) if hi < 1.0 else hi + pad * 0.2
    y0 = y0 if y1 > y0 else y0 - 1
    ph = h - bottom - top_pad
    ypx = lambda v: top_pad + ph * (1 - (v - y0) / (y1 - y0))  # noqa: E731
    fmt = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.4g}")
    slot = (W - left - 20) / max(len(steps), 1)
    body = []
    for t in ticks(y0, y1):
        body.append(f'<line class="grid" x1="{left}" x2="{W - 10}" y1="{ypx(t):.1f}" y2="{ypx(t):.1f}"/>'
                    f'<text x="{left - 6}" y="{ypx(t) + 4:.1f}" text-anchor="end">{esc(fmt(t))}</text>')
    prev = None
    for i, s in enumerate(steps):
        x = left + i * slot + slot * 0.18
        bw = slot * 0.64
        if s["kind"] == "total":
            a, b, color = y0, s["value"], "var(--grey)" if i == 0 else "var(--blue)"
        else:
            a, b = prev, s["value"]
            color = "var(--green)" if (b - a) > 0 else ("var(--red)" if (b - a) < 0 else "var(--grey)")
        top, bot = ypx(max(a, b)), ypx(min(a, b))
        hbar = max(bot - top, 2.0)
        delta = (
            ""
            if s.get("delta") is None
            else f" (change {'%+.2f pt' % (100 * s['delta']) if pct else '%+.4g' % s['delta']})"
        )
        body.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bw:.1f}" height="{hbar:.1f}" fill="{color}" rx="2">'
                    f"<title>{esc(s['label'])}: {esc(fmt(s['value']))}{esc(delta)}</title></rect>"
                    f'<text x="{x + bw / 2:.1f}" y="{top - 4:.1f}" text-anchor="middle">{esc(fmt(s["value"]))}</text>')
        if prev is not None and i > 0:
            px = x - slot * 0.36
            body.append(f'<line x1="{px:.1f}" x2="{x:.1f}" y1="{ypx(prev):.1f}" y2="{ypx(prev):.1f}" '
                        'stroke="#9aa3b0" stroke-dasharray="3 2"/>')
        name = s["label"] if len(s["label"]) <= 26 else s["label"][:24] + "…"
        body.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle">{esc(name)}</text>')
        prev = s["value"]
    body.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top_pad}" y2="{h - bottom}"/>'
                f'<line class="axis" x1="{left}" x2="{W - 10}" y1="{h - bottom}" y2="{h - bottom}"/>'
                f'<text x="{left}" y="{h - 14}" class="legend">{esc(metric)}; axis starts at {esc(fmt(y0))} '
                '(zoomed to show the changes)</text>')
    return _svg("waterfall", h, body, f"{metric} from the reference through each pass")


def latency_chart(data: dict) -> str:
    ms = np.asarray(data["samples"], np.float64)
    ms = ms[ms > 0] if np.any(ms > 0) else np.asarray([1e-3])
    h, left, bottom, top_pad = 270, 60, 44, 30
    lo = float(ms.min())
    # the axis ends a little past p99; rarer outliers (a busy machine) are counted in one overflow bar
    hi = float(min(ms.max(), max(data["p99"] * 1.5, lo * 1.01)))
    overflow = ms[ms > hi]
    ms = ms[ms <= hi]
    log = hi / max(lo, 1e-9) > 20
    f = np.log10 if log else (lambda x: x)
    a, b = float(f(lo)), (float(f(hi)) if hi > lo else float(f(lo)) + 1e-3)
    edges = np.linspace(a, b, 41)
    counts, _ = np.histogram(f(ms), bins=edges)
    ph, pw = h - bottom - top_pad, W - left - 20 - (70 if len(overflow) else 0)
    xpx = lambda v: left + pw * (f(v) - a) / (b - a)  # noqa: E731
    top = max(counts.max(), len(overflow)) or 1
    body = []
    if len(overflow):
        bh = max(ph * len(overflow) / top, 1)
        x = left + pw + 20
        body.append(f'<rect x="{x}" y="{top_pad + ph - bh:.1f}" width="40" height="{bh:.1f}" fill="var(--grey)">'
                    f"<title>{len(overflow)} runs slower than {hi:.4f} ms (max {overflow.max():.3f} ms)</title></rect>"
                    f'<text x="{x + 20}" y="{h - bottom + 16}" text-anchor="middle">&gt; {hi:.3g}</text>'
                    f'<text x="{x + 20}" y="{top_pad + ph - bh - 4:.1f}" text-anchor="middle">{len(overflow)}</text>')
    for i, c in enumerate(counts):
        if not c:
            continue
        x0 = left + pw * (edges[i] - a) / (b - a)
        x1 = left + pw * (edges[i + 1] - a) / (b - a)
        bh = ph * c / top
        lo_ms, hi_ms = (10 ** edges[i], 10 ** edges[i + 1]) if log else (edges[i], edges[i + 1])
        body.append(
            f'<rect x="{x0:.1f}" y="{top_pad + ph - bh:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" height="{bh:.1f}" '
            f'fill="var(--blue)" opacity="0.8"><title>{c} runs in {lo_ms:.4f}..{hi_ms:.4f} ms</title></rect>'
        )
    tick_vals = ([10 ** e for e in range(math.floor(a), math.ceil(b) + 1) if a <= e <= b] if log
                 else ticks(a, b))
    for t in tick_vals:
        body.append(f'<line class="axis" x1="{xpx(t):.1f}" x2="{xpx(t):.1f}" y1="{h - bottom}" y2="{h - bottom + 4}"/>'
                    f'<text x="{xpx(t):.1f}" y="{h - bottom + 16}" text-anchor="middle">{t:g}</text>')
    colors = {"p50": "var(--green)", "p90": "var(--amber)", "p99": "var(--red)"}
    for j, (k, color) in enumerate(colors.items()):
        v = min(max(data[k], lo), hi)          # p99 lies inside the axis by construction
        x = xpx(v)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top_pad - 6}" y2="{h - bottom}" stroke="{color}" '
                    f'stroke-width="2" stroke-dasharray="5 3"><title>{k} = {data[k]:.4f} ms</title></line>'
                    f'<line x1="{left + 150 * j}" x2="{left + 150 * j + 18}" y1="10" y2="10" stroke="{color}" '
                    f'stroke-width="2" stroke-dasharray="5 3"/><text x="{left + 150 * j + 24}" y="14" '
                    f'style="fill:{color};font-weight:600">{k} {data[k]:.3f} ms</text>')
    body.append(
        f'<line class="axis" x1="{left}" x2="{W - 10}" y1="{h - bottom}" y2="{h - bottom}"/>'
        f'<text x="{left}" y="{h - 6}" class="legend">latency per run, ms{" (log scale)" if log else ""}; '
        f"{len(ms) + len(overflow)} samples"
        + (f", {len(overflow)} beyond the axis (grey bar)" if len(overflow) else "")
        + "</text>"
    )
    return _svg("latency", h, body, "latency histogram with p50, p90 and p99")


# -- section bodies -------------------------------------------------------------------------------

def _summary(sec: Section, report: dict) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in sec.data) + "</table>"


def _warnings(sec: Section, report: dict) -> str:
    return "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in sec.data) + "</ul>"


def _accuracy(sec: Section, report: dict) -> str:
    d = sec.data
    pct = d["kind"] == "percentage"
    steps = d["steps"]
    rows = [{"step": s["label"], d["metric"]: (f"{100 * s['value']:.2f} %" if pct else f"{s['value']:.6g}"),
             "change": "" if s.get("delta") is None else
             (f"{100 * s['delta']:+.2f} pt" if pct else f"{s['delta']:+.6g}")} for s in steps]
    return waterfall_chart(steps, pct, d["metric"]) + table(rows)


def _latency(sec: Section, report: dict) -> str:
    d = sec.data
    info = (f'<p>p50 <b>{d["p50"]:.3f} ms</b> · p90 <b>{d["p90"]:.3f} ms</b> · p99 <b>{d["p99"]:.3f} ms</b> · '
            f'mean {d["mean"]:.3f} ms · {d["runs"]} runs, batch {d["batch"]}, {d["threads"]} threads</p>')
    return info + latency_chart(d)


def _size(sec: Section, report: dict) -> str:
    d = sec.data
    total = max(d["file_bytes"], 1)
    big = [r for r in d["rows"] if r["bytes"] >= 0.005 * total][:12]
    rest = [r for r in d["rows"] if r not in big and r["bytes"] > 0]
    items = [(r["op_type"], r["bytes"] / 1024, f"{r['op_type']}: {r['bytes']} bytes, {r['nodes']} nodes, "
              f"{r['params']} parameters") for r in big]
    if rest:
        b = sum(r["bytes"] for r in rest)
        items.append((f"{len(rest)} other op types", b / 1024, ", ".join(r["op_type"] for r in rest) + f": {b} bytes"))
    rows = [{"op type": r["op_type"], "nodes": r["nodes"], "params": r["params"], "KiB": round(r["bytes"] / 1024, 1),
             "share": f"{100 * r['bytes'] / total:.1f} %"} for r in d["rows"]]
    return (f"<p>{esc(d['file'])}: {d['file_bytes'] / 1024:.1f} KiB</p>"
            + hbar_chart("size", items, lambda v: f"{v:.1f} KiB", "bytes by op type") + table(rows))


def _per_layer(sec: Section, report: dict) -> str:
    rows, col = sec.data["rows"], sec.data["column"]
    out = ""
    if col:
        cos = "cos" in col                      # similarity: plot the distance 1 - cosine
        val = (lambda r: 1.0 - float(r[col])) if cos else (lambda r: abs(float(r[col])))
        name = f"1 - {col}" if cos else col
        ranked = sorted((r for r in rows if isinstance(r.get(col), (int, float))), key=lambda r: -val(r))[:30]
        items = [(label_of(r), val(r), f"{label_of(r)}: {col} = {r[col]:.6g}") for r in ranked]
        out += (f'<p class="legend">{esc(name)} per layer, largest first (top {len(items)} of {len(rows)})</p>'
                + hbar_chart("per_layer", items, lambda v: f"{v:.3g}", f"per-layer {name}", "var(--amber)"))
    return out + table(rows)


def _rows(sec: Section, report: dict) -> str:
    return table(sec.data)


def _passes(sec: Section, report: dict) -> str:
    rows = []
    for p in sec.data:
        rows.append({"pass": p["name"], "kind": p["kind"], "time (s)": round(p["seconds"], 3),
                     "nodes": f"{p['nodes_before']} → {p['nodes_after']}" if p.get("nodes_before") is not None else "",
                     "size (KiB)": (f"{p['size_before'] / 1024:.1f} → {p['size_after'] / 1024:.1f}"
                                    if p.get("size_before") is not None else ""),
                     "metric before": p.get("metric_before"), "metric after": p.get("metric_after"),
                     "notes": {k: v for k, v in (p.get("notes") or {}).items() if not isinstance(v, (list, dict))}})
    return table(rows)


def _kv(sec: Section, report: dict) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in sec.data.items()) + "</table>"


def _export(sec: Section, report: dict) -> str:
    rows = [{"output": k, **v} for k, v in sec.data["outputs"].items()]
    return f"<p>ONNX (ORT) against torch on {sec.data['n']} samples</p>" + table(rows)


def _artifacts(sec: Section, report: dict) -> str:
    return table([{"file": k, "role": v["role"], "bytes": v["size"]} for k, v in sec.data.items()])


def _environment(sec: Section, report: dict) -> str:
    cpu = (sec.data.get("machine") or {}).get("cpu") or {}
    rows = [("CPU", f"{cpu.get('model')} ({cpu.get('arch')}, {cpu.get('cores')} cores)"),
            ("CPU flags", " ".join(cpu.get("flags") or []) or "none detected")]
    rows += [(k, v) for k, v in (sec.data.get("toolchain") or {}).items()]
    if sec.data.get("steps_seconds"):
        rows.append(("build steps", ", ".join(f"{k} {v:.2f} s" for k, v in sec.data["steps_seconds"].items())))
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


_RENDER = {
    "summary": _summary,
    "quantization": _summary,
    "fp16": _summary,
    "warnings": _warnings,
    "accuracy": _accuracy,
    "latency": _latency,
    "size": _size,
    "per_layer": _per_layer,
    "float_nodes": _rows,
    "candidates": _rows,
    "sensitivity": _rows,
    "passes": _passes,
    "pruning": _rows,
    "distillation": _rows,
    "precision_notes": _kv,
    "export": _export,
    "artifacts": _artifacts,
    "environment": _environment,
}
_RENDER.update(TASK_HTML)     # regression scatter, detection boxes (issue 25)
