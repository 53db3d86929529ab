"""Report sections for non-classification tasks: a predicted-vs-true scatter for regression and
test images with predicted and true boxes for detection (inline SVG, like report/html.py's plots).

`task_sections(report)` gives the extra `Section`s; sections.py appends them, and
`HTML`/`MD` map their ids to renderers for report/html.py / report/markdown.py.
"""
from __future__ import annotations

from edgecompile.report.htmlkit import esc, table, ticks
from edgecompile.report.model import OK, Section

W = 760


def task_sections(report: dict) -> list[Section]:
    acc = report.get("accuracy") or {}
    out = []
    if acc.get("scatter"):
        out.append(Section("predictions", "Predicted vs true (regression)", OK,
                           {"scatter": acc["scatter"], "beside": acc.get("beside") or {}, "metric": acc["metric"],
                            "candidate": acc["candidate"], "reference": acc["reference"]}))
    det = acc.get("detection")
    if det:
        title = ("Detection agreement with the reference (mAP against its detections; no labels)"
                 if det.get("agreement") else "Detection (mAP, per class, examples)")
        out.append(Section("detection", title, OK, det))
    return out


def scatter_svg(true: list[float], pred: list[float], label: str) -> str:
    """Predicted (y) against true (x) on equal axes, with the y = x line."""
    size, left, pad = 360, 56, 12
    lo = min(min(true), min(pred))
    hi = max(max(true), max(pred))
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.04 * span, hi + 0.04 * span
    plot = size - left - pad
    px = lambda v: left + plot * (v - lo) / (hi - lo)
    py = lambda v: pad + plot * (1 - (v - lo) / (hi - lo))
    body = []
    for t in ticks(lo, hi):
        body.append(f'<line class="grid" x1="{left}" x2="{left + plot}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
                    f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>'
                    f'<text x="{px(t):.1f}" y="{pad + plot + 16}" text-anchor="middle">{t:g}</text>')
    body.append(f'<line x1="{px(lo):.1f}" y1="{py(lo):.1f}" x2="{px(hi):.1f}" y2="{py(hi):.1f}" stroke="#9aa3b0" '
                'stroke-dasharray="4 3"><title>predicted = true</title></line>')
    for t, p in zip(true, pred):
        body.append(f'<circle cx="{px(t):.1f}" cy="{py(p):.1f}" r="3" fill="var(--blue)" opacity="0.7">'
                    f"<title>true {t:.4g}, predicted {p:.4g}</title></circle>")
    body.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{pad}" y2="{pad + plot}"/>'
                f'<line class="axis" x1="{left}" x2="{left + plot}" y1="{pad + plot}" y2="{pad + plot}"/>'
                f'<text x="{left + plot / 2}" y="{size - 6}" text-anchor="middle" class="legend">true</text>'
                f'<text x="14" y="{pad + plot / 2}" text-anchor="middle" class="legend" '
                f'transform="rotate(-90 14 {pad + plot / 2})">predicted</text>')
    return (
        f'<svg class="plot" data-plot="scatter" role="img" aria-label="{esc(label)}" width="{size}" '
        f'height="{size}" viewBox="0 0 {size} {size}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


_PALETTE = ("#2f6fde", "#d64545", "#1f9d55", "#c77c02", "#8e44ad", "#16a2b8")


def boxes_svg(example: dict, classes: list[str]) -> str:
    """One test image (embedded as a PNG data URI) with true boxes (dashed) and predictions (solid)."""
    w, h = example["width"], example["height"]
    scale = min(1.0, 300 / max(w, h)) if max(w, h) > 300 else 300 / max(w, h)
    sw, sh = w * scale, h * scale
    body = [
        f'<image href="data:image/png;base64,{example["png_base64"]}" x="0" y="0" width="{sw:.0f}" height="{sh:.0f}"/>'
    ]
    for kind, items in (("true", example["true"]), ("pred", example["predicted"])):
        for b in items:
            x1, y1, x2, y2 = (v * scale for v in b["box"])
            color = _PALETTE[b["class"] % len(_PALETTE)]
            name = classes[b["class"]] if b["class"] < len(classes) else str(b["class"])
            tip = f"{kind}: {name}" + (f" score {b['score']:.2f}" if "score" in b else "")
            dash = ' stroke-dasharray="4 3"' if kind == "true" else ""
            body.append(f'<rect x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" height="{y2 - y1:.1f}" fill="none" '
                        f'stroke="{color}" stroke-width="{1.5 if kind == "true" else 2.2}"{dash}>'
                        f"<title>{esc(tip)}</title></rect>")
            if kind == "pred":
                body.append(f'<text x="{x1 + 2:.1f}" y="{max(y1 - 3, 9):.1f}" style="fill:{color};font-weight:600">'
                            f"{esc(name)} {b['score']:.2f}</text>")
    return (f'<svg class="plot" data-plot="boxes" role="img" aria-label="test image with predicted and true boxes" '
            f'width="{sw:.0f}" height="{sh:.0f}" viewBox="0 0 {sw:.0f} {sh:.0f}" '
            f'xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>")






def _html_predictions(sec: Section, report: dict) -> str:
    d = sec.data
    sc = d["scatter"]
    rows = [
        {
            "metric": d["metric"] + " (gating)",
            "reference": f"{d['reference']:.6g}",
            "candidate": f"{d['candidate']:.6g}",
        }
    ]
    rows += [{"metric": k, "reference": f"{b['reference']:.6g}", "candidate": f"{b['candidate']:.6g}"}
             for k, b in d["beside"].items()]
    return (f'<p class="legend">{sc["shown"]} of {sc["n"]} evaluation samples; dashed line: predicted = true</p>'
            + scatter_svg(sc["true"], sc["predicted"], "predicted against true values") + table(rows))


def _html_detection(sec: Section, report: dict) -> str:
    d = sec.data
    ag = d.get("agreement")
    truth = "reference boxes" if ag else "true boxes"
    parts = [f"<p><b>Agreement, not accuracy:</b> {esc(ag['note'])}; ground truth = {esc(ag['truth'])}, "
             f"{ag['boxes']} boxes.</p>" if ag else ""]
    parts.append(
        f"<p>mAP@[.5:.95] <b>{d['map']:.4f}</b> · mAP@.5 <b>{d['map50']:.4f}</b> "
        f"(pycocotools, {d['images']} images; "
        f"reference {d['reference']['map']:.4f} / {d['reference']['map50']:.4f})</p>"
    )
    parts.append(table([{"class": r["class"], "AP@[.5:.95]": f"{r['ap']:.4f}", "AP@.5": f"{r['ap50']:.4f}",
                          truth: r["gt"]} for r in d["per_class"]]))
    if d.get("examples"):
        parts.append(f'<p class="legend">dashed: {truth}; solid: predictions (score &ge; '
                     f'{d.get("draw_threshold", 0.3):g})</p><div>')
        parts += [boxes_svg(e, d["classes"]) for e in d["examples"]]
        parts.append("</div>")
    return "".join(parts)


def _md_predictions(d: dict, report: dict) -> list[str]:
    lines = ["| metric | reference | candidate |", "|---|---|---|",
             f"| {d['metric']} (gating) | {d['reference']:.6g} | {d['candidate']:.6g} |"]
    lines += [f"| {k} | {b['reference']:.6g} | {b['candidate']:.6g} |" for k, b in d["beside"].items()]
    return lines + ["", f"(scatter of {d['scatter']['shown']} samples in report.html)"]


def _md_detection(d: dict, report: dict) -> list[str]:
    ag = d.get("agreement")
    lines = [f"**Agreement, not accuracy:** {ag['note']}; ground truth = {ag['truth']}, {ag['boxes']} boxes.", ""] \
        if ag else []
    lines += [f"mAP@[.5:.95] {d['map']:.4f}, mAP@.5 {d['map50']:.4f} on {d['images']} images "
              f"(reference {d['reference']['map']:.4f} / {d['reference']['map50']:.4f})", "",
              f"| class | AP@[.5:.95] | AP@.5 | {'reference' if ag else 'true'} boxes |", "|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['ap']:.4f} | {r['ap50']:.4f} | {r['gt']} |" for r in d["per_class"]]
    return lines


HTML = {"predictions": _html_predictions, "detection": _html_detection}
MD = {"predictions": _md_predictions, "detection": _md_detection}
