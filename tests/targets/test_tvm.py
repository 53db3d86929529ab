"""The TVM backend: host and AArch64 libraries, the torch-free runtime, tuning databases that are
kept and reused, and per-node reports of what TVM cannot compile. Digits only (CI budget)."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tvm  # noqa: E402,F401  (installed by the set-up: a missing one fails the run, naming it)

import edgecompile  # noqa: E402
from edgecompile.data import TensorSpec  # noqa: E402
from edgecompile.errors import BundleError, ConfigError, TargetUnavailableError  # noqa: E402
from edgecompile.targets.profiles import get_profile  # noqa: E402
from conftest import run_cli  # noqa: E402

AARCH64_GCC = "aarch64-linux-gnu-gcc"
needs_cross = pytest.mark.skipif(shutil.which(AARCH64_GCC) is None,
                                 reason="aarch64-linux-gnu-gcc missing (bash scripts/bootstrap.sh installs it as root)")
SPECS_IN = [TensorSpec("input", ("batch", 1, 8, 8), "float32")]
SPECS_OUT = [TensorSpec("logits", ("batch", 10), "float32")]


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")   # e_machine: 62 = x86-64, 183 = AArch64


@pytest.fixture(scope="session")
def digits_onnx(digits_bundle):
    import onnx_ir as ir

    return ir.load(str(digits_bundle.path / "model.onnx"))


def test_cpu_bundle_has_the_same_top1_as_ort(tvm_bundle, digits_bundle, digits_source):
    rep, ort_rep = tvm_bundle.report(), digits_bundle.report()
    assert (rep["backend"], rep["target"], rep["precision"]) == ("tvm", "cpu", "fp32")
    assert rep["accuracy"]["candidate"] == ort_rep["accuracy"]["candidate"]
    assert rep["accuracy"]["n"] == 360 and rep["latency_ms"]["p50"] > 0
    opts = tvm_bundle.manifest["backend_options"]
    assert opts["target"]["kind"] == "llvm" and opts["target"]["mcpu"] == opts["host_cpu"]["mcpu"]
    assert opts["cross_compiler"] is None and opts["compiled_batch"] == 1
    assert opts["tuning"]["trials_in_database"] == 0 and "untuned" in opts["tuning"]["untuned_warning"]
    assert _elf_machine(tvm_bundle.path / "model.so") == 62
    # every sample, in one call of 360 (chunked over the compiled batch) and agreeing with ORT
    x = digits_source.dataset("test").inputs["input"]
    with edgecompile.runtime.load(tvm_bundle.path) as tvm_r, edgecompile.runtime.load(digits_bundle.path) as ort_r:
        assert tvm_r.thread_safe is False
        got, want = tvm_r(x), ort_r(x)
        assert got.shape == (360, 10)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(tvm_r(x[:1]), want[:1], rtol=1e-4, atol=1e-4)


def test_runtime_loads_with_tvm_runtime_only_and_no_torch(tvm_bundle, tmp_path):
    code = (
        "import sys, numpy as np\nfrom edgecompile.runtime import load\n"
        f"r = load({str(tvm_bundle.path)!r}, threads=1)\n"
        "y = r(np.zeros((3, 1, 8, 8), np.float32))\nassert y.shape == (3, 10), y.shape\n"
        "import tvm\nprint(tvm.base._RUNTIME_ONLY, 'torch' in sys.modules, 'tvm.relax' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def test_tuning_database_is_kept_and_reused(digits_onnx, tmp_path):
    import onnx_ir as ir

    from edgecompile.targets.tvm.build import compile_library

    from edgecompile.targets.tvm.run import load_library

    cpu = get_profile("cpu")
    first = compile_library(digits_onnx, cpu, tmp_path / "a" / "m.so", tune_trials=4)
    tuning = first["tuning"]
    # trials in the database: the valid (measured) records; a candidate may fail to build or run
    assert 0 < tuning["trials_in_database"] <= tuning["trials_run_now"], json.dumps(tuning)
    assert tuning["tasks"] and sum(t["trials"] for t in tuning["tasks"]) == tuning["trials_in_database"]
    assert tuning["database"] == "cache" and tuning["measured_on"] is None
    assert json.loads((tmp_path / "a" / "m.json").read_text())["tuning"]["database_key"] == tuning["database_key"]
    # same graph + target: the warm database is applied, nothing is re-tuned
    second = compile_library(digits_onnx, cpu, tmp_path / "b" / "m.so", tune_trials=4)["tuning"]
    assert second["database_key"] == tuning["database_key"] and second["database"] == "cache"
    assert second["reused"] is True and second["trials_run_now"] == 0
    assert second["trials_in_database"] == tuning["trials_in_database"]
    # without --tune the database is still applied automatically
    third = compile_library(digits_onnx, cpu, tmp_path / "c" / "m.so")["tuning"]
    assert third["reused"] is True and "untuned_warning" not in third
    # --backend auto measures TVM for this graph now (warm database), but not for an untuned graph
    from types import SimpleNamespace

    from edgecompile.targets.tvm.build import TvmTarget

    assert TvmTarget().auto_candidate(digits_onnx, SimpleNamespace(profile=cpu)).ok
    other = ir.from_proto(ir.to_proto(digits_onnx))
    other.graph.name = "another graph"
    cold = TvmTarget().auto_candidate(other, SimpleNamespace(profile=cpu))
    assert not cold.ok and "no tuning database" in cold.reason
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    from edgecompile.targets.ort.run import create_session

    want = create_session(ir.to_proto(digits_onnx).SerializeToString()).run(None, {"input": x})[0]
    with load_library(tmp_path / "b" / "m.so", SPECS_IN, SPECS_OUT) as r:
        np.testing.assert_allclose(r(x), want, rtol=1e-4, atol=1e-4)


def test_tune_timeout_stops_tuning(digits_onnx, tmp_path):
    from edgecompile.targets.tvm.build import compile_library

    meta = compile_library(digits_onnx, get_profile("cpu"), tmp_path / "m.so", tune_trials=1000,
                           tune_timeout=1e-6, cache=False)
    assert meta["tuning"]["trials_run_now"] == 0 and "--tune-timeout" in meta["tuning"]["stopped"]
    assert meta["tuning"]["database"] == "temporary"


@needs_cross
@pytest.mark.parametrize("name", ["arm64", "rpi4"])
def test_aarch64_libraries_are_cross_compiled(digits_onnx, tmp_path, name):
    from edgecompile.targets.tvm.build import compile_library
    from edgecompile.targets.tvm.run import load_library

    profile = get_profile(name)
    meta = compile_library(digits_onnx, profile, tmp_path / "m.so")
    assert _elf_machine(tmp_path / "m.so") == 183
    assert meta["target"] == dict(profile.tvm_target) and meta["cross_compiler"] == AARCH64_GCC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.so"] == sorted(meta["files"])
    with pytest.raises(BundleError, match="aarch64 library"):
        load_library(tmp_path / "m.so", SPECS_IN, SPECS_OUT)
    with pytest.raises(ConfigError, match="measure kernels on the device"):
        compile_library(digits_onnx, profile, tmp_path / "t.so", tune_trials=8)


@needs_cross
def test_rpi5_bundle_from_the_cli(digits_bundle, digits_source, tmp_path):
    npz = tmp_path / "eval.npz"
    ds = digits_source.dataset("test")
    np.savez(npz, input=ds.inputs["input"][:50], labels=ds.labels[:50])
    code, out, err = run_cli("build", digits_bundle.path / "model.onnx", "--target", "rpi5", "--backend", "tvm",
                             "--data", npz, "-o", tmp_path / "rpi5")
    assert code == 0, err
    bundle = edgecompile.Bundle.open(tmp_path / "rpi5")
    m = bundle.manifest
    assert (m["backend"], m["target"], m["runs_on_host"]) == ("tvm", "rpi5", False)
    assert m["backend_options"]["target"]["mcpu"] == "cortex-a76"
    assert _elf_machine(bundle.artifact("library")) == 183
    assert "cannot run it" in bundle.report()["skipped"] and "untuned" in err


def test_missing_cross_compiler_names_the_package(digits_onnx, tmp_path):
    from edgecompile.targets.tvm.build import compile_library

    profile = dataclasses.replace(get_profile("rpi4"), cross_compiler="aarch64-nowhere-gcc")
    with pytest.raises(TargetUnavailableError, match="aarch64-nowhere-gcc not found") as e:
        compile_library(digits_onnx, profile, tmp_path / "m.so")
    assert not (tmp_path / "m.so").exists()
    profile = dataclasses.replace(get_profile("rpi4"), cross_compiler=AARCH64_GCC)
    if shutil.which(AARCH64_GCC) is None:
        with pytest.raises(TargetUnavailableError) as e:
            compile_library(digits_onnx, profile, tmp_path / "m.so")
        assert "apt-get install gcc-aarch64-linux-gnu" in e.value.hint


def _model_with_unsupported_ops(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, 8, 8])
    nodes = [helper.make_node("Relu", ["input"], ["a"], name="relu_ok"),
             helper.make_node("Celu", ["a"], ["b"], name="celu_1", alpha=1.0),
             helper.make_node("LpNormalization", ["b"], ["out"], name="lpnorm_2", axis=-1, p=2)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


def test_unsupported_nodes_are_listed(tmp_path):
    import onnx
    from onnx import helper

    from edgecompile.targets.tvm.build import unsupported_nodes

    model = _model_with_unsupported_ops(tmp_path / "m.onnx")
    model.graph.node.append(helper.make_node("MyOp", ["out"], ["z"], name="custom_3", domain="com.example"))
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    bad = unsupported_nodes(model)
    assert [(b["op_type"], b["name"], b["opset"]) for b in bad] == [
        ("Celu", "celu_1", 17), ("LpNormalization", "lpnorm_2", 17), ("MyOp", "custom_3", 1)]
    assert "custom domain 'com.example'" in bad[2]["reason"]


def test_cli_reports_unsupported_ops_per_node_without_traceback(tmp_path):
    src = tmp_path / "m.onnx"
    _model_with_unsupported_ops(src)
    npz = tmp_path / "d.npz"
    np.savez(npz, input=np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    code, out, err = run_cli("build", src, "--backend", "tvm", "--data", npz, "-o", tmp_path / "o")
    assert code == 1
    assert "TVM cannot compile 2 node(s): Celu node 'celu_1' (opset 17" in err
    assert "LpNormalization node 'lpnorm_2' (opset 17" in err and "--backend ort" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
    # ... and the suggested backend builds it
    code, out, err = run_cli("build", src, "--backend", "ort", "--data", npz, "-o", tmp_path / "o")
    assert code == 0, err


def test_bad_tune_values(tmp_path):
    code, _, err = run_cli("build", "models/digits", "--backend", "tvm", "--tune", "-3", "-o", tmp_path / "o")
    assert code == 2 and "--tune" in err
    code, _, err = run_cli("build", "models/digits", "--backend", "tvm", "--tune-timeout", "0", "-o", tmp_path / "o")
    assert code == 2 and "--tune-timeout" in err
    with pytest.raises(ConfigError, match="tvm.tune_trials"):
        edgecompile.Config.from_dict({"tvm": {"tune_trials": "many"}})


def test_int8_qdq_graph_compiles_and_keeps_top1(tvm_bundle, tmp_path):
    """The quantize pass's QDQ graph (not topologically sorted by ORT's quantizer) through TVM."""
    bundle = edgecompile.build("models/digits", target="cpu", backend="tvm", precision="int8",
                               output=tmp_path / "int8")
    rep = bundle.report()
    assert (rep["backend"], rep["precision"]) == ("tvm", "int8")
    assert abs(rep["accuracy"]["candidate"] - tvm_bundle.report()["accuracy"]["candidate"]) <= 0.01
    assert [p["name"] for p in bundle.manifest["passes"]] == ["simplify", "quantize"]


def test_the_timeout_message_rounds_the_minutes_left():
    from edgecompile.targets.tvm.deadline import timeout_reached

    assert timeout_reached(4.589499999999999, 194) == "--tune-timeout 4.6 min reached after 194 trials"
    assert timeout_reached(20, 0) == "--tune-timeout 20 min reached after 0 trials"


def test_metaschedule_failing_past_the_deadline_is_reported_as_the_timeout():
    """Past the deadline TVM's gradient scheduler can pick a kernel the deadline ended and fail a check: the
    session stopped at --tune-timeout. Before the deadline a failure is reported as one."""
    import time

    from edgecompile.targets.tvm.deadline import stopped_by_failure
    from edgecompile.targets.tvm.tune import _Progress

    now = time.perf_counter()
    exc = RuntimeError("Check failed: (!task->is_terminated) is false:\nmore")
    late = _Progress(None, ["a"], 100, now - 60, now - 1, 1.0)
    late.done = 290
    assert stopped_by_failure(late, exc) == "--tune-timeout 1 min reached after 290 trials"
    early = _Progress(None, ["a"], 100, now, now + 600, 10.0)
    early.done = 3
    assert stopped_by_failure(early, exc) == ("MetaSchedule failed after 3 trials: Check failed: "
                                              "(!task->is_terminated) is false:")


def test_past_the_deadline_no_kernel_searches_for_candidates():
    """The task scheduler visits every kernel once per round before it joins their results; each search takes
    seconds. Past --tune-timeout the search strategy returns nothing (the kernel ends) without searching:
    a run with seconds left once spent 4 minutes searching 25 kernels whose candidates were discarded."""
    import time

    from tvm.s_tir import meta_schedule as ms

    from edgecompile.targets.tvm.deadline import deadline_search
    from edgecompile.targets.tvm.tune import _Progress

    now = time.perf_counter()
    state = _Progress(None, ["a", "b"], 100, now - 60, now - 1, 0.5)
    search = deadline_search(ms, ms.search_strategy.EvolutionarySearch(population_size=8), state)
    for strategy in (search, search.clone()):       # MetaSchedule clones it per kernel
        # the inner search was never set up: delegating to it would raise
        assert strategy.generate_measure_candidates() is None
    assert state.stopped == "--tune-timeout 0.5 min reached after 0 trials"
    live = deadline_search(ms, ms.search_strategy.EvolutionarySearch(population_size=8),
                           _Progress(None, ["a"], 100, now, now + 600, 10))

    with pytest.raises(tvm.error.InternalError, match="state_ != nullptr"):   # before it: the inner search
        live.generate_measure_candidates()                                      # (not set up here)


def test_a_candidate_whose_code_takes_too_long_to_generate_is_failed_and_its_files_removed():
    """One ResNet-18 matmul candidate took LLVM 22 s and was kept as the best: every rebuild paid it. The
    builder's export fails such candidates (workers.EXPORT_LIMIT_S) so they are never measured or kept."""
    import os
    import tempfile

    from tvm import te
    from tvm.driver import build as tvm_build

    from edgecompile.targets.tvm.workers import SlowCodegen, export_within

    a = te.placeholder((64,), "float32", "a")
    b = te.compute((64,), lambda i: a[i] * 2.0, name="b")

    def kernel():        # what MetaSchedule's builder hands the export: a runtime module
        return tvm_build(tvm.IRModule({"main": te.create_prim_func([a, b])}), target="llvm")

    path = export_within(60.0, False, None, kernel())
    assert os.path.isfile(path)
    made = set(os.listdir(tempfile.gettempdir()))
    with pytest.raises(SlowCodegen, match=r"took \d+\.\d s \(limit 0 s\)") as err:
        export_within(0.0, True, None, kernel())
    assert "\n" not in str(err.value)
    assert not {d for d in set(os.listdir(tempfile.gettempdir())) - made if d.startswith("edgecompile-tune-")}


def test_the_builder_keeps_its_worker_processes_across_batches(monkeypatch):
    """TVM's LocalBuilder started fresh workers every batch (seconds each); ours keeps them, and replaces a
    worker after WORKER_USES uses (the first: the builder's check, at its creation, that its functions exist)."""
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from edgecompile.targets.tvm import workers

    def pids():
        return [w._proc.pid for w in builder.pool._worker_map.values()]

    monkeypatch.setattr(workers, "WORKER_USES", 5)
    a = te.placeholder((64,), name="a")
    mod = tvm.IRModule({"main": te.create_prim_func([a, te.compute((64,), lambda i: a[i] * 2.0, name="b")])})
    hidden = workers.hide_torch_from_workers()         # as when tuning (tvm_ffi imports torch: seconds)
    builder = workers.pooled_builder(ms, 1, None)
    try:
        first = pids()
        assert len(first) == 1
        for _ in range(2):           # the check, two batches of two, then one more build: in a new worker
            results = builder.build([ms.builder.BuilderInput(mod, tvm.target.Target("llvm"))] * 2)
            assert [r.error_msg for r in results] == [None, None]
            assert pids() == first
        assert builder.build([ms.builder.BuilderInput(mod, tvm.target.Target("llvm"))])[0].error_msg is None
        assert len(pids()) == 1 and pids() != first
    finally:
        builder.close()
        hidden.close()
