import json

import numpy as np
import pytest

import edgecompile
from edgecompile.errors import ConfigError, DataError, ModelLoadError


def test_digits_cpu_bundle_meets_the_foundation_targets(digits_bundle):
    rep = json.loads((digits_bundle.path / "report.json").read_text())
    acc = rep["accuracy"]
    assert acc["metric"] == "top1" and acc["higher_is_better"] is True
    assert acc["candidate"] >= 0.95 and abs(acc["delta"]) <= 0.005 and acc["n"] == 360
    assert acc["ci95"][0] <= acc["candidate"] <= acc["ci95"][1]
    lat = rep["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["runs"] >= 50 and lat["batch"] == 1
    assert rep["cold_start"]["torch_imported"] is False and rep["cold_start_ms"] > 0
    assert rep["peak_rss_mb"] > 0 and rep["size_bytes"] > 0
    assert rep["machine"]["cpu"]["model"]
    assert (rep["target"], rep["backend"], rep["precision"]) == ("cpu", "ort", "fp32")
    assert rep["export"]["outputs"]["logits"]["agreement"] == 1.0
    assert [p["name"] for p in rep["passes"]] == ["simplify"]
    md = (digits_bundle.path / "report.md").read_text()
    assert "latency p50/p90/p99" in md and "accuracy (top1)" in md


def test_bundle_outputs_match_torch(digits_bundle, digits_source):
    from edgecompile.compiler.training import predict

    ds = digits_source.dataset("test")
    expected = predict(digits_source.module(), ds)[0]
    with edgecompile.runtime.load(digits_bundle.path) as r:
        got = r(ds.inputs["input"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_onnx_source_with_npz_data(digits_bundle, digits_source, tmp_path):
    ds = digits_source.dataset("test")
    npz = tmp_path / "eval.npz"
    np.savez(npz, input=ds.inputs["input"][:100], labels=ds.labels[:100])
    out = edgecompile.build(
        digits_bundle.path / "model.onnx", target="cpu", backend="ort", output=tmp_path / "b", data=npz
    )
    rep = out.report()
    assert rep["accuracy"]["reference_model"].startswith("source onnx")
    assert rep["accuracy"]["n"] == 100 and rep["accuracy"]["delta"] == 0.0


def test_onnx_source_without_labels_uses_agreement(digits_bundle, digits_source, tmp_path):
    npz = tmp_path / "unlabelled.npz"
    np.savez(npz, input=digits_source.dataset("test").inputs["input"][:50])
    rep = edgecompile.build(digits_bundle.path / "model.onnx", backend="ort", output=tmp_path / "b", data=npz).report()
    assert rep["accuracy"]["metric"] == "confident_agreement" and rep["accuracy"]["candidate"] == 1.0


@pytest.mark.parametrize("arrays, needle", [
    ({"image": np.zeros((4, 1, 8, 8), np.float32)}, "no array named 'input'"),
    ({"input": np.zeros((4, 1, 8, 8), np.float64)}, "dtype float64"),
    ({"input": np.zeros((4, 8, 8), np.float32)}, "shape [4, 8, 8]"),
    ({"input": np.full((4, 1, 8, 8), np.nan, np.float32)}, "NaN"),
    ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "zero samples"),
])
def test_bad_data_files(digits_bundle, tmp_path, arrays, needle):
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    with pytest.raises(DataError) as e:
        edgecompile.build(digits_bundle.path / "model.onnx", backend="ort", output=tmp_path / "b", data=npz)
    assert needle in str(e.value)


def test_bad_sources_and_targets(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        edgecompile.build(tmp_path / "nope", output=tmp_path / "o")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        edgecompile.build(empty, output=tmp_path / "o")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf at all \x00\xff" * 10)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        edgecompile.build(junk, output=tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown target 'gameboy'"):
        edgecompile.build("models/digits", target="gameboy", output=tmp_path / "o")
    with pytest.raises(ConfigError, match="backend 'tensorrt' is not available for target 'cpu'"):
        edgecompile.build("models/digits", target="cpu", backend="tensorrt", output=tmp_path / "o")
    assert not list(tmp_path.glob("o*"))
