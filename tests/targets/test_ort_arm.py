"""ONNX Runtime for ARM targets (issue 27): a portable ONNX bundle for arm64/rpi4/rpi5, accuracy measured on
this host with the same graph, latency left to the board; `--backend auto` with no board is ORT, said so."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import edgecompile
from edgecompile.errors import ConfigError
from edgecompile.runtime.machine import cpu_info
from edgecompile.targets.profiles import NO_BOARD_DEFAULT, get_profile, resolve_backend
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(cpu_info()["arch"] == "aarch64", reason="these check an x86 host building for ARM")


@pytest.fixture(scope="session")
def rpi5_ort(tmp_path_factory):
    return edgecompile.build("models/digits", target="rpi5", backend="ort",
                             output=tmp_path_factory.mktemp("arm") / "digits-rpi5-ort")


@pytest.mark.parametrize("name", ["arm64", "rpi4", "rpi5"])
def test_arm_profiles_offer_ort_and_auto(name):
    profile = get_profile(name)
    assert resolve_backend(profile, "ort") == "ort" and resolve_backend(profile, "auto") == "auto"
    with pytest.raises(ConfigError):
        resolve_backend(profile, "openvino")


def test_targets_table_lists_ort_for_arm_without_the_cross_compiler():
    code, out, err = run_cli("targets", "--json")
    assert code == 0, err
    rows = {(r["target"], r["backend"]): r for r in json.loads(out)}
    for name in ("arm64", "rpi4", "rpi5"):
        # a plain ONNX graph needs no aarch64 linker, so ORT is available whatever the host has
        assert rows[(name, "ort")]["available"] is True, rows[(name, "ort")]
        assert "ort" in rows[(name, "auto")]["reason"]


def test_rpi5_ort_bundle_is_the_portable_graph_with_accuracy_measured_here(rpi5_ort, digits_bundle,
                                                                          digits_test_npz):
    m = rpi5_ort.manifest
    assert (m["target"], m["backend"], m["profile"]["arch"], m["runs_on_host"]) == ("rpi5", "ort", "aarch64", True)
    graph = onnx.load(str(rpi5_ort.path / "model.onnx"))
    assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node), "only standard ops: runs on any ORT"
    rep = rpi5_ort.report()
    assert rep["accuracy"]["candidate"] == digits_bundle.report()["accuracy"]["candidate"]
    assert rep["latency_ms"] is None and rep["cold_start_ms"] is None
    assert "latency not measured" in rep["skipped"] and "aarch64" in rep["skipped"]
    x = np.load(digits_test_npz)["input"]
    with edgecompile.runtime.load(rpi5_ort.path) as arm, edgecompile.runtime.load(digits_bundle.path) as cpu:
        np.testing.assert_allclose(arm(x), cpu(x), rtol=1e-5, atol=1e-5)


def test_rpi5_ort_summary_says_latency_was_not_measured(rpi5_ort):
    code, out, err = run_cli("report", rpi5_ort.path)
    assert code == 0, err
    assert "latency not measured: the bundle is for aarch64" in out and "p50" not in out


def test_auto_without_a_board_is_ort_int8_and_says_so(tmp_path):
    out_dir = tmp_path / "auto"
    code, out, err = run_cli("build", "models/digits", "--target", "rpi4", "--backend", "auto", "-p", "int8",
                             "-o", out_dir)
    assert code == 0, err[-2000:]
    assert f"using the documented default, {NO_BOARD_DEFAULT}" in err and "nothing was measured" in err
    bundle = edgecompile.Bundle.open(out_dir)
    m = bundle.manifest
    assert (m["backend"], m["precision"], m["config"]["build"]["backend"]) == ("ort", "int8", "auto")
    assert any("documented default" in w for w in bundle.report()["warnings"])
    ops = {n.op_type for n in onnx.load(str(out_dir / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_auto_with_an_unreachable_board_fails_in_one_line(tmp_path):
    code, out, err = run_cli("build", "models/digits", "--target", "rpi5", "--backend", "auto",
                             "--remote", "127.0.0.1:9", "--key", "rpi5", "-o", tmp_path / "x")
    assert code == 1 and "Traceback" not in err and not (tmp_path / "x").exists()
    assert "no candidate backend could be built and measured" in err and "no RPC tracker at 127.0.0.1:9" in err, err
