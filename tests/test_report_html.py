"""Reports people want to look at: HTML (rendered in headless Chromium), Markdown and JSON in sync."""
import copy
import io
import json
import re

import pytest
from conftest import run_cli
from headless import chromium_path, render_page

from edgecompile.report import load_report, render_md
from edgecompile.report.html import render_html
from edgecompile.report.sections import sections, size_by_op, with_sections

needs_chromium = pytest.mark.skipif(
    chromium_path() is None, reason="chromium is not installed (bash scripts/bootstrap.sh installs it as root)"
)


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory):
    """digits asked for INT8 with html in [report] formats, built with a verbose progress."""
    import edgecompile
    from edgecompile.compiler.config import Config
    from edgecompile.progress import Progress

    out = tmp_path_factory.mktemp("int8") / "digits-int8"
    log = io.StringIO()
    cfg = Config.from_dict({"report": {"formats": ["json", "md", "html"]}})
    bundle = edgecompile.build("models/digits", target="cpu", backend="ort", precision="int8", output=out, config=cfg,
                               progress=Progress(verbose=True, stream=log))
    return bundle.path, log.getvalue()


def _rich_report(report: dict) -> dict:
    """The digits report plus what quantization/precision passes record, to render every section."""
    r = copy.deepcopy(report)
    r["precision"], r["requested_precision"] = "int8", "int8"
    r["per_layer"] = [{"node": f"node_Conv_{i}", "op_type": "Conv", "rel_error": e, "cosine": 1 - e / 10}
                      for i, e in enumerate([0.02, 0.31, 0.05])]
    r["float_nodes"] = [{"node": "node_Conv_1", "op_type": "Conv", "reason": "rel_error 0.31 > bound"}]
    r["candidates"] = [{"precision": "fp32", "latency_p50_ms": 0.04, "delta": 0.0, "chosen": False},
                       {"precision": "int8", "latency_p50_ms": 0.03, "delta": -0.003, "chosen": True}]
    return r


def test_build_writes_html_and_progress_is_verbose(int8_build):
    path, log = int8_build
    assert (path / "report.html").is_file() and (path / "report.md").is_file()
    assert "report.html" not in json.loads((path / "manifest.json").read_text())["artifacts"]   # derived, not hashed
    assert "· evaluation data: digits:test (360 samples, labels)" in log and "· pass simplify:" in log
    assert "\r" not in log and "\x1b" not in log                  # not a terminal: plain lines only
    rep = load_report(path)
    assert rep["size_by_op"]["rows"][0]["op_type"] == "Conv"


def test_size_by_op_accounts_for_the_whole_file(digits_bundle):
    res = size_by_op(digits_bundle.path / "model.onnx")
    rows = {r["op_type"]: r for r in res["rows"]}
    assert sum(r["bytes"] for r in res["rows"]) == res["file_bytes"]
    assert rows["Conv"]["nodes"] == 3 and rows["Conv"]["params"] == 32 * 9 + 32 * 32 * 9 + 64 * 32 * 9 + 32 + 32 + 64
    assert rows["Conv"]["bytes"] > 0.9 * res["file_bytes"]


def test_formats_carry_the_same_sections(digits_bundle, tmp_path):
    d = digits_bundle.path
    rc, md, err = run_cli("report", d, "--format", "md")
    assert rc == 0, err
    rc, js, _ = run_cli("report", d, "--json")
    assert rc == 0
    out = tmp_path / "r.html"
    rc, _, err = run_cli("report", d, "--format", "html", "-o", out)
    assert rc == 0 and err.strip() == f"wrote {out}"
    page = out.read_text()
    titles = [s["title"] for s in json.loads(js)["sections"].values() if s["title"] != "Warnings"]
    assert titles == re.findall(r"^## (.+)$", md, re.M) == re.findall(r"<h2>(.+?)</h2>", page)
    for t in ("Accuracy through the passes", "Latency distribution", "Size by op type", "Per-layer quantization error",
              "Nodes kept in float", "Candidates tried", "Environment and toolchain"):
        assert t in titles
    assert "not applicable: fp32 bundle" in md and "not applicable: fp32 bundle" in page
    # self-contained: no scripts, stylesheets or images fetched from anywhere
    assert not re.search(r"<(script|link|img|iframe)\b", page) and not re.search(
        r"https?://(?!www\.w3\.org/2000/svg)", page
    )
    rc, _, err = run_cli("-q", "report", d, "--format", "html", "-o", tmp_path / "q.html")
    assert rc == 0 and err == ""                                   # --quiet: nothing on stderr
    rc, _, err = run_cli("report", tmp_path, "--format", "html")
    assert rc == 1 and "no report.json" in err and "Traceback" not in err


def test_optional_sections_render_when_recorded(digits_bundle):
    rich = _rich_report(load_report(digits_bundle.path))
    secs = {s.id: s for s in sections(rich, digits_bundle.path)}
    assert secs["per_layer"].ok and secs["per_layer"].data["column"] == "rel_error"
    assert secs["float_nodes"].ok and secs["candidates"].ok
    md = render_md(rich, digits_bundle.path)
    assert "| node_Conv_1 | Conv | rel_error 0.31 > bound |" in md and "| int8 | 0.03 | -0.003 | True |" in md
    page = render_html(rich, digits_bundle.path)
    assert 'data-plot="per_layer"' in page and "rel_error 0.31 &gt; bound" in page
    js = with_sections(rich, digits_bundle.path)
    assert js["sections"]["per_layer"]["data"]["rows"][1]["rel_error"] == 0.31
    # records left in a pass's notes are found too
    alt = copy.deepcopy(load_report(digits_bundle.path))
    alt["precision"] = "int8"
    alt["passes"][0]["notes"]["per_layer"] = {"node_Conv_100": {"mse": 0.5}}
    layer = {s.id: s for s in sections(alt)}["per_layer"]
    assert layer.data["rows"] == [{"node": "node_Conv_100", "mse": 0.5}]
    # a similarity-only record is plotted as a distance (1 - cosine), worst layer first
    alt["passes"][0]["notes"]["per_layer"] = [{"node": "good", "cosine": 0.9999}, {"node": "bad", "cosine": 0.97}]
    page = render_html(alt)
    assert "1 - cosine per layer" in page and page.index(">bad<") < page.index(">good<")


@needs_chromium
def test_int8_report_renders_in_chromium_with_plots(int8_build, tmp_path):
    path, _ = int8_build
    shot = tmp_path / "report.png"
    res = render_page(path / "report.html", shot)
    assert res["errors"] == []
    page = res["page"]
    plots = {p["kind"]: p for p in page["plots"]}
    assert {"waterfall", "latency", "size"} <= set(plots)
    for p in plots.values():
        assert p["marks"] >= 3 and p["width"] > 500 and p["height"] > 100
    assert page["title"].startswith("EdgeCompile report: digits") and "Latency distribution" in page["sections"]
    assert shot.stat().st_size > 20_000


@needs_chromium
def test_rich_report_renders_and_the_browser_check_can_fail(digits_bundle, tmp_path):
    page = tmp_path / "rich.html"
    page.write_text(render_html(_rich_report(load_report(digits_bundle.path)), digits_bundle.path))
    res = render_page(page)
    assert res["errors"] == [] and "per_layer" in {p["kind"] for p in res["page"]["plots"]}
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><script>console.error("boom")</script>'
                      '<img src="missing.png"></body></html>')
    errors = render_page(broken)["errors"]
    assert any("boom" in e for e in errors) and any("missing.png" in e for e in errors)


def test_report_formats_are_validated():
    from edgecompile.compiler.config import Config
    from edgecompile.errors import ConfigError

    assert Config.from_dict({"report": {"formats": ["json", "html"]}}).report.formats == ["json", "html"]
    with pytest.raises(ConfigError, match="report.formats' has invalid value 'pdf'"):
        Config.from_dict({"report": {"formats": ["md", "pdf"]}})
