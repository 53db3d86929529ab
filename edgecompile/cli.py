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

        return Progress(quiet=self.quiet or json_mode, verbose=self.verbose)


def _version_callback(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from edgecompile import __version__
    from edgecompile.machine import toolchain_versions

    click.echo(f"edgecompile {__version__}")
    for name, ver in toolchain_versions().items():
        if name != "edgecompile":
            click.echo(f"  {name} {ver}")
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


def _emit_json(data) -> None:
    from edgecompile.bundle import _json_default

    click.echo(json.dumps(data, indent=2, default=_json_default))


@cli.command()
@click.argument("model", required=False)
@click.option("-t", "--target", help="Device profile (see `edgecompile targets`). Default: cpu.")
@click.option("-b", "--backend", help="Engine, where the target allows several (e.g. ort, openvino, tvm).")
@click.option("-p", "--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "auto"]),
              help="Numeric precision. Default: the target's (fp32 on CPUs).")
@click.option("-o", "--output", type=click.Path(), help="Bundle directory to write (replaced atomically).")
@click.option("--data", type=click.Path(), help=".npz with arrays named after the inputs (+ optional labels).")
@click.option("-c", "--config", "config_path", type=click.Path(), help="TOML config (default: ./edgecompile.toml).")
@click.option("--strict", is_flag=True, default=None, help="Exit 3 when the requested precision cannot be met.")
@click.option("--force", is_flag=True, default=None, help="Ship the requested precision regardless.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads for measurement and the manifest.")
@click.option("--tune", "tune_trials", type=click.IntRange(min=0), metavar="TRIALS",
              help="TVM: MetaSchedule trials (the tuning database is cached and reused).")
@click.option("--tune-timeout", type=click.FloatRange(min=0, min_open=True), metavar="MIN",
              help="TVM: stop tuning after MIN minutes.")
@click.option("--json", "json_mode", is_flag=True, help="Print report.json to stdout.")
@click.pass_obj
def build(obj: Ctx, model, target, backend, precision, output, data, config_path, strict, force, threads,
          tune_trials, tune_timeout, json_mode):
    """Build a bundle for MODEL (a models/<name> package, a built-in name, or a .onnx file)."""
    from edgecompile.config import Config, find_default_config
    from edgecompile.pipeline import build as run_build
    from edgecompile.report import load_report, render_table

    path = Path(config_path) if config_path else find_default_config()
    cfg = Config.from_file(path) if path else Config()
    progress = obj.progress(json_mode)
    bundle = run_build(model, target, output=output, backend=backend, precision=precision, data=data,
                       config=cfg, strict=strict, force=force, threads=threads, progress=progress,
                       tune_trials=tune_trials, tune_timeout=tune_timeout)
    rep = load_report(bundle.path)
    if json_mode:
        _emit_json(rep)
        return
    if not obj.quiet:
        click.echo(f"\nbundle written to {bundle.path}\n")
        click.echo(render_table(rep))


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
