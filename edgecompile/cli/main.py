"""The command line: a thin layer over the Python API (`edgecompile.cli.main:main`).

Exit codes: 0 ok, 1 error, 2 usage or config error, 3 a gate failed. Errors print one line
(plus a hint); `--debug` shows the traceback.
"""
from __future__ import annotations

import sys
import traceback

import click

from edgecompile.cli import build, cache, device, doctor, gate, generate, inspect, run, serve, sign, verify, version
from edgecompile.cli.common import Ctx
from edgecompile.errors import ConfigError, EdgeCompileError


def _version_callback(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from edgecompile.cli.version import echo_versions

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
    from edgecompile.compiler.validate import quiet_library_logs

    ctx.obj = Ctx(debug, quiet, verbose)
    quiet_library_logs(show=debug or verbose)


COMMANDS = (build.build, build.distill, build.engine, build.targets, gate.report, gate.compare, gate.baseline,
            gate.check, run.run, run.bench, inspect.inspect, verify.verify, cache.cache, version.version,
            device.device, doctor.doctor, serve.serve, sign.keygen, sign.sign, generate.generate)
for _command in COMMANDS:
    cli.add_command(_command)


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
