import json
import os
import shutil

import pytest

import edgecompile
from edgecompile.runtime.bundle import Bundle
from edgecompile.compiler.writer import BundleWriter, recover
from edgecompile.errors import BundleError


def test_manifest_hashes_every_artifact(digits_bundle):
    m = digits_bundle.manifest
    assert m["schema_version"] == 1 and len(m["bundle_id"]) == 64
    assert set(m["artifacts"]) == {"model.onnx"}
    assert m["inputs"] == [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert m["outputs"][0]["name"] == "logits" and m["outputs"][0]["shape"][1] == 10
    assert Bundle.open(digits_bundle.path).verify() == ["model.onnx"]


def test_flipped_byte_is_refused(bundle_copy):
    p = bundle_copy / "model.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fails its sha256 check"):
        edgecompile.runtime.load(bundle_copy)


def test_missing_artifact_is_refused(bundle_copy):
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="artifact 'model.onnx' is missing"):
        edgecompile.runtime.load(bundle_copy)


def test_newer_schema_is_refused_clearly(bundle_copy):
    mp = bundle_copy / "manifest.json"
    m = json.loads(mp.read_text())
    m["schema_version"] = 99
    mp.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="schema_version 99 is newer than this runtime supports"):
        edgecompile.runtime.load(bundle_copy)


def test_derived_files_are_not_hashed(bundle_copy):
    (bundle_copy / "report.md").write_text("edited")
    (bundle_copy / "cache").mkdir()
    (bundle_copy / "cache" / "engine.bin").write_bytes(b"x")
    edgecompile.runtime.load(bundle_copy).close()


def _stage(dest, text):
    w = BundleWriter(dest)
    w.path("model.onnx").write_text(text)
    w.add_artifact("model.onnx", "model")
    w.write_manifest({"backend": "ort", "inputs": [], "outputs": []})
    return w


def test_commit_replaces_atomically_and_abort_keeps_old(tmp_path):
    dest = tmp_path / "b"
    _stage(dest, "v1").commit()
    assert (dest / "model.onnx").read_text() == "v1"
    w = _stage(dest, "v2")
    w.abort()                                     # a failed build
    assert (dest / "model.onnx").read_text() == "v1"
    assert not list(tmp_path.glob("b.tmp-*"))
    _stage(dest, "v3").commit()
    assert (dest / "model.onnx").read_text() == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_leftovers_of_a_killed_build_are_recovered(tmp_path):
    dest = tmp_path / "b"
    _stage(dest, "v1").commit()
    dead = tmp_path / "b.tmp-999999999-abcd"
    dead.mkdir()
    (dead / "junk").write_text("x")
    os.rename(dest, tmp_path / "b.old-999999999-abcd")     # killed between the two fallback renames
    actions = recover(dest)
    assert (dest / "model.onnx").read_text() == "v1"
    assert any("restored" in a for a in actions) and not dead.exists()


def test_refuses_to_replace_a_non_bundle_directory(tmp_path):
    d = tmp_path / "important"
    d.mkdir()
    (d / "thesis.txt").write_text("do not delete")
    with pytest.raises(BundleError, match="not empty and is not a bundle"):
        BundleWriter(d)
    assert (d / "thesis.txt").exists()


def test_failed_build_leaves_previous_bundle_untouched(digits_bundle, tmp_path):
    dest = tmp_path / "prev"
    shutil.copytree(digits_bundle.path, dest)
    before = (dest / "manifest.json").read_bytes()
    with pytest.raises(edgecompile.errors.EdgeCompileError):
        edgecompile.build("models/digits", target="cpu", output=dest, data=tmp_path / "missing.npz")
    assert (dest / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prev"]
