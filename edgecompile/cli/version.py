"""`edgecompile version`: EdgeCompile's and the toolchain's versions (`--version` prints the same)."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option


def versions() -> dict:
    from edgecompile import __version__
    from edgecompile.runtime.machine import toolchain_versions

    return {"edgecompile": __version__, **{k: v for k, v in toolchain_versions().items() if k != "edgecompile"}}


def echo_versions() -> None:
    v = versions()
    click.echo(f"edgecompile {v.pop('edgecompile')}")
    for name, ver in v.items():
        click.echo(f"  {name} {ver}")


@click.command()
@json_option
def version(json_mode):
    """Print EdgeCompile's and the toolchain's versions."""
    if json_mode:
        emit_json(versions())
    else:
        echo_versions()
