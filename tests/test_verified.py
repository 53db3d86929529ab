"""runtime.load re-hashes an artifact only when it may have changed since it last matched its sha256."""
import hashlib
import json
import os

import pytest

import edgecompile
from edgecompile.errors import BundleError
from edgecompile.runtime import verified
from edgecompile.runtime.bundle import Bundle


@pytest.fixture
def hashes(monkeypatch):
    """One entry per artifact hashed (the real hashlib.file_digest does the work)."""
    seen = []
    real = hashlib.file_digest

    def counting(f, digest):
        seen.append("model.onnx")         # the digits bundle has one artifact
        return real(f, digest)

    monkeypatch.setattr(hashlib, "file_digest", counting)
    monkeypatch.delenv("EDGECOMPILE_REVERIFY", raising=False)
    return seen


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGECOMPILE_CACHE", str(root))
    return root


def _load(path):
    with edgecompile.runtime.load(path):
        pass


def test_an_unchanged_bundle_is_hashed_once_and_any_write_is_caught(bundle_copy, cache, hashes, monkeypatch):
    monkeypatch.setattr(verified, "RACY_SECONDS", 0)     # the copy was written just now
    _load(bundle_copy)
    assert hashes == ["model.onnx"]
    record = json.loads(next((cache / "verified").glob("*.json")).read_text())
    assert list(record["artifacts"]) == ["model.onnx"]
    _load(bundle_copy)
    assert hashes == ["model.onnx"]                        # the record vouched for it
    monkeypatch.setenv("EDGECOMPILE_REVERIFY", "1")
    _load(bundle_copy)
    assert hashes == ["model.onnx"] * 2
    monkeypatch.delenv("EDGECOMPILE_REVERIFY")
    p = bundle_copy / "model.onnx"                         # same size, same mtime: only the ctime moves
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(p, "r+b") as f:
        f.write(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BundleError, match="fails its sha256 check"):
        _load(bundle_copy)


def test_a_file_changed_within_the_racy_window_is_not_recorded(bundle_copy, cache, hashes):
    _load(bundle_copy)                                     # written < RACY_SECONDS ago: not recorded
    _load(bundle_copy)
    assert hashes == ["model.onnx"] * 2
    assert not list(cache.glob("verified/*.json"))


def test_explicit_verification_always_hashes(bundle_copy, cache, hashes, monkeypatch):
    monkeypatch.setattr(verified, "RACY_SECONDS", 0)
    _load(bundle_copy)
    Bundle.open(bundle_copy)                               # what `edgecompile verify` and signing do
    assert hashes == ["model.onnx"] * 2


def test_a_malformed_record_is_ignored_and_rewritten(bundle_copy, cache, hashes, monkeypatch):
    monkeypatch.setattr(verified, "RACY_SECONDS", 0)
    _load(bundle_copy)
    for rec in (cache / "verified").glob("*.json"):
        rec.write_text('{"artifacts": {"model.onnx": "not a list"')
    _load(bundle_copy)                                     # the record is unreadable: hashed, record rewritten
    _load(bundle_copy)                                     # trusted again
    assert hashes == ["model.onnx"] * 2


def test_an_unwritable_record_store_only_means_hashing(bundle_copy, cache, hashes, monkeypatch):
    monkeypatch.setattr(verified, "RACY_SECONDS", 0)
    cache.write_text("a file where the cache directory should be")
    for _ in range(3):
        _load(bundle_copy)
    assert hashes == ["model.onnx"] * 3
