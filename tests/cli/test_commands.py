"""Every command on the digits bundle, with --json, in-process (fast) through edgecompile.cli.main.main."""
import json

import numpy as np
import pytest

from edgecompile.cli.main import main


def cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def test_split(digits_source):
    return digits_source.dataset("test")


def test_run_npy_json_matches_runtime(capsys, digits_bundle, test_split, tmp_path):
    x = test_split.inputs["input"][:8]
    np.save(tmp_path / "x.npy", x)
    rc, out, err = cli(capsys, "run", digits_bundle.path, "--input", tmp_path / "x.npy", "--json")
    assert rc == 0, err
    res = json.loads(out)
    import edgecompile

    with edgecompile.runtime.load(digits_bundle.path) as r:
        expected = r(x)
    np.testing.assert_allclose(np.asarray(res["outputs"]["logits"]["values"], np.float32), expected, rtol=1e-6)
    assert res["outputs"]["logits"]["shape"] == [8, 10] and res["warnings"] == []
    assert res["top1"] == [str(i) for i in expected.argmax(1)]
    assert res["bundle_id"] == digits_bundle.bundle_id


def test_run_npz_writes_outputs_and_scores_labels(capsys, digits_bundle, test_split, tmp_path):
    np.savez(tmp_path / "x.npz", input=test_split.inputs["input"][:100], labels=test_split.labels[:100])
    rc, out, err = cli(capsys, "run", digits_bundle.path, "-i", tmp_path / "x.npz", "-o", tmp_path / "o" / "y.npz")
    assert rc == 0, err
    assert "top-1 accuracy vs labels" in out and "outputs written to" in out
    with np.load(tmp_path / "o" / "y.npz") as z:
        assert z.files == ["logits"] and z["logits"].shape == (100, 10)
        assert (z["logits"].argmax(1) == test_split.labels[:100]).mean() >= 0.95
    assert not list((tmp_path / "o").glob("*.tmp*"))


def test_bench_exact_runs_json(capsys, digits_bundle):
    rc, out, err = cli(capsys, "bench", digits_bundle.path, "--runs", 7, "--warmup", 1, "--batch", 3,
                       "--threads", 1, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["runs"] == 7 and res["batch"] == 3 and res["threads"] == 1 and res["warmup"] == 1
    assert 0 < res["min"] <= res["p50"] <= res["p90"] <= res["p99"] and len(res["samples"]) == 7
    assert res["cpu"]["model"] and res["bundle_id"] == digits_bundle.bundle_id


def test_report_formats(capsys, digits_bundle):
    """`report` (from the HTML-report issue) on a bundle; its json output extends report.json."""
    stored = json.loads((digits_bundle.path / "report.json").read_text())
    rc, out, _ = cli(capsys, "report", digits_bundle.path, "--json")
    assert rc == 0 and json.loads(out)["bundle_id"] == stored["bundle_id"]
    assert json.loads(out)["cache"] == stored["cache"]
    rc, md, _ = cli(capsys, "report", digits_bundle.path)
    assert rc == 0 and "build cache" in md
    rc, _, err = cli(capsys, "report", digits_bundle.path, "--format", "pdf")
    assert rc == 2 and "pdf" in err


def test_report_without_report_json(capsys, bundle_copy):
    (bundle_copy / "report.json").unlink()
    rc, _, err = cli(capsys, "report", bundle_copy)
    assert rc == 1 and err.startswith("error: ") and "no report.json" in err and "hint:" in err


def test_inspect_bundle_json(capsys, digits_bundle):
    rc, out, err = cli(capsys, "inspect", digits_bundle.path, "--json")
    assert rc == 0, err
    info = json.loads(out)
    m = info["manifest"]
    assert info["kind"] == "bundle" and m["bundle_id"] == digits_bundle.bundle_id and m["verified"] is True
    assert (m["target"], m["backend"], m["precision"]) == ("cpu", "ort", "fp32")
    model = info["model"]
    assert model["opset"]["ai.onnx"] == digits_bundle.manifest["model"]["opset"]
    assert model["inputs"] == [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert model["ops"]["Conv"] == 3 and model["ops"]["Gemm"] == 1
    # DigitsNet: conv 1->32, 32->32 on 8x8, 32->64 on 4x4 (3x3 kernels), fc 64->10
    assert model["macs"] == 32 * 64 * 9 + 32 * 64 * 288 + 64 * 16 * 288 + 64 * 10
    assert model["flops"] == 2 * model["macs"] and model["params"] >= 28714
    rc, text, _ = cli(capsys, "inspect", digits_bundle.path)
    assert rc == 0 and "verified   yes" in text and "FLOPs" in text and "Conv 3" in text


def test_inspect_onnx_file(capsys, digits_bundle):
    rc, out, _ = cli(capsys, "inspect", digits_bundle.path / "model.onnx", "--json")
    info = json.loads(out)
    assert rc == 0 and info["kind"] == "onnx" and info["outputs"][0]["name"] == "logits"


def test_inspect_tampered_bundle_says_so(capsys, bundle_copy):
    p = bundle_copy / "model.onnx"
    p.write_bytes(p.read_bytes() + b"\0")
    rc, out, _ = cli(capsys, "inspect", bundle_copy, "--json")
    info = json.loads(out)
    assert rc == 0 and info["manifest"]["verified"] is False and "sha256" in info["manifest"]["verify_error"]
    assert info["model"] is None


def test_verify_ok_and_json(capsys, digits_bundle):
    rc, out, _ = cli(capsys, "verify", digits_bundle.path)
    assert rc == 0 and out.startswith("ok: ") and "model.onnx" in out
    rc, out, _ = cli(capsys, "verify", digits_bundle.path, "--json")
    res = json.loads(out)
    assert rc == 0 and res["ok"] is True and res["artifacts"]["model.onnx"] == {
        k: digits_bundle.manifest["artifacts"]["model.onnx"][k] for k in ("sha256", "size", "role")}


def test_version_and_targets_json(capsys):
    rc, out, _ = cli(capsys, "version", "--json")
    v = json.loads(out)
    assert rc == 0 and v["edgecompile"] and v["onnxruntime"]
    rc, out, _ = cli(capsys, "--version")
    assert rc == 0 and out.startswith(f"edgecompile {v['edgecompile']}") and "onnxruntime" in out


def test_cache_info_and_clear(capsys, monkeypatch, tmp_path):
    from edgecompile.compiler.buildcache import StageCache

    monkeypatch.setenv("EDGECOMPILE_CACHE", str(tmp_path / "c"))
    rc, out, _ = cli(capsys, "cache", "info", "--json")
    assert rc == 0 and json.loads(out)["areas"] == [] and json.loads(out)["path"] == str(tmp_path / "c")
    store = StageCache()
    for stage, key in (("bundle", "ab" * 32), ("export", "cd" * 32)):
        store.put(stage, key, lambda d: (d / "x.bin").write_bytes(b"1234"))
    (tmp_path / "c" / "models").mkdir()
    (tmp_path / "c" / "models" / "w.pt").write_bytes(b"w" * 10)
    rc, out, _ = cli(capsys, "cache", "info", "--json")
    areas = {a["name"]: a for a in json.loads(out)["areas"]}
    assert areas["bundle"]["entries"] == 1 and areas["export"]["entries"] == 1 and areas["models"]["bytes"] == 10
    rc, out, _ = cli(capsys, "cache", "info")
    assert rc == 0 and "bundle" in out and "total" in out
    rc, _, err = cli(capsys, "cache", "clear", "bundels")
    assert rc == 2 and "unknown cache area" in err
    rc, out, _ = cli(capsys, "cache", "clear", "export", "--json")
    assert rc == 0 and [a["name"] for a in json.loads(out)["removed"]] == ["export"]
    assert store.get("export", "cd" * 32) is None and store.get("bundle", "ab" * 32) is not None
    rc, out, _ = cli(capsys, "cache", "clear")
    assert rc == 0 and "removed bundle, models" in out
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["CACHEDIR.TAG"]     # the cache's marker stays
