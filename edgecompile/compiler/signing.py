"""Making Ed25519 keys and signing bundles (`edgecompile keygen`, `edgecompile sign`); checking is the runtime's."""
from __future__ import annotations

import os
from pathlib import Path

from edgecompile.errors import BundleError, ConfigError
from edgecompile.runtime.signing import KEY_FILE, PUBLIC_FILE, SIGNATURE, crypto, key_id, load_pem_key, signature_doc


def keygen(out_dir: str | Path, force: bool = False) -> tuple[Path, Path, str]:
    """Write DIR/signing.key (PKCS#8 PEM, mode 0600) and DIR/signing.pub; (key path, pub path, key id)."""
    serialization, ed25519 = crypto()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / KEY_FILE, out / PUBLIC_FILE
    if not force and (key_path.exists() or pub_path.exists()):
        raise ConfigError(f"{out} already holds a signing key", hint="pass --force to replace it, or another -o DIR")
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_atomic(key_path, pem, mode=0o600)
    _write_atomic(pub_path, pub, mode=0o644)
    return key_path, pub_path, key_id(private.public_key())


def load_private_key(path: str | Path):
    return load_pem_key(path, private=True)


def sign(bundle_dir: str | Path, key_path: str | Path) -> str:
    """Verify the bundle, then write DIR/signature.json over its manifest atomically; returns the key id."""
    from edgecompile.runtime.bundle import Bundle

    key = load_private_key(key_path)
    bundle = Bundle.open(bundle_dir, verify=True)        # never vouch for a bundle that fails its own checks
    if not bundle.raw:
        raise BundleError(f"{bundle_dir}: could not read its manifest bytes", hint="rebuild the bundle")
    _write_atomic(bundle.path / SIGNATURE, signature_doc(key, bundle.raw).encode(), mode=0o644)
    return key_id(key.public_key())


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
