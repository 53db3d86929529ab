import json

from conftest import run_cli


def test_build_prints_summary_and_json(digits_bundle, tmp_path):
    rc, out, err = run_cli("build", "models/digits", "--target", "cpu", "--backend", "ort", "-o", tmp_path / "b",
                           "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["accuracy"]["candidate"] >= 0.95 and "p99" in rep["latency_ms"]
    assert (tmp_path / "b" / "manifest.json").is_file()


def test_targets_lists_every_contract_target():
    rc, out, _ = run_cli("targets", "--json")
    assert rc == 0
    rows = json.loads(out)
    names = {r["target"] for r in rows}
    assert {"cpu", "arm64", "rpi4", "rpi5", "jetson-orin", "jetson-xavier"} <= names
    assert any(r["target"] == "jetson-orin" and "jetson" in r["aliases"] for r in rows)
    ort = [r for r in rows if r["target"] == "cpu" and r["backend"] == "ort"][0]
    auto = [r for r in rows if r["target"] == "cpu" and r["backend"] == "auto"][0]
    assert ort["available"] and auto["available"] and auto["default"]
    assert all(isinstance(r["reason"], str) and r["reason"] for r in rows)


def test_errors_are_one_line_with_exit_codes(tmp_path):
    rc, out, err = run_cli("build", "models/digits", "--target", "gameboy", "-o", tmp_path / "x")
    assert rc == 2 and err.startswith("error: unknown target 'gameboy'") and "Traceback" not in err
    rc, _, err = run_cli("build", tmp_path / "missing.onnx")
    assert rc == 1 and "does not exist" in err and "Traceback" not in err
    rc, _, err = run_cli("build", "--precision", "int4", "models/digits")
    assert rc == 2 and "Traceback" not in err
    bad = tmp_path / "edgecompile.toml"
    bad.write_text("[build]\nprecison = 'int8'\n")
    rc, _, err = run_cli("build", "models/digits", "--config", bad)
    assert rc == 2 and "unknown config key 'build.precison'" in err


def test_debug_shows_traceback(tmp_path):
    rc, _, err = run_cli("--debug", "build", tmp_path / "missing.onnx")
    assert rc == 1 and "Traceback" in err


def test_version_lists_toolchain():
    rc, out, _ = run_cli("--version")
    assert rc == 0 and out.startswith("edgecompile ") and "onnxruntime" in out
