"""`edgecompile report`, `compare`, `baseline` and `check`: reading, comparing and gating bundles."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgecompile.cli.common import Ctx, _finite, emit_json, verbosity_options
from edgecompile.errors import ConfigError


@click.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("-f", "--format", "fmt", type=click.Choice(["md", "json", "html"]), default="md", show_default=True,
              help="md and json print to stdout; html writes DIR/report.html.")
@click.option("-o", "--output", type=click.Path(), help="Write to this file instead ('-' for stdout).")
@click.option("--json", "json_mode", is_flag=True, help="Same as --format json.")
@verbosity_options
@click.pass_obj
def report(obj: Ctx, bundle_dir, fmt, output, json_mode):
    """Render a bundle's report (from its report.json) as Markdown, JSON or one self-contained HTML page."""
    from edgecompile.report import load_report, render_md
    from edgecompile.report.sections import with_sections

    rep = load_report(bundle_dir)
    fmt = "json" if json_mode else fmt
    if fmt == "json":
        from edgecompile.compiler.writer import json_default as _json_default

        text = json.dumps(_finite(with_sections(rep, bundle_dir)), indent=2, default=_json_default,
                          allow_nan=False) + "\n"
    elif fmt == "md":
        text = render_md(rep, bundle_dir)
    else:
        from edgecompile.report.html import render_html

        text = render_html(rep, bundle_dir)
        output = output or str(Path(bundle_dir) / "report.html")
    if not output or output == "-":
        click.echo(text, nl=not text.endswith("\n"))
        return
    _write_output(Path(output), text)
    if not obj.quiet:
        click.echo(f"wrote {output}", err=True)


def _write_output(path: Path, text: str) -> None:
    """Write a whole file or nothing (temp file + rename)."""
    import os

    from edgecompile.errors import EdgeCompileError

    if path.is_dir():
        raise ConfigError(f"output {str(path)!r} is a directory", hint="pass a file name to -o")
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgeCompileError(
            f"cannot write {str(path)!r}: {exc.strerror}", hint="choose a writable -o path"
        ) from None


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--data", type=click.Path(), help=".npz with arrays named after the inputs (+ optional labels). "
              "Default: the evaluation split the bundle was measured on, else random inputs.")
@click.option("-n", "--samples", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Relative L2 error above which an intermediate tensor counts as diverged.")
@click.option(
    "--no-localize", is_flag=True, help="Compare the outputs only; skip the search for the first diverging node."
)
@click.option("--per-node", is_flag=True, help="Also list the error of every matched node (e.g. per-layer INT8 error).")
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable output.")
@verbosity_options
@click.pass_obj
def compare(obj: Ctx, a, b, data, samples, tolerance, no_localize, per_node, json_mode):
    """Run A and B (bundles, .onnx files or model packages) on the same inputs; find where B diverges from A."""
    from edgecompile.verify.compare import compare as run_compare
    from edgecompile.verify.compare import render_text

    res = run_compare(a, b, data=data, samples=samples, tolerance=tolerance, localize=not no_localize,
                      per_node=per_node, progress=obj.progress(json_mode))
    if json_mode:
        emit_json(_finite(res))        # snr_db is null where the outputs are identical
    else:
        click.echo(render_text(res))


@click.command()
@click.argument("bundle_dir", metavar="DIR")
@click.option("-o", "--output", required=True, type=click.Path(), help="Baseline JSON file to write.")
@click.option("--data", type=click.Path(), help=".npz to evaluate on, or texts for a text bundle "
              "(.txt/.jsonl/.tsv/.csv); default: the data the bundle was evaluated on.")
@click.option("--no-latency", is_flag=True, help="Do not record latency.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads.")
@click.pass_obj
def baseline(obj: Ctx, bundle_dir, output, data, no_latency, threads):
    """Record a baseline of bundle DIR: per-sample task-metric results, data sha256, latency, fingerprints."""
    from edgecompile.verify.regression import make_baseline, save_baseline

    b = make_baseline(bundle_dir, data=data, measure_latency=not no_latency, threads=threads)
    path = save_baseline(b, output)
    if not obj.quiet:
        m = b["metric"]
        value = f"{100 * m['value']:.2f} %" if m["kind"] != "error" else f"{m['value']:.4g}"
        lat = f", latency p50 {b['latency_ms']['p50']:.3f} ms" if b.get("latency_ms") else ""
        click.echo(f"baseline written to {path}: {m['name']} {value} on {b['data']['identity']} "
                   f"(n = {m['n']}){lat}")


@click.command()
@click.argument("bundle_dir", metavar="DIR")
@click.option("--baseline", "baseline_path", required=True, type=click.Path(), help="Baseline JSON (from `baseline`).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None, show_default=False,
              help="Allowed accuracy drop: points for percentage metrics, relative % for error metrics (default 1.0).")
@click.option("--max-latency-ratio", type=float, help="Gate latency: fail when candidate/baseline p50 exceeds this.")
@click.option("--allow-other-machine", is_flag=True,
              help="Let --max-latency-ratio compare with a baseline measured on another CPU model.")
@click.option(
    "--data", type=click.Path(), help=".npz (or texts for a text bundle) to evaluate on; differing from the "
    "baseline's data makes the test unpaired."
)
@click.option("--alpha", type=click.FloatRange(min=1e-6, max=0.5), default=0.05, show_default=True,
              help="Significance level of the one-sided tests.")
@click.option("--junit", "junit_path", type=click.Path(), help="Write the verdict as JUnit XML.")
@click.option("--json", "json_mode", is_flag=True, help="Print the verdict as JSON.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads.")
@click.pass_obj
def check(
    obj: Ctx, bundle_dir, baseline_path, max_drop, max_latency_ratio, data, alpha, junit_path, json_mode, threads,
    allow_other_machine,
):
    """Re-evaluate bundle DIR on the baseline's data; exit 3 when a regression is shown (one-sided test, alpha 0.05)."""
    import os

    from edgecompile.errors import GateError
    from edgecompile.verify.regression import DEFAULT_MAX_DROP, check as run_check
    from edgecompile.verify.verdict import github_annotations, render_table, write_junit

    res = run_check(bundle_dir, baseline_path, max_drop=DEFAULT_MAX_DROP if max_drop is None else max_drop,
                    max_latency_ratio=max_latency_ratio, data=data, alpha=alpha, threads=threads,
                    allow_other_machine=allow_other_machine)
    if junit_path:
        write_junit(res, junit_path)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(res):
            click.echo(line)
    if json_mode:
        emit_json(res.to_dict())
    elif not obj.quiet or not res.ok:
        click.echo(render_table(res))
    if not res.ok:
        raise GateError(
            res.failures[0]
            if len(res.failures) == 1
            else f"{len(res.failures)} gates failed: " + "; ".join(res.failures),
            hint="inspect the verdict above; raise --max-drop/--max-latency-ratio only if the loss is acceptable",
        )
