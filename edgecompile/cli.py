"""The command line: a thin layer over the Python API.

Exit codes: 0 ok, 1 error, 2 usage or config error, 3 a gate failed. Errors print one line
(plus a hint); `--debug` shows the traceback.
"""
from __future__ import annotations

import json
import shutil
import sys
import traceback
from pathlib import Path

import click

from edgecompile.errors import ConfigError, EdgeCompileError


class Ctx:
    def __init__(self, debug: bool, quiet: bool, verbose: bool):
        self.debug, self.quiet, self.verbose = debug, quiet, verbose

    def progress(self, json_mode: bool = False):
        from edgecompile.progress import Progress

        return Progress(quiet=self.quiet or json_mode, verbose=self.verbose and not self.quiet)


def _version_callback(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from edgecompile.commands.version import echo_versions

    echo_versions()
    ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version_callback,
              help="Print EdgeCompile's and the toolchain's versions.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="More detail on stderr.")
@click.pass_context
def cli(ctx, debug, quiet, verbose):
    """EdgeCompile: export, optimize, compile and verify models for edge devices."""
    ctx.obj = Ctx(debug, quiet, verbose)


def _set_flag(name: str):
    def callback(ctx, _param, value):
        if value:
            setattr(ctx.find_object(Ctx), name, True)
    return callback


def verbosity_options(f):
    """-q/-v accepted after the command name too (`edgecompile build -q ...`), same as before it."""
    f = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_flag("verbose"),
                     help="More detail on stderr.")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_flag("quiet"),
                        help="Only warnings and errors on stderr.")(f)


def _finite(obj):
    """Strict JSON for scripts: non-finite floats (e.g. the SNR of identical outputs) become null."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _emit_json(data) -> None:
    from edgecompile.bundle import _json_default

    click.echo(json.dumps(data, indent=2, default=_json_default))


def _load_config(config_path):
    """--config FILE, else ./edgecompile.toml, else the defaults."""
    from edgecompile.config import Config, find_default_config

    path = Path(config_path) if config_path else find_default_config()
    return Config.from_file(path) if path else Config()


def _show_built(obj: Ctx, bundle, json_mode: bool) -> dict:
    """Print a freshly built bundle's report: report.json with --json, else the summary table."""
    from edgecompile.report import load_report, render_table

    rep = load_report(bundle.path)
    if json_mode:
        _emit_json(rep)
    elif not obj.quiet:
        click.echo(f"\nbundle written to {bundle.path}\n")
        click.echo(render_table(rep))
    return rep


@cli.command()
@click.argument("model", required=False)
@click.option("-t", "--target", help="Device profile (see `edgecompile targets`). Default: cpu.")
@click.option("-b", "--backend", help="Engine, where the target allows several (ort, openvino, tvm, or auto: "
              "measure them here and ship the fastest within the accuracy bound; the cpu default).")
@click.option("-p", "--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "auto"]),
              help="Numeric precision. Default: the target's (fp32 on CPUs).")
@click.option("-o", "--output", type=click.Path(), help="Bundle directory to write (replaced atomically).")
@click.option("--data", type=click.Path(), help=".npz with arrays named after the inputs (+ optional labels).")
@click.option("-c", "--config", "config_path", type=click.Path(), help="TOML config (default: ./edgecompile.toml).")
@click.option("--strict", is_flag=True, default=None, help="Exit 3 when the requested precision cannot be met.")
@click.option("--force", is_flag=True, default=None, help="Ship the requested precision regardless.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads for measurement and the manifest.")
@click.option("--prune", "prune", type=float, metavar="RATIO",
              help="Structured pruning: remove this fraction of channels per layer, in [0, 1).")
@click.option("--finetune-epochs", type=click.IntRange(min=0), help="Fine-tuning epochs after pruning (default 3).")
@click.option("--distill/--no-distill", default=None,
              help="Fine-tune the pruned model with the unpruned one as teacher (default: on).")
@click.option("--tune", "tune_trials", type=click.IntRange(min=0), metavar="TRIALS",
              help="TVM: MetaSchedule trials (the tuning database is cached and reused).")
@click.option("--tune-timeout", type=click.FloatRange(min=0, min_open=True), metavar="MIN",
              help="TVM: stop tuning after MIN minutes.")
@click.option("--remote", metavar="HOST:PORT", help="TVM: tune on a board behind this RPC tracker (loopback only).")
@click.option("--key", "remote_key", metavar="KEY", help="TVM: the board's key on the --remote tracker, e.g. rpi5.")
@click.option("--quantize", "quantize", type=click.Choice(["static", "dynamic", "qat"]),
              help="INT8 mode for --precision int8 ([passes.quantize] mode). Default: static.")
@click.option("--calibrate", type=click.Choice(["minmax", "entropy", "percentile", "search"]),
              help="Calibration method for static INT8 ([passes.quantize] calibrate): search = per-tensor MSE "
                   "choice among min-max/percentile/entropy. Default: search.")
@click.option("--calib-samples", type=click.IntRange(min=1),
              help="Number of calibration samples ([passes.quantize] calib_samples). Default: 256.")
@click.option("--qat-epochs", "qat_epochs", type=click.IntRange(min=0),
              help="Training epochs for --quantize qat ([passes.quantize] qat_epochs). Default: 3.")
@click.option("--max-accuracy-drop", "max_accuracy_drop", type=click.FloatRange(min=0.0),
              help="Accuracy bound for int8/auto ([passes.quantize] max_accuracy_drop): percentage points for "
                   "top-1/agreement, relative %% for error metrics. Layers are kept in float until it holds.")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Neither read nor write the build cache (stages are recomputed; trained example weights are kept).")
@click.option("--json", "json_mode", is_flag=True, help="Print report.json to stdout.")
@verbosity_options
@click.pass_obj
def build(obj: Ctx, model, target, backend, precision, output, data, config_path, strict, force, threads,
          quantize, calibrate, calib_samples, qat_epochs, max_accuracy_drop, no_cache, prune, finetune_epochs,
          distill, tune_trials, tune_timeout, remote, remote_key, json_mode):
    """Build a bundle for MODEL (a models/<name> package, a built-in name, or a .onnx file).

    Flags override the config file (--config FILE, else ./edgecompile.toml), which overrides defaults.
    An identical rebuild is served from the content-addressed build cache (see `edgecompile cache`)."""
    from edgecompile.pipeline import build as run_build

    cfg = _load_config(config_path)
    cfg = cfg.with_overrides({"passes.quantize.mode": quantize, "passes.quantize.calibrate": calibrate,
                              "passes.quantize.calib_samples": calib_samples,
                              "passes.quantize.qat_epochs": qat_epochs,
                              "passes.quantize.max_accuracy_drop": max_accuracy_drop,
                              "tvm.remote": remote, "tvm.remote_key": remote_key})
    progress = obj.progress(json_mode)
    bundle = run_build(model, target, output=output, backend=backend, precision=precision, data=data,
                       config=cfg, strict=strict, force=force, threads=threads, progress=progress,
                       cache=not no_cache, prune=prune, finetune_epochs=finetune_epochs, distill=distill,
                       tune_trials=tune_trials, tune_timeout=tune_timeout)
    _show_built(obj, bundle, json_mode)


@cli.command()
@click.option("--teacher", required=True, help="Teacher model (a models/<name> package or built-in name).")
@click.option("--student", required=True, help="Student model to train and build (same inputs, same classes).")
@click.option("-t", "--target", help="Device profile for the student's bundle. Default: cpu.")
@click.option("-b", "--backend", help="Engine, where the target allows several.")
@click.option("-p", "--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "auto"]),
              help="Numeric precision of the student's bundle.")
@click.option("-o", "--output", type=click.Path(), help="Bundle directory to write (replaced atomically).")
@click.option("-c", "--config", "config_path", type=click.Path(), help="TOML config (default: ./edgecompile.toml).")
@click.option("--epochs", type=click.IntRange(min=1), help="Distillation epochs (default 10).")
@click.option("--temperature", type=float, help="Softmax temperature of the logit KD term (default 4).")
@click.option("--alpha", type=float, help="Weight of the KD term; 1 - alpha weighs cross-entropy (default 0.7).")
@click.option("--feature", "features", multiple=True, metavar="S[:T]",
              help="Feature KD between student layer S and teacher layer T (repeatable).")
@click.option("--compare", is_flag=True, default=None, help="Also train the student without KD and report both.")
@click.option("--json", "json_mode", is_flag=True, help="Print report.json to stdout.")
@verbosity_options
@click.pass_obj
def distill(obj: Ctx, teacher, student, target, backend, precision, output, config_path, epochs, temperature, alpha,
            features, compare, json_mode):
    """Train STUDENT against TEACHER (knowledge distillation), then build the student's bundle."""
    from edgecompile.pipeline import build as run_build

    cfg = _load_config(config_path)
    cfg = cfg.with_overrides({"passes.distill.teacher": teacher, "passes.distill.epochs": epochs,
                              "passes.distill.temperature": temperature, "passes.distill.alpha": alpha,
                              "passes.distill.features": list(features) or None, "passes.distill.compare": compare})
    progress = obj.progress(json_mode)
    bundle = run_build(student, target, output=output, backend=backend, precision=precision, config=cfg,
                       progress=progress)
    rep = _show_built(obj, bundle, json_mode)
    if not json_mode and not obj.quiet:
        for r in (rep.get("distillation") or {}).get("steps", []):
            if r.get("metric") is not None:
                click.echo(f"  {r['stage']:<48} {r['metric_name']} {r['metric']:.4f}  params {r['params']}")


@cli.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--rebuild", is_flag=True, help="Build again even if a cached engine exists.")
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable output.")
@verbosity_options
@click.pass_obj
def engine(obj: Ctx, bundle_dir, rebuild, json_mode):
    """Prebuild the TensorRT engine of a jetson bundle on this device (cached in DIR/cache/tensorrt/)."""
    from edgecompile.targets.tensorrt import prebuild

    info = prebuild(bundle_dir, progress=obj.progress(json_mode), rebuild=rebuild)
    if json_mode:
        _emit_json(info)
    elif not obj.quiet:
        click.echo(f"engine {info['origin']}: {info['engine']} ({info['bytes']} bytes, {info['tensorrt']})")


@cli.command()
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
    from edgecompile.report_sections import with_sections

    rep = load_report(bundle_dir)
    fmt = "json" if json_mode else fmt
    if fmt == "json":
        from edgecompile.bundle import _json_default

        text = json.dumps(_finite(with_sections(rep, bundle_dir)), indent=2, default=_json_default,
                          allow_nan=False) + "\n"
    elif fmt == "md":
        text = render_md(rep, bundle_dir)
    else:
        from edgecompile.report_html import render_html

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
        raise EdgeCompileError(f"cannot write {str(path)!r}: {exc.strerror}", hint="choose a writable -o path") from None


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--data", type=click.Path(), help=".npz with arrays named after the inputs (+ optional labels). "
              "Default: the evaluation split the bundle was measured on, else random inputs.")
@click.option("-n", "--samples", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Relative L2 error above which an intermediate tensor counts as diverged.")
@click.option("--no-localize", is_flag=True, help="Compare the outputs only; skip the search for the first diverging node.")
@click.option("--per-node", is_flag=True, help="Also list the error of every matched node (e.g. per-layer INT8 error).")
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable output.")
@verbosity_options
@click.pass_obj
def compare(obj: Ctx, a, b, data, samples, tolerance, no_localize, per_node, json_mode):
    """Run A and B (bundles, .onnx files or model packages) on the same inputs; find where B diverges from A."""
    from edgecompile.compare import compare as run_compare
    from edgecompile.compare import render_text

    res = run_compare(a, b, data=data, samples=samples, tolerance=tolerance, localize=not no_localize,
                      per_node=per_node, progress=obj.progress(json_mode))
    if json_mode:
        _emit_json(_finite(res))        # snr_db is null where the outputs are identical
    else:
        click.echo(render_text(res))


@cli.command()
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable output.")
def targets(json_mode):
    """List every target (device profile), its backends, and whether each is available here."""
    from edgecompile import registry
    from edgecompile.targets.profiles import PROFILES

    rows = []
    cache: dict[str, tuple[bool, str]] = {}
    for profile in PROFILES.values():
        for backend in profile.backends:
            if backend not in cache:
                if backend == "auto":
                    cache[backend] = (True, "measures the available cpu backends")
                elif backend not in registry.target_names():
                    cache[backend] = (False, "not implemented in this version")
                else:
                    a = registry.get_target(backend).check_available()
                    cache[backend] = (a.ok, a.reason)
            ok, reason = cache[backend]
            if ok and profile.cross_compiler and not shutil.which(profile.cross_compiler):
                ok, reason = False, f"{profile.cross_compiler} not found (apt-get install gcc-aarch64-linux-gnu)"
            rows.append({"target": profile.name, "aliases": list(profile.aliases), "description": profile.description,
                         "backend": backend, "default": backend == profile.default_backend,
                         "available": ok, "reason": reason})
    if json_mode:
        _emit_json(rows)
        return
    w = max(len(r["target"]) for r in rows)
    for r in rows:
        name = r["target"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        click.echo(f"{name:<{w + 10}} {r['backend'] + ('*' if r['default'] else ''):<10} "
                   f"{'yes' if r['available'] else 'no ':<4} {r['reason']}")
    click.echo("\n* default backend for the target")


@cli.command()
@click.argument("bundle_dir", metavar="DIR")
@click.option("-o", "--output", required=True, type=click.Path(), help="Baseline JSON file to write.")
@click.option("--data", type=click.Path(), help=".npz to evaluate on (default: the data the bundle was evaluated on).")
@click.option("--no-latency", is_flag=True, help="Do not record latency.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads.")
@click.pass_obj
def baseline(obj: Ctx, bundle_dir, output, data, no_latency, threads):
    """Record a baseline of bundle DIR: per-sample task-metric results, data sha256, latency, fingerprints."""
    from edgecompile.regression import make_baseline, save_baseline

    b = make_baseline(bundle_dir, data=data, measure_latency=not no_latency, threads=threads)
    path = save_baseline(b, output)
    if not obj.quiet:
        m = b["metric"]
        value = f"{100 * m['value']:.2f} %" if m["kind"] != "error" else f"{m['value']:.4g}"
        lat = f", latency p50 {b['latency_ms']['p50']:.3f} ms" if b.get("latency_ms") else ""
        click.echo(f"baseline written to {path}: {m['name']} {value} on {b['data']['identity']} "
                   f"(n = {m['n']}){lat}")


@cli.command()
@click.argument("bundle_dir", metavar="DIR")
@click.option("--baseline", "baseline_path", required=True, type=click.Path(), help="Baseline JSON (from `baseline`).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None, show_default=False,
              help="Allowed accuracy drop: points for percentage metrics, relative % for error metrics (default 1.0).")
@click.option("--max-latency-ratio", type=float, help="Gate latency: fail when candidate/baseline p50 exceeds this.")
@click.option("--data", type=click.Path(), help=".npz to evaluate on; differing from the baseline's data makes the test unpaired.")
@click.option("--alpha", type=click.FloatRange(min=1e-6, max=0.5), default=0.05, show_default=True,
              help="Significance level of the one-sided tests.")
@click.option("--junit", "junit_path", type=click.Path(), help="Write the verdict as JUnit XML.")
@click.option("--json", "json_mode", is_flag=True, help="Print the verdict as JSON.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads.")
@click.pass_obj
def check(obj: Ctx, bundle_dir, baseline_path, max_drop, max_latency_ratio, data, alpha, junit_path, json_mode, threads):
    """Re-evaluate bundle DIR on the baseline's data; exit 3 when a regression is shown (one-sided test, alpha 0.05)."""
    import os

    from edgecompile.errors import GateError
    from edgecompile.regression import DEFAULT_MAX_DROP, check as run_check
    from edgecompile.verdict import github_annotations, render_table, write_junit

    res = run_check(bundle_dir, baseline_path, max_drop=DEFAULT_MAX_DROP if max_drop is None else max_drop,
                    max_latency_ratio=max_latency_ratio, data=data, alpha=alpha, threads=threads)
    if junit_path:
        write_junit(res, junit_path)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(res):
            click.echo(line)
    if json_mode:
        _emit_json(res.to_dict())
    elif not obj.quiet or not res.ok:
        click.echo(render_table(res))
    if not res.ok:
        raise GateError(res.failures[0] if len(res.failures) == 1 else f"{len(res.failures)} gates failed: "
                        + "; ".join(res.failures),
                        hint="inspect the verdict above; raise --max-drop/--max-latency-ratio only if the loss is acceptable")


# -- run, bench, inspect, verify, cache, version: edgecompile/commands/ ----------------------------------
from edgecompile.commands import register as _register_commands  # noqa: E402

_register_commands(cli)


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="edgecompile", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except EdgeCompileError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        click.echo(f"error: internal error: {exc.__class__.__name__}: {exc}", err=True)
        click.echo("  hint: rerun with --debug for the traceback and report it", err=True)
        sys.exit(1)


__all__ = ["cli", "main", "ConfigError"]
