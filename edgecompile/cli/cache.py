"""`edgecompile cache info|clear`: the build cache (EDGECOMPILE_CACHE, default ~/.cache/edgecompile)."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group()
def cache():
    """Inspect or clear the build cache (stages `bundle` and `export`, trained weights in `models`, ...)."""


@cache.command()
@json_option
def info(json_mode):
    """Where the cache is, and entries and bytes per area."""
    from edgecompile.compiler.buildcache import StageCache

    res = StageCache().info()
    if json_mode:
        emit_json(res)
        return
    click.echo(f"cache: {res['path']}" + ("" if res["exists"] else " (empty, not created yet)"))
    for a in res["areas"]:
        click.echo(f"  {a['name']:<10} {a['kind']:<6} {a['entries']:>5} entries  {_size(a['bytes']):>10}")
    click.echo(f"  total {_size(res['bytes'])}")


@cache.command()
@click.argument("areas", nargs=-1)
@json_option
def clear(areas, json_mode):
    """Remove AREAS (e.g. bundle, export, models), or everything when none is given."""
    from edgecompile.compiler.buildcache import StageCache

    store = StageCache()
    known = store.area_names()
    unknown = [a for a in areas if a not in known]
    if unknown:
        raise click.BadParameter(f"unknown cache area(s) {', '.join(unknown)}; present: {', '.join(known) or 'none'}",
                                 param_hint="AREAS")
    res = store.clear(list(areas) or None)
    if json_mode:
        emit_json(res)
        return
    click.echo(f"removed {', '.join(a['name'] for a in res['removed']) or 'nothing'} "
               f"({_size(res['bytes'])}) from {res['path']}")
