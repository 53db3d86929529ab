"""`edgecompile verify DIR`: schema and sha256 of every artifact; exit 1 with the reason if not."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option


@click.command()
@click.argument("bundle_dir", type=click.Path())
@json_option
def verify(bundle_dir, json_mode):
    """Check the bundle's manifest schema and every artifact's sha256 (exit 1 on any mismatch)."""
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.errors import BundleError

    try:
        bundle = Bundle.open(bundle_dir, verify=True)
    except BundleError as exc:
        if json_mode:
            emit_json({"ok": False, "path": str(bundle_dir), "error": exc.message, "hint": exc.hint})
        raise
    arts = bundle.manifest["artifacts"]
    if json_mode:
        emit_json({"ok": True, "path": str(bundle_dir), "bundle_id": bundle.bundle_id,
                   "schema_version": bundle.manifest["schema_version"],
                   "artifacts": {k: {"sha256": v["sha256"], "size": v.get("size"), "role": v.get("role")}
                                 for k, v in arts.items()}})
        return
    click.echo(f"ok: {bundle_dir} (schema {bundle.manifest['schema_version']}, bundle {bundle.bundle_id[:16]})")
    for rel, info in sorted(arts.items()):
        click.echo(f"  {info['sha256'][:16]}  {rel} ({info.get('role')}, {info.get('size')} B)")
