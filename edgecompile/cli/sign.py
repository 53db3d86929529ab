"""`edgecompile keygen -o DIR` and `edgecompile sign BUNDLE --key K`: Ed25519 bundle signatures."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option


@click.command()
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for signing.key (mode 0600, keep it secret) and signing.pub (give it to devices).")
@click.option("--force", is_flag=True, help="Replace a key already in DIR.")
@json_option
def keygen(out_dir, force, json_mode):
    """Make an Ed25519 signing key pair."""
    from edgecompile.compiler.signing import keygen as make

    key, pub, kid = make(out_dir, force=force)
    if json_mode:
        emit_json({"key": str(key), "public_key": str(pub), "key_id": kid})
    else:
        click.echo(f"wrote {key} (private, mode 0600) and {pub} (public); key id {kid}")


@click.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--key", "key_path", required=True, type=click.Path(),
              help="signing.key from `edgecompile keygen`, or the directory holding it.")
@json_option
def sign(bundle_dir, key_path, json_mode):
    """Sign a bundle (its manifest, which covers every artifact hash): writes BUNDLE/signature.json."""
    from edgecompile.compiler.signing import sign as do_sign

    kid = do_sign(bundle_dir, key_path)
    if json_mode:
        emit_json({"ok": True, "path": str(bundle_dir), "key_id": kid})
    else:
        click.echo(f"signed {bundle_dir} with key {kid}")
