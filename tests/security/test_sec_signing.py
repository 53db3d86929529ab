"""Signed bundles: keygen, sign, verify --trusted-key, runtime.load(trusted_keys=...), EDGECOMPILE_TRUSTED_KEYS."""
from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys

import pytest
import sechelpers
from sechelpers import assert_one_line_error, read_manifest, run_cli, write_manifest

import edgecompile.runtime as runtime
from edgecompile.errors import BundleError, ConfigError

tiny_onnx, tiny_bundle, bundle = sechelpers.tiny_onnx, sechelpers.tiny_bundle, sechelpers.bundle   # fixtures


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs made by the CLI: (trusted dir, other dir)."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("trusted", "other"):
        rc, out, err = run_cli("keygen", "-o", root / name)
        assert rc == 0, err
    return root / "trusted", root / "other"


def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(keys):
    trusted, _ = keys
    assert stat.S_IMODE((trusted / "signing.key").stat().st_mode) == 0o600
    assert (trusted / "signing.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    rc, out, err = run_cli("keygen", "-o", trusted)
    assert_one_line_error(rc, out, err, codes=(2,), contains="already holds a signing key")


def test_signed_bundle_verifies_and_loads(bundle, keys):
    trusted, other = keys
    rc, out, err = run_cli("sign", bundle, "--key", trusted / "signing.key")
    assert rc == 0, err
    doc = json.loads((bundle / "signature.json").read_text())
    assert doc["algorithm"] == "ed25519"
    rc, out, err = run_cli("verify", bundle, "--trusted-key", other, "--trusted-key", trusted / "signing.pub")
    assert rc == 0 and "signed by key" in out, err
    runtime.load(bundle, trusted_keys=[trusted / "signing.pub"]).close()


def test_unsigned_bundle_refused_when_keys_given(bundle, keys):
    trusted, _ = keys
    with pytest.raises(BundleError, match="not signed"):
        runtime.load(bundle, trusted_keys=[trusted])
    rc, out, err = run_cli("verify", bundle, "--trusted-key", trusted)
    assert_one_line_error(rc, out, err, codes=(1,), contains="not signed")


def test_env_trusted_keys_refuse_other_signer(bundle, keys):
    trusted, other = keys
    rc, _, err = run_cli("sign", bundle, "--key", other)
    assert rc == 0, err
    code = f"import edgecompile.runtime as r; r.load({str(bundle)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "EDGECOMPILE_TRUSTED_KEYS": str(trusted / "signing.pub")})
    assert proc.returncode != 0 and "does not verify with any of the 1 trusted key" in proc.stderr


def test_manifest_changed_after_signing_is_refused(bundle, keys):
    trusted, _ = keys
    assert run_cli("sign", bundle, "--key", trusted)[0] == 0
    m = read_manifest(bundle)
    m["labels"] = ["forged"]
    write_manifest(bundle, m)
    with pytest.raises(BundleError, match="another manifest"):
        runtime.load(bundle, trusted_keys=[trusted])


def test_forged_signature_with_matching_manifest_hash_is_refused(bundle, keys):
    trusted, _ = keys
    assert run_cli("sign", bundle, "--key", trusted)[0] == 0
    doc = json.loads((bundle / "signature.json").read_text())
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    (bundle / "signature.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="does not verify"):
        runtime.load(bundle, trusted_keys=[trusted])


def test_garbage_signature_file(bundle, keys):
    trusted, _ = keys
    (bundle / "signature.json").write_text("[" * 100)
    with pytest.raises(BundleError, match="signature"):
        runtime.load(bundle, trusted_keys=[trusted])


def test_bad_trusted_key_file_is_config_error(bundle, tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        runtime.load(bundle, trusted_keys=[bad])
    rc, out, err = run_cli("sign", bundle, "--key", bad)
    assert_one_line_error(rc, out, err, codes=(2,), contains="not an unencrypted PEM private key")


def test_sign_refuses_a_tampered_bundle(bundle, keys):
    trusted, _ = keys
    (bundle / "model.onnx").write_bytes(b"tampered")
    rc, out, err = run_cli("sign", bundle, "--key", trusted)
    assert_one_line_error(rc, out, err, codes=(1,), contains="sha256")
    assert not (bundle / "signature.json").exists()


def test_unsigned_loads_without_keys_and_without_importing_cryptography(tiny_bundle):
    code = ("import sys, edgecompile.runtime as r; r.load(sys.argv[1]).close(); "
            "print('cryptography' in sys.modules)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "EDGECOMPILE_TRUSTED_KEYS"}
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_bundle)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
