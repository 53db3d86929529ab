"""`edgecompile verify DIR`: schema, link rules and sha256 of every artifact, and with --trusted-key the
signature; exit 1 with the reason if any fails."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option


@click.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(),
              help="Require a signature by this Ed25519 public key (signing.pub or its directory); repeatable.")
@json_option
def verify(bundle_dir, trusted_keys, json_mode):
    """Check the manifest's schema, the link rules and every artifact's sha256 (exit 1 on any failure)."""
    from edgecompile.errors import BundleError
    from edgecompile.runtime.bundle import Bundle

    signer = None
    try:
        bundle = Bundle.open(bundle_dir, verify=True)
        if trusted_keys:
            signer = bundle.check_signature(list(trusted_keys))
    except BundleError as exc:
        if json_mode:
            emit_json({"ok": False, "path": str(bundle_dir), "error": exc.message, "hint": exc.hint})
        raise
    arts = bundle.manifest["artifacts"]
    if json_mode:
        emit_json({"ok": True, "path": str(bundle_dir), "bundle_id": bundle.bundle_id,
                   "schema_version": bundle.manifest["schema_version"], "signed_by": signer,
                   "artifacts": {k: {"sha256": v["sha256"], "size": v.get("size"), "role": v.get("role")}
                                 for k, v in arts.items()}})
        return
    signed = f", signed by key {signer}" if signer else ""
    click.echo(f"ok: {bundle_dir} (schema {bundle.manifest['schema_version']}, bundle {bundle.bundle_id[:16]}{signed})")
    for rel, info in sorted(arts.items()):
        click.echo(f"  {info['sha256'][:16]}  {rel} ({info.get('role')}, {info.get('size')} B)")
