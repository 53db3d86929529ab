"""Every bad input of issue #4: the documented exit code, one `error:` line plus a hint, no traceback.

Most run in-process through edgecompile.cli.main.main (fast); a few go through a real subprocess."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from edgecompile.cli.main import main


def cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_error(err: str, needle: str):
    """stderr ends with exactly one `error:` line and its hint (progress lines may come before)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert [i for i, line in enumerate(lines) if line.startswith("error: ")] == [len(lines) - 2], err
    assert needle in lines[-2] and lines[-1].startswith("  hint: "), err


# -- model files --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, digits_bundle):
    import onnx
    from onnx import TensorProto, helper

    d = tmp_path_factory.mktemp("bad-models")
    (d / "empty.onnx").write_bytes(b"")
    (d / "text.onnx").write_text("hello, I am not a protobuf\n" * 20)
    data = (digits_bundle.path / "model.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    custom = helper.make_model(helper.make_graph([helper.make_node("FrobnicateOp", ["x"], ["y"], domain="com.example")],
                                                 "g", [x], [y]),
                               opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(custom, d / "custom.onnx")
    future = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                               opset_imports=[helper.make_opsetid("", 99)])
    future.ir_version = 10
    onnx.save(future, d / "opset99.onnx")
    np.savez(d / "x.npz", x=np.ones((3, 4), np.float32))
    return d


@pytest.mark.parametrize("name, needle", [
    ("missing.onnx", "does not exist"),
    ("empty.onnx", "file is empty (0 bytes)"),
    ("text.onnx", "not a valid ONNX model"),
    ("truncated.onnx", "not a valid ONNX model"),
])
def test_bad_model_files(capsys, bad_models, tmp_path, name, needle):
    for cmd in (["build", bad_models / name, "-o", tmp_path / "out"], ["inspect", bad_models / name]):
        rc, out, err = cli(capsys, *cmd)
        assert rc == 1 and out == ""
        assert_one_error(err, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, needle", [
    ("custom.onnx", "opset domain 'com.example' is not one ONNX Runtime knows"),
    ("opset99.onnx", "opset ai.onnx version 99 does not exist in the installed ONNX Runtime"),
])
def test_onnx_that_ort_cannot_run(capsys, bad_models, tmp_path, name, needle):
    rc, _, err = cli(capsys, "build", bad_models / name, "--backend", "ort", "-o", tmp_path / "out")  # fails at compile
    assert rc == 1                              # refused up front (edgecompile.compiler.validate), before any pass
    assert_one_error(err, "invalid ONNX model: " + needle)
    rc, _, err = cli(capsys, "build", bad_models / name, "--data", bad_models / "x.npz", "-o", tmp_path / "out")
    assert rc == 1
    assert_one_error(err, needle)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


# -- targets, backends, config ------------------------------------------------------------------

def test_unknown_target_and_backend(capsys, tmp_path):
    rc, _, err = cli(capsys, "build", "digits", "--target", "gameboy", "-o", tmp_path / "o")
    assert rc == 2
    assert_one_error(err, "unknown target 'gameboy'")
    assert "jetson" in err.splitlines()[1]
    rc, _, err = cli(capsys, "build", "digits", "--backend", "tflite", "-o", tmp_path / "o")
    assert rc == 2
    assert_one_error(err, "backend 'tflite' is not available for target 'cpu'")


@pytest.mark.parametrize("toml, needle, hint", [
    ("[build]\nprecison = 'int8'\n", "unknown config key 'build.precison'", "allowed keys in [build]: target"),
    ("[quantise]\nmode = 'static'\n", "unknown config key 'quantise'", "allowed keys: model, build"),
    ("[passes.quantize]\ncalib_sample = 5\n", "unknown config key 'passes.quantize.calib_sample'", "calib_samples"),
    ("[build]\nthreads = 'two'\n", "config key 'build.threads' must be an integer, got 'two'", ""),
    ("[passes.prune]\nratio = 'half'\n", "config key 'passes.prune.ratio' must be a number", ""),
    ("[build]\nstrict = 1\n", "config key 'build.strict' must be true or false", ""),
    ("[build]\nprecision = 'int2'\n", "config key 'build.precision' has invalid value 'int2'",
     "allowed values: fp32, fp16, bf16, int8, int4, auto"),
    ("[report]\nformats = ['json', 'pdf']\n", "config key 'report.formats' has invalid value",
     "allowed values: json, md, html"),
    ("[build]\ntarget = 'gameboy'\n", "unknown target 'gameboy'", ""),
    ("[build\ntarget = 'cpu'\n", "not valid TOML", ""),
])
def test_config_errors(capsys, tmp_path, toml, needle, hint):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    rc, _, err = cli(capsys, "build", "digits", "--config", cfg, "-o", tmp_path / "o")
    assert rc == 2
    assert "Traceback" not in err and err.startswith("error: ") and needle in err.splitlines()[0], err   # at planning
    assert hint in err


def test_edgecompile_toml_in_cwd_is_validated(capsys, tmp_path, monkeypatch):
    (tmp_path / "edgecompile.toml").write_text("[build]\nthreads = -1.5\n")
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli(capsys, "build", "digits", "-o", tmp_path / "o")
    assert rc == 2 and "config key 'build.threads' must be an integer" in err


def test_missing_config_file(capsys, tmp_path):
    rc, _, err = cli(capsys, "build", "digits", "--config", tmp_path / "nope.toml")
    assert rc == 2
    assert_one_error(err, "does not exist")


# -- runtime inputs (edgecompile run) --------------------------------------------------------------

@pytest.mark.parametrize("arrays, rc_expected, needle", [
    ({"image": np.zeros((2, 1, 8, 8), np.float32)}, 2, "wrong input names: missing ['input']; unexpected ['image']"),
    ({"input": np.zeros((2, 1, 8, 8), np.float64)}, 2, "input 'input' has dtype float64, the model expects float32"),
    ({"input": np.zeros((2, 8, 8), np.float32)}, 2, "input 'input' has shape [2, 8, 8]"),
    ({"input": np.zeros((2, 1, 8, 9), np.float32)}, 2, "input 'input' has shape [2, 1, 8, 9]"),
])
def test_run_refuses_bad_inputs(capsys, digits_bundle, tmp_path, arrays, rc_expected, needle):
    np.savez(tmp_path / "x.npz", **arrays)
    rc, out, err = cli(capsys, "run", digits_bundle.path, "-i", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert rc == rc_expected and out == ""
    assert_one_error(err, needle)
    assert not (tmp_path / "y.npz").exists()


def test_run_bad_input_files(capsys, digits_bundle, tmp_path):
    rc, _, err = cli(capsys, "run", digits_bundle.path, "-i", tmp_path / "none.npy")
    assert rc == 2
    assert_one_error(err, "does not exist")
    (tmp_path / "x.csv").write_text("1,2,3\n")
    rc, _, err = cli(capsys, "run", digits_bundle.path, "-i", tmp_path / "x.csv")
    assert rc == 2
    assert_one_error(err, "input must be a .npy or .npz file")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    rc, _, err = cli(capsys, "run", digits_bundle.path, "-i", tmp_path / "junk.npy")
    assert rc == 2
    assert_one_error(err, "not a readable .npy file")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    rc, _, err = cli(capsys, "run", digits_bundle.path, "-i", tmp_path / "obj.npy")
    assert rc == 2 and "not a readable .npy file" in err        # never unpickles


def test_run_nan_input_is_warned_and_run(capsys, digits_bundle, tmp_path):
    x = np.zeros((3, 1, 8, 8), np.float32)
    x[1, 0, 2, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    rc, out, err = cli(capsys, "run", digits_bundle.path, "-i", tmp_path / "x.npy", "--json")
    assert rc == 0
    assert err.strip() == "warning: input 'input' contains NaN or infinite values; outputs will be meaningless"
    res = json.loads(out)
    assert res["warnings"] == [err.strip()[len("warning: "):]] and res["outputs"]["logits"]["shape"] == [3, 10]


# -- bundles: tampered, missing, newer schema, not a bundle -----------------------------------------

def _tamper(bundle: Path):
    p = bundle / "model.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x40
    p.write_bytes(bytes(data))


def _newer_schema(bundle: Path):
    mp = bundle / "manifest.json"
    m = json.loads(mp.read_text())
    m["schema_version"] = 2
    mp.write_text(json.dumps(m))


@pytest.mark.parametrize("damage, needle", [
    (_tamper, "artifact 'model.onnx' fails its sha256 check"),
    (lambda b: (b / "model.onnx").unlink(), "artifact 'model.onnx' is missing"),
    (_newer_schema, "bundle schema_version 2 is newer than this runtime supports (1)"),
    (lambda b: (b / "manifest.json").write_text("{not json"), "manifest is not valid JSON"),
    (lambda b: (b / "manifest.json").unlink(), "not a bundle (no manifest.json"),
])
def test_damaged_bundles(capsys, bundle_copy, tmp_path, damage, needle):
    damage(bundle_copy)
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    for cmd in (["verify", bundle_copy], ["run", bundle_copy, "-i", tmp_path / "x.npy"], ["bench", bundle_copy]):
        rc, out, err = cli(capsys, *cmd)
        assert rc == 1 and out == "", cmd
        assert_one_error(err, needle)
    rc, out, err = cli(capsys, "verify", bundle_copy, "--json")
    res = json.loads(out)
    assert rc == 1 and res["ok"] is False and needle in res["error"] and res["hint"]


def test_missing_bundle_dir(capsys, tmp_path):
    rc, _, err = cli(capsys, "verify", tmp_path / "nothing")
    assert rc == 1
    assert_one_error(err, "no bundle directory there")


# -- output location ------------------------------------------------------------------------------

def _unwritable_dir() -> Path | None:
    """A directory that refuses new entries even for root: sysfs (mounted read-only in containers, and
    refusing mkdir at its top level even when mounted rw). Permission bits would not stop root."""
    probe = Path("/sys/edgecompile-write-probe")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys")
    probe.rmdir()
    return None


def test_unwritable_output_location_fails_before_any_work(capsys, tmp_path):
    ro = _unwritable_dir()
    if ro is None:
        pytest.skip("/sys accepts new directories here; no location refuses writes to root")
    rc, _, err = cli(capsys, "build", "digits", "-o", ro / "edgecompile-bundle")
    assert rc == 1
    assert_one_error(err, f"output location '{ro}' is not writable")
    assert "load" not in err and "export" not in err            # refused at planning, not after the build


def test_output_under_a_file_or_not_a_bundle(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    rc, _, err = cli(capsys, "build", "digits", "-o", tmp_path / "file" / "sub" / "out")
    assert rc == 1
    assert_one_error(err, "is not a directory")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("precious")
    rc, _, err = cli(capsys, "build", "digits", "-o", tmp_path / "docs")
    assert rc == 1
    assert_one_error(err, "is not empty and is not a bundle")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "precious"


# -- the real entry point, end to end -----------------------------------------------------------------

def test_subprocess_errors_and_debug(digits_bundle, bundle_copy, tmp_path):
    _tamper(bundle_copy)
    rc, out, err = run_cli("run", bundle_copy, "-i", tmp_path / "x.npy")
    assert rc == 1 and "fails its sha256 check" in err and "Traceback" not in err
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float64))
    rc, out, err = run_cli("run", digits_bundle.path, "-i", tmp_path / "x.npy", "--json")
    assert rc == 2 and out == "" and "dtype float64" in err and "Traceback" not in err
    rc, _, err = run_cli("--debug", "run", digits_bundle.path, "-i", tmp_path / "x.npy")
    assert rc == 2 and "Traceback" in err and "DataError" in err
    rc, _, err = run_cli("inspect", "--json", tmp_path / "none.onnx")
    assert rc == 1 and "Traceback" not in err and err.startswith("error: ")
