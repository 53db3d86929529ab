"""Artifacts stay inside the bundle: no symlinks (file or directory), no hard links, ONNX external data only
from listed, hashed artifacts — refused before an engine opens anything, also when the hashes match."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import sechelpers
from sechelpers import assert_one_line_error, read_manifest, run_cli, tiny_model, write_manifest

import edgecompile.runtime as runtime
from edgecompile.errors import BundleError
from edgecompile.runtime.bundle import Bundle

tiny_onnx, tiny_bundle, bundle = sechelpers.tiny_onnx, sechelpers.tiny_bundle, sechelpers.bundle   # fixtures


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _relist(bundle, files: dict) -> None:
    """Rewrite the manifest's artifacts as {rel: role}, with the files' real hashes (as a forger would)."""
    m = read_manifest(bundle)
    m["artifacts"] = {rel: {"sha256": _sha(bundle / rel), "size": (bundle / rel).stat().st_size, "role": role}
                      for rel, role in files.items()}
    write_manifest(bundle, m)


def test_symlinked_artifact_outside_is_refused(bundle, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.move(bundle / "model.onnx", outside)
    os.symlink(outside, bundle / "model.onnx")
    assert _sha(bundle / "model.onnx") == read_manifest(bundle)["artifacts"]["model.onnx"]["sha256"]
    with pytest.raises(BundleError, match="symlink"):
        runtime.load(bundle)
    rc, out, err = run_cli("verify", bundle)
    assert_one_line_error(rc, out, err, codes=(1,), contains="symlink")


def test_symlinked_directory_is_refused(bundle, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(bundle / "model.onnx", outside / "model.onnx")
    os.symlink(outside, bundle / "sub")
    _relist(bundle, {"sub/model.onnx": "model"})
    with pytest.raises(BundleError, match=r"symlink \(sub\)"):
        runtime.load(bundle)


def test_hard_link_is_refused(bundle, tmp_path):
    os.link(bundle / "model.onnx", tmp_path / "outside-link.onnx")
    with pytest.raises(BundleError, match="2 hard links"):
        runtime.load(bundle)


def test_symlinked_manifest_is_refused(bundle, tmp_path):
    shutil.move(bundle / "manifest.json", tmp_path / "m.json")
    os.symlink(tmp_path / "m.json", bundle / "manifest.json")
    with pytest.raises(BundleError, match="not a bundle"):
        runtime.load(bundle)


def test_directory_in_place_of_artifact(bundle):
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").mkdir()
    with pytest.raises(BundleError, match="not a regular file"):
        runtime.load(bundle)


def test_fifo_in_place_of_artifact_does_not_hang(bundle):
    (bundle / "model.onnx").unlink()
    os.mkfifo(bundle / "model.onnx")
    with pytest.raises(BundleError, match="not a regular file|cannot be opened"):
        Bundle.open(bundle, verify=False)


def test_missing_artifact(bundle):
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="is missing"):
        runtime.load(bundle)


def test_symlinked_cache_dir_is_refused(bundle, tmp_path):
    os.symlink(tmp_path, bundle / "cache")
    with pytest.raises(BundleError, match="symlink"):
        Bundle.open(bundle).cache_dir()


def _external_model(location: str):
    """The tiny model with W stored externally at `location` (not checked: a forger writes any string)."""
    from onnx.external_data_helper import set_external_data

    model = tiny_model()
    w = model.graph.initializer[0]
    raw = w.raw_data or np.arange(4, dtype=np.float32).tobytes()
    set_external_data(w, location=location, offset=0, length=len(raw))
    w.ClearField("raw_data")
    w.ClearField("float_data")
    return model, raw


def _bundle_with_external(bundle, location: str, list_it: bool, data_at=None):
    model, raw = _external_model(location)
    (bundle / "model.onnx").write_bytes(model.SerializeToString())
    target = data_at or (bundle / location)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    files = {"model.onnx": "model"}
    if list_it:
        files[location] = "external-data"
    _relist(bundle, files)


def test_listed_external_data_loads_and_runs(bundle):
    _bundle_with_external(bundle, "weights.bin", list_it=True)
    with runtime.load(bundle) as r:
        y = r(np.zeros((1, 4), np.float32))
    np.testing.assert_array_equal(y, [[0, 1, 2, 3]])


def test_unlisted_external_data_is_refused(bundle):
    _bundle_with_external(bundle, "weights.bin", list_it=False)
    with pytest.raises(BundleError, match="not a listed artifact"):
        runtime.load(bundle)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "a/../../x.bin", "sub\\..\\..\\x.bin"])
def test_external_data_escaping_the_bundle_is_refused(bundle, tmp_path, location):
    model, raw = _external_model(location)
    (bundle / "model.onnx").write_bytes(model.SerializeToString())
    (bundle.parent / "outside.bin").write_bytes(raw)
    _relist(bundle, {"model.onnx": "model"})
    with pytest.raises(BundleError, match="escapes the bundle"):
        runtime.load(bundle)
    rc, out, err = run_cli("verify", bundle)
    assert_one_line_error(rc, out, err, codes=(1,), contains="escapes the bundle")


def test_external_data_through_symlink_is_refused(bundle, tmp_path):
    _bundle_with_external(bundle, "weights.bin", list_it=True)
    shutil.move(bundle / "weights.bin", tmp_path / "w.bin")
    os.symlink(tmp_path / "w.bin", bundle / "weights.bin")
    with pytest.raises(BundleError, match="symlink"):
        runtime.load(bundle)


def test_truncated_onnx_artifact_is_a_bundle_error(bundle):
    data = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(data[: len(data) // 2])
    _relist(bundle, {"model.onnx": "model"})
    with pytest.raises(BundleError, match="not a valid model file"):
        runtime.load(bundle)


def test_external_locations_reader_matches_onnx():
    """The runtime's protobuf walker finds what onnx's own helper finds (initializers and node attributes)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    from edgecompile.runtime.onnxrefs import external_locations

    model, _ = _external_model("w0.bin")
    t = numpy_helper.from_array(np.ones(3, np.float32), "c")
    set_external_data(t, location="in-attr.bin")
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value=t))
    found = external_locations(model.SerializeToString())
    expected = [e.value for tensor in onnx.external_data_helper._get_all_tensors(model)
                for e in tensor.external_data if e.key == "location"]
    assert sorted(found) == sorted(expected) == ["in-attr.bin", "w0.bin"]
