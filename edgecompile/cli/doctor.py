"""`edgecompile doctor`: the checks of `edgecompile.verify.doctor`, as text or JSON; exit 1 when something the
installed extras promise does not work."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option
from edgecompile.verify.doctor import diagnose


_MARK = {"ok": "ok", "fail": "FAIL", "unavailable": "no", "info": ".."}


def render(result: dict) -> str:
    lines = [f"extras promised: {', '.join(result['extras']) or 'none'} (from {result['extras_from']})"
             + ("; set-up promised" if result["setup_promised"] else "")]
    group = None
    for c in result["checks"]:
        if c["group"] != group:
            group = c["group"]
            lines.append(group)
        line = f"  {_MARK[c['status']]:<4}  {c['name']}: {c['detail']}"
        if c["status"] in ("fail", "unavailable") and c["hint"]:
            line += f"  (fix: {c['hint']})"
        if c["status"] == "fail":
            line += f"  [promised by: {', '.join(n for n in c['needed_by'])}]"
        lines.append(line)
    n = len(result["failures"])
    lines.append("everything the installed extras promise works" if not n
                 else f"{n} problem{'s' if n > 1 else ''}: " + "; ".join(result["failures"]))
    return "\n".join(lines)


@click.command()
@click.option("--extras", "extras", default=None, metavar="A,B",
              help="Check what these extras promise (default: $EDGECOMPILE_EXTRAS, the set-up stamp, "
                   "else the fully installed extras).")
@json_option
def doctor(extras, json_mode):
    """What works on this machine and why not: engines, the aarch64 linker, Chromium, CPU features,
    example assets, the cache. Exit 1 when something the installed extras promise does not work."""
    result = diagnose(extras)
    if json_mode:
        emit_json(result)
    else:
        click.echo(render(result))
    return 0 if result["ok"] else 1
