"""CLI commands beyond `build` and `targets`, one small module per concern, registered on the
`edgecompile` click group by `register()`. Each command is a thin layer over a Python API and
takes `--json` for scripts (machine-readable result on stdout; errors stay one line on stderr)."""
from __future__ import annotations

import json

import click


def emit_json(data) -> None:
    from edgecompile.bundle import _json_default

    click.echo(json.dumps(data, indent=2, default=_json_default))


json_option = click.option("--json", "json_mode", is_flag=True, help="Machine-readable output on stdout.")


def register(group: click.Group) -> None:
    from edgecompile.commands import cache, device, generate, inspect, run, verify, version

    for command in (run.run, run.bench, inspect.inspect, verify.verify, cache.cache,
                    version.version, device.device, generate.generate):
        group.add_command(command)
