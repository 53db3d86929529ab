"""Checking a bundle's Ed25519 signature (`DIR/signature.json`) against trusted public keys.

The signature covers the exact bytes of manifest.json, and the manifest covers every artifact's sha256,
so a valid signature vouches for the whole bundle. `cryptography` is imported only here, only when keys
are in play: unsigned bundles load without it when no keys are given.

signature.json: {"format": "edgecompile-signature", "version": 1, "algorithm": "ed25519",
                 "key_id": sha256(raw public key)[:16] hex, "manifest_sha256": hex, "signature": base64}
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from edgecompile.errors import BundleError, ConfigError

SIGNATURE = "signature.json"
PUBLIC_FILE, KEY_FILE = "signing.pub", "signing.key"
CONTEXT = b"edgecompile-bundle-signature-v1\n"     # domain separation: these bytes are signed, then the manifest
ENV = "EDGECOMPILE_TRUSTED_KEYS"


def crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BundleError("checking bundle signatures needs the 'cryptography' package, which is not installed",
                          hint="pip install 'edgecompile[signing]'") from None
    return serialization, ed25519


def key_id(public_key) -> str:
    serialization, _ = crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | Path):
    """An Ed25519 public key from a PEM file, or from DIR/signing.pub when `path` is a directory."""
    return load_pem_key(path, private=False)


def load_pem_key(path: str | Path, *, private: bool):
    """An Ed25519 key from a PEM file (private: unencrypted PKCS#8), or from DIR/signing.key|signing.pub;
    ConfigError naming the file and what to pass instead."""
    serialization, ed25519 = crypto()
    p = Path(path)
    if p.is_dir():
        p = p / (KEY_FILE if private else PUBLIC_FILE)
    what, wanted, kind = (("signing key", "the signing.key (or its directory)", "an unencrypted PEM private key")
                          if private else ("trusted key", "the signing.pub", "a PEM public key"))
    try:
        data = p.read_bytes()[:64 << 10]
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(p)!r}: {exc.strerror}",
                          hint=f"pass {wanted} written by `edgecompile keygen`") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what} {str(p)!r} is not {kind} ({exc})",
                          hint=f"pass {wanted} written by `edgecompile keygen`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey):
        raise ConfigError(f"{what} {str(p)!r} is not an Ed25519 key", hint="make one with `edgecompile keygen`")
    return key


def trusted_from_env() -> list[str]:
    value = os.environ.get(ENV, "")
    return [v for v in value.split(os.pathsep) if v.strip()]


def signed_message(manifest_bytes: bytes) -> bytes:
    return CONTEXT + manifest_bytes


def check_signature(bundle_path: Path, manifest_bytes: bytes, trusted_keys) -> str:
    """The key id that signed these manifest bytes; BundleError if unsigned or signed by no trusted key."""
    keys = [k if not isinstance(k, (str, Path)) else load_public_key(k) for k in trusted_keys]
    sig_path = Path(bundle_path) / SIGNATURE
    hint = "sign it with `edgecompile sign DIR --key KEY` using a trusted key, or load it without trusted keys"
    if sig_path.is_symlink() or not sig_path.is_file():
        raise BundleError(f"{bundle_path}: bundle is not signed (no {SIGNATURE}) and trusted keys are required",
                          hint=hint)
    from edgecompile.runtime.schema import parse_limited

    doc = parse_limited(sig_path.read_bytes()[:64 << 10], sig_path, what="signature", max_bytes=64 << 10,
                        max_depth=4)
    if not isinstance(doc, dict) or doc.get("algorithm") != "ed25519" or not isinstance(doc.get("signature"), str):
        raise BundleError(f"{sig_path}: not an edgecompile Ed25519 signature file", hint=hint)
    if doc.get("manifest_sha256") != hashlib.sha256(manifest_bytes).hexdigest():
        raise BundleError(f"{bundle_path}: the signature is for another manifest (the bundle changed after signing)",
                          hint=hint)
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except ValueError:
        raise BundleError(f"{sig_path}: signature is not base64", hint=hint) from None
    from cryptography.exceptions import InvalidSignature

    for key in keys:
        try:
            key.verify(signature, signed_message(manifest_bytes))
            return key_id(key)
        except InvalidSignature:
            continue
    raise BundleError(f"{bundle_path}: the signature does not verify with any of the {len(keys)} trusted key(s) "
                      f"(signed by key {str(doc.get('key_id'))[:16]!r})", hint=hint)


def signature_doc(private_key, manifest_bytes: bytes) -> str:
    return json.dumps({
        "format": "edgecompile-signature", "version": 1, "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": base64.b64encode(private_key.sign(signed_message(manifest_bytes))).decode(),
    }, indent=2) + "\n"
