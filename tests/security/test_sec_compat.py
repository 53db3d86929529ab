"""Schema validation rejects nothing a valid build writes: the suite's digits bundles (ORT, TVM, OpenVINO,
Jetson) pass `Bundle.open` and `edgecompile verify`, and a schema-version-1 manifest written before this
runtime (no signature, no new fields) still loads."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sechelpers import run_cli

import edgecompile.runtime as runtime
from edgecompile.runtime.bundle import Bundle
from edgecompile.runtime.schema import check_manifest


@pytest.fixture(scope="module")
def openvino_bundle(tmp_path_factory):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgecompile[openvino]')")
    import edgecompile

    return edgecompile.build("models/digits", target="cpu", backend="openvino",
                             output=tmp_path_factory.mktemp("ov") / "digits-ov")


@pytest.mark.parametrize("fixture", ["digits_bundle", "tvm_bundle", "openvino_bundle", "trt_bundle"])
def test_built_bundles_pass_schema_and_verify(request, fixture):
    bundle = request.getfixturevalue(fixture)
    opened = Bundle.open(bundle.path)
    assert opened.manifest == json.loads((bundle.path / "manifest.json").read_text())
    rc, out, err = run_cli("verify", bundle.path)
    assert rc == 0 and out.startswith("ok:"), err


def test_version_1_manifest_from_before_still_loads(digits_bundle, tmp_path):
    """The manifest fields a 0.1 build wrote (main before this change), nothing else: loads and runs."""
    dest = tmp_path / "old"
    shutil.copytree(digits_bundle.path, dest)
    m = json.loads((dest / "manifest.json").read_text())
    old = {k: m[k] for k in ("schema_version", "bundle_id", "created_by", "model", "target", "backend", "profile",
                             "precision", "requested_precision", "inputs", "outputs", "preprocessing", "labels",
                             "metric", "passes", "backend_options", "artifact_status", "config", "data",
                             "toolchain", "measured_on", "runs_on_host", "artifacts")}
    assert old["schema_version"] == 1
    check_manifest(old, dest / "manifest.json")
    (dest / "manifest.json").write_text(json.dumps(old, indent=2))
    with runtime.load(dest) as r:
        assert r(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)
