"""`edgecompile report DIR [--format ...]`: print a bundle's report in one of the report formats."""
from __future__ import annotations

import click

from edgecompile import report as report_mod


@click.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("-f", "--format", "fmt", type=click.Choice(report_mod.formats()), default="md", show_default=True,
              help="Output format (rendered from the bundle's report.json).")
@click.option("--json", "json_mode", is_flag=True, help="Same as --format json.")
def report(bundle_dir, fmt, json_mode):
    """Print the accuracy/latency report of the bundle in BUNDLE_DIR."""
    from edgecompile.bundle import Bundle
    from edgecompile.errors import BundleError

    bundle = Bundle.open(bundle_dir, verify=False)
    try:
        rep = bundle.report()
    except ValueError as exc:
        raise BundleError(f"{bundle_dir}: report.json is not valid JSON ({exc})",
                          hint="rebuild the bundle to regenerate its report") from None
    if rep is None:
        raise BundleError(f"{bundle_dir}: the bundle has no report.json",
                          hint="rebuild the bundle with `edgecompile build` to measure it")
    click.echo(report_mod.render(rep, "json" if json_mode else fmt), nl=False)
