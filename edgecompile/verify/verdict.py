"""How a `check` verdict is shown: a text table, JUnit XML, GitHub Actions annotations."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edgecompile.verify.regression import CheckResult


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def accuracy_cells(r: CheckResult) -> dict[str, str]:
    a = r.accuracy
    if r.kind == "error":
        scale = 100.0 / max(abs(r.baseline_value), 1e-12)
        base, cand = f"{r.baseline_value:.4g}", f"{r.candidate_value:.4g}"
        delta = f"{100 * r.delta / max(abs(r.baseline_value), 1e-12):+.2f} % rel"
        sign = -1.0 if not r.higher_is_better else 1.0
        lo, hi = sorted((-sign * a.ci[0] * scale, -sign * a.ci[1] * scale))
        ci = f"[{lo:+.2f}, {hi:+.2f}] % rel"
        bound = f"{r.max_drop:g} % rel"
    else:
        base, cand = _pct(r.baseline_value), _pct(r.candidate_value)
        delta = f"{100 * r.delta:+.2f} pt"
        lo, hi = sorted((-100 * a.ci[0] + 0.0, -100 * a.ci[1] + 0.0))
        ci = f"[{lo:+.2f}, {hi:+.2f}] pt"
        bound = f"drop <= {r.max_drop:g} pt"
    return {"metric": r.metric, "baseline": base, "candidate": cand, "delta": delta, "ci95": ci,
            "p_value": f"{a.p_value:.3g}", "bound": bound, "verdict": "FAIL" if r.accuracy_failed else "pass"}


def latency_cells(r: CheckResult) -> dict[str, str] | None:
    lat = r.latency
    if not lat:
        return None
    if not lat.get("gated"):
        return {"metric": "latency p50", "baseline": "n/a", "candidate": "n/a", "delta": "n/a", "ci95": "",
                "p_value": "", "bound": f"ratio <= {lat['max_ratio']:g}", "verdict": "skipped"}
    ci = lat.get("ci95")
    return {"metric": "latency p50", "baseline": f"{lat['baseline_p50_ms']:.3f} ms",
            "candidate": f"{lat['candidate_p50_ms']:.3f} ms", "delta": f"x{lat['ratio']:.2f}",
            "ci95": f"[x{ci[0]:.2f}, x{ci[1]:.2f}]" if ci else "",
            "p_value": f"{lat['p_value']:.3g}" if lat.get("p_value") is not None else "",
            "bound": f"ratio <= {lat['max_ratio']:g}", "verdict": "FAIL" if lat["failed"] else "pass"}


def render_table(r: CheckResult) -> str:
    cols = [("metric", "metric"), ("baseline", "baseline"), ("candidate", "candidate"), ("delta", "delta"),
            ("ci95", "95% CI of delta"), ("p_value", "p-value"), ("bound", "bound"), ("verdict", "verdict")]
    rows = [c for c in (accuracy_cells(r), latency_cells(r)) if c]
    widths = {k: max(len(title), *(len(row[k]) for row in rows)) for k, title in cols}
    lines = ["  ".join(f"{title:<{widths[k]}}" for k, title in cols),
             "  ".join("-" * widths[k] for k, _ in cols)]
    lines += ["  ".join(f"{row[k]:<{widths[k]}}" for k, _ in cols) for row in rows]
    a = r.accuracy
    lines.append("")
    lines.append(
        f"test: {a.method}, alpha {r.alpha:g}, n = {r.n} ({'paired' if r.paired else 'unpaired'})"
        + (f", {a.details['losses']} lost / {a.details['gains']} gained samples" if "losses" in a.details else "")
    )
    if r.latency and r.latency.get("gated"):
        lines.append(
            f"latency: {r.latency['mode']}" + (f", {r.latency['rounds']} rounds" if r.latency.get("rounds") else "")
        )
    elif r.latency:
        lines.append(f"latency: not gated ({r.latency.get('reason')})")
    if r.fingerprints_match is not None:
        lines.append("outputs: " + ("identical to the baseline's (rounded to 1e-3)" if r.fingerprints_match
                                    else "differ from the baseline's (rounded to 1e-3)"))
    lines += [f"note: {n}" for n in r.notes]
    lines.append("")
    if r.ok:
        lines.append("PASS: no regression shown")
    else:
        lines.append(f"FAIL: {len(r.failures)} gate(s) failed")
        lines += [f"  - {f}" for f in r.failures]
    return "\n".join(lines)


def junit_xml(r: CheckResult, suite: str = "edgecompile.check") -> ET.ElementTree:
    """JUnit XML: one testsuite, a testcase for accuracy and one for latency (skipped when not gated)."""
    name = Path(r.bundle).name
    cases = []
    acc = ET.Element("testcase", classname=f"{suite}.{name}", name=f"accuracy[{r.metric}]", time=f"{r.seconds:.3f}")
    if r.accuracy_failed:
        f = ET.SubElement(acc, "failure", message=r.failures[0], type="AccuracyRegression")
        f.text = render_table(r)
    cases.append(acc)
    lat = ET.Element("testcase", classname=f"{suite}.{name}", name="latency", time="0")
    if not r.latency or not r.latency.get("gated"):
        ET.SubElement(lat, "skipped", message="latency not gated (no --max-latency-ratio)" if not r.latency
                      else str(r.latency.get("reason")))
    elif r.latency["failed"]:
        ET.SubElement(lat, "failure", message=r.latency["reason"], type="LatencyRegression").text = render_table(r)
    cases.append(lat)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    root = ET.Element("testsuites", name="edgecompile", tests=str(len(cases)), failures=str(failures), errors="0",
                      skipped=str(skipped), time=f"{r.seconds:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures), errors="0",
                       skipped=str(skipped), time=f"{r.seconds:.3f}")
    props = ET.SubElement(ts, "properties")
    for k, v in (("bundle", r.bundle), ("bundle_id", r.bundle_id),
                 ("baseline_bundle_id", r.baseline["bundle"].get("bundle_id", "")),
                 ("max_drop", f"{r.max_drop:g}"), ("alpha", f"{r.alpha:g}")):
        ET.SubElement(props, "property", name=k, value=str(v))
    ts.extend(cases)
    ET.SubElement(ts, "system-out").text = render_table(r)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(r: CheckResult, path: str | Path) -> Path:
    import os

    from edgecompile.errors import ConfigError

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        junit_xml(r).write(tmp, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(
            f"cannot write JUnit file {str(path)!r}: {exc.strerror}", hint="choose a writable --junit path"
        ) from None
    return path


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_prop(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def github_annotations(r: CheckResult) -> list[str]:
    """`::error title=...::message` lines for every failure (and a notice when it passed)."""
    if r.ok:
        cells = accuracy_cells(r)
        return [f"::notice title={_escape_prop('edgecompile check passed')}::"
                + _escape_data(f"{r.metric} {cells['baseline']} -> {cells['candidate']} ({cells['delta']}), "
                               f"p = {cells['p_value']}")]
    return [f"::error title={_escape_prop('edgecompile check: ' + Path(r.bundle).name)}::{_escape_data(f)}"
            for f in r.failures]
