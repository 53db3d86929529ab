"""What every CLI command shares: the context object (verbosity, debug), -q/-v after the command name,
`--json` output, config loading and the printout of a built bundle. Each command module is a thin layer
over a Python API and takes `--json` for scripts (result on stdout; errors stay one line on stderr)."""
from __future__ import annotations

import json
from pathlib import Path

import click


class Ctx:
    def __init__(self, debug: bool, quiet: bool, verbose: bool):
        self.debug, self.quiet, self.verbose = debug, quiet, verbose

    def progress(self, json_mode: bool = False):
        from edgecompile.progress import Progress

        return Progress(quiet=self.quiet or json_mode, verbose=self.verbose and not self.quiet)


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


def emit_json(data) -> None:
    from edgecompile.compiler.writer import json_default as _json_default

    click.echo(json.dumps(data, indent=2, default=_json_default))


def _load_config(config_path):
    """--config FILE, else ./edgecompile.toml, else the defaults."""
    from edgecompile.compiler.config import Config, find_default_config

    path = Path(config_path) if config_path else find_default_config()
    return Config.from_file(path) if path else Config()


def _show_built(obj: Ctx, bundle, json_mode: bool) -> dict:
    """Print a freshly built bundle's report: report.json with --json, else the summary table."""
    from edgecompile.report import load_report, render_table

    rep = load_report(bundle.path)
    if json_mode:
        emit_json(rep)
    elif not obj.quiet:
        click.echo(f"\nbundle written to {bundle.path}\n")
        click.echo(render_table(rep))
    return rep


json_option = click.option("--json", "json_mode", is_flag=True, help="Machine-readable output on stdout.")


def echo_warnings(caught) -> list[str]:
    """Print the RuntimeWarnings caught around a run (one `warning:` line each); returns their texts."""
    notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    return notes


def save_npz(output, arrays: dict) -> str | None:
    """Write `arrays` to OUTPUT(.npz) atomically (temp file + rename); None when no output was asked for."""
    import os

    import numpy as np

    if not output:
        return None
    out = Path(output)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return str(out)
