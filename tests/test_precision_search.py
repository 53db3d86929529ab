"""Issue 6: layer sensitivity, accuracy-aware float fallback, latency-aware choice, mixed bundles."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import edgecompile
from edgecompile.compiler import precision as precision_stage
from edgecompile.compiler.config import Config
from edgecompile.data import Dataset
from edgecompile.compiler.precision_search import layer_groups, sensitivity
from edgecompile.runtime import load
from edgecompile.targets.ort.build import ort_outputs
from conftest import run_cli
from quant_models import fragile_mlp, mlp_feeds


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    """The fragile MLP (outlier channel entering fc2) as .onnx + .npz whose labels are its FP32 top-1."""
    d = tmp_path_factory.mktemp("fragile")
    model = fragile_mlp(outlier=200.0)
    onnx.save(model, d / "fragile.onnx")
    feeds = mlp_feeds(1000, seed=3)
    labels = ort_outputs(model.SerializeToString(), [feeds])[0].argmax(1)
    np.savez(d / "data.npz", x=feeds["x"], labels=labels)
    return d / "fragile.onnx", d / "data.npz", feeds, labels


def test_layer_groups_take_the_elementwise_path_into_each_layer():
    groups = {g.node: g for g in layer_groups(fragile_mlp())}
    assert list(groups) == ["fc1", "fc2", "fc3"]
    assert groups["fc1"].members == ["fc1"] and groups["fc1"].entry is None
    assert groups["fc2"].members == ["fc2", "relu1", "fc1_bias"] and groups["fc2"].entry == "fc1"
    assert groups["fc3"].members == ["fc3", "relu2"] and groups["fc3"].entry == "fc2"


def test_sensitivity_ranks_the_fragile_layer_first(fragile):
    from edgecompile.passes.quantize import Quantize

    _, _, feeds, _ = fragile
    model = fragile_mlp(outlier=200.0)
    ds = Dataset("fragile", {"x": feeds["x"][:256]}, None)
    q = Quantize(calibration=ds)(ir.from_proto(model))
    rows = sensitivity(model.SerializeToString(), ir.to_proto(q.model).SerializeToString(), layer_groups(model), ds)
    assert rows[0]["node"] == "fc2" and rows[0]["added_error"] > 5 * rows[-1]["added_error"]
    # a well-behaved twin (no outlier): nothing stands out like that
    calm = fragile_mlp(outlier=1.0)
    qc = Quantize(calibration=ds)(ir.from_proto(calm))
    calm_rows = sensitivity(calm.SerializeToString(), ir.to_proto(qc.model).SerializeToString(), layer_groups(calm), ds)
    assert max(r["added_error"] for r in calm_rows) < rows[0]["added_error"] / 10


def test_fallback_keeps_the_fragile_layer_in_float_and_ships_mixed(fragile, tmp_path, monkeypatch):
    """Latency is taken out of the decision (the tiny MLP's INT8 speed is a coin flip on a shared
    CPU): this checks the accuracy half -- the search finds fc2 and the mixed bundle is valid."""
    model, data, feeds, labels = fragile
    monkeypatch.setattr(precision_stage, "measurably_slower", lambda lat: False)
    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 1.0})
    bundle = edgecompile.build(
        model, "cpu", backend="ort", output=tmp_path / "mixed", precision="int8", data=data, config=cfg
    )
    rep = json.loads((bundle.path / "report.json").read_text())
    man = json.loads((bundle.path / "manifest.json").read_text())
    assert rep["precision"] == man["precision"] == "mixed"
    assert rep["quantization"]["metric_drop"] > 10            # all-int8 is badly broken by the outlier
    assert man["float_nodes"][0] == "fc2"
    search = rep["precision_notes"]["precision_search"]
    assert search["found"] and search["sensitivity"][0]["node"] == "fc2"
    assert search["steps"][-1]["metric_drop"] <= 1.0
    cands = {c["precision"]: c for c in rep["precision_notes"]["candidates"]}
    assert set(cands) == {"fp32", "int8", "mixed"} and cands["mixed"]["status"] == "chosen"
    assert cands["int8"]["status"].startswith("rejected: accuracy drop")
    assert all(c["p50_ms"] > 0 and c["p99_ms"] >= c["p50_ms"] * 0.5 for c in cands.values())
    assert all("step_latency_cost_ms" in f for f in rep["precision_notes"]["float_nodes"])
    with load(bundle.path) as runner:                          # a valid bundle the runtime runs
        top1 = runner.run({"x": feeds["x"]})["logits"].argmax(1)
    assert (top1 == labels).mean() >= 0.99
    assert rep["accuracy"]["delta"] >= -0.01
    md = (bundle.path / "report.md").read_text()
    for title in ("## Candidates tried", "## Layer sensitivity (precision search)", "## Nodes kept in float"):
        assert title in md


def test_quantized_but_slower_is_never_shipped_silently(fragile, tmp_path, monkeypatch):
    model, data, _, _ = fragile
    monkeypatch.setattr(precision_stage, "measurably_slower", lambda lat: True)
    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 1.0})
    bundle = edgecompile.build(
        model, "cpu", backend="ort", output=tmp_path / "slow", precision="auto", data=data, config=cfg
    )
    rep = json.loads((bundle.path / "report.json").read_text())
    assert rep["precision"] == "fp32" and rep["requested_precision"] == "auto"
    cands = {c["precision"]: c for c in rep["precision_notes"]["candidates"]}
    assert cands["fp32"]["status"].startswith("chosen")
    assert "slower than fp32" in cands["mixed"]["status"]
    assert any("precision auto kept fp32" in w and "slower than fp32" in w for w in rep["warnings"])


def test_cli_strict_fallback_measured_for_real(fragile, tmp_path):
    """No patching: whatever this machine measures, the build either ships a mixed bundle within the
    bound, or (mixed measured slower than FP32) exits 3 under --strict naming the best configuration."""
    model, data, _, _ = fragile
    out = tmp_path / "strict"
    code, stdout, stderr = run_cli(
        "build", model, "--backend", "ort", "--precision", "int8", "--data", data, "--max-accuracy-drop", "1",
        "--strict", "-o", out
    )
    assert "Traceback" not in stderr
    if code == 0:
        man = json.loads((out / "manifest.json").read_text())
        assert man["precision"] == "mixed" and "fc2" in man["float_nodes"]
    else:
        assert code == 3, stderr
        assert "best configuration found: mixed" in stderr and "fc2" in stderr and "slower than fp32" in stderr
        assert not out.exists()


def test_digits_int8_within_a_tight_bound(tmp_path):
    code, stdout, stderr = run_cli(
        "build", "models/digits", "--target", "cpu", "--backend", "ort", "--precision", "auto",
        "--max-accuracy-drop", "0.1", "-o", tmp_path / "auto", "--json"
    )
    assert code == 0, stderr
    rep = json.loads(stdout)
    cands = rep["precision_notes"]["candidates"]
    assert [c["precision"] for c in cands][:2] == ["fp32", "int8"]
    chosen = [c for c in cands if c["status"].startswith("chosen")]
    assert len(chosen) == 1 and chosen[0]["precision"] == rep["precision"]
    if rep["precision"] != "fp32":
        assert chosen[0]["accuracy_drop"] <= 0.1
    assert "## Candidates tried" in (tmp_path / "auto" / "report.md").read_text()


@pytest.mark.parametrize("adaround", ["auto", False])
def test_adaround_runs_when_int8_is_over_the_bound_before_the_fallback(fragile, tmp_path, monkeypatch, adaround):
    """adaround = "auto": round-to-nearest is over the bound, so learned rounding runs (same ranges). On the
    fragile MLP the clipped outlier channel is an activation-range problem that rounding cannot fix: still
    over the bound, so the float fallback finds the same mixed bundle; AdaRound is a waterfall step only
    when it measured better than round-to-nearest, else reverted (the quantize record says why).
    adaround = false: it does not run at all."""
    model, data, _, _ = fragile
    monkeypatch.setattr(precision_stage, "measurably_slower", lambda lat: False)
    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 1.0, "passes.quantize.adaround": adaround})
    bundle = edgecompile.build(model, "cpu", backend="ort", output=tmp_path / "b", precision="int8", data=data,
                               config=cfg)
    rep = json.loads((bundle.path / "report.json").read_text())
    names = [p["name"] for p in rep["passes"]]
    q = rep["passes"][names.index("quantize")]
    search = rep["precision_notes"]["precision_search"]
    assert rep["precision"] == "mixed" and search["steps"][-1]["metric_drop"] <= 1.0
    assert json.loads((bundle.path / "manifest.json").read_text())["float_nodes"][0] == "fc2"
    if adaround is False:
        assert "adaround" not in q["notes"] and "adaround" not in names
        return
    # kept: a waterfall step of its own (it measured better than round-to-nearest); else reverted, with why
    ada = (rep["passes"][names.index("adaround")]["notes"] if "adaround" in names else q["notes"])["adaround"]
    assert ada["layers"] + ada["kept_nearest"] == 3
    assert ("adaround" in names) == ("reverted" not in ada)
    if "reverted" in ada:
        assert ada["reverted"].startswith("accuracy drop")


def test_auto_backend_candidates_share_one_precision_search(fragile, tmp_path, monkeypatch):
    """`--backend auto --precision int8` over the bound: every backend candidate quantizes the same graph
    from the same calibration and scores it with the same evaluator, so the float fallback search runs
    once and the other candidates reuse its result (same layers in float)."""
    from edgecompile.compiler.precision_search import SEARCHES

    model, data, _, _ = fragile
    SEARCHES.clear()
    monkeypatch.setattr(precision_stage, "measurably_slower", lambda lat: False)
    calls, search = [], precision_stage._search
    monkeypatch.setattr(precision_stage, "_search", lambda *a, **k: calls.append(1) or search(*a, **k))
    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 1.0, "passes.quantize.adaround": False})
    bundle = edgecompile.build(model, "cpu", backend="auto", output=tmp_path / "auto", precision="int8", data=data,
                               config=cfg)
    rep = json.loads((bundle.path / "report.json").read_text())
    int8 = [c for c in rep["backend_choice"]["candidates"] if c["precision"] in ("int8", "mixed")]
    mixed = [c for c in int8 if c["precision"] == "mixed"]
    assert len(mixed) >= 2 and len(calls) == 1                      # ort and openvino: one search
    assert len({round(c["accuracy_drop"], 6) for c in mixed}) == 1 and mixed[0]["accuracy_drop"] <= 1.0


def test_the_build_evaluator_scores_each_graph_once(fragile, monkeypatch):
    """auto's backend candidates hand the evaluator identical graphs (the FP32 graph before quantizing,
    the same INT8 graph): each distinct graph runs through ORT once per build."""
    from types import SimpleNamespace

    from edgecompile.compiler import pipeline

    model, data, feeds, labels = fragile
    ds = Dataset("fragile", {"x": feeds["x"]}, labels=labels)
    proto = onnx.load(str(model))
    ref = ort_outputs(proto.SerializeToString(), [feeds])[0]
    plan = SimpleNamespace(evaluation=ds, source=SimpleNamespace(metric="top1"), classifier=True)
    import edgecompile.targets.ort.build as ort_build

    runs, real = [], ort_build.ort_outputs
    monkeypatch.setattr(ort_build, "ort_outputs", lambda *a, **k: runs.append(1) or real(*a, **k))
    evaluate = pipeline._onnx_evaluator(plan, ref)
    first = evaluate(ir.from_proto(proto))
    assert evaluate(ir.from_proto(onnx.load(str(model)))) == first == 1.0 and len(runs) == 1
    other = onnx.load(str(model))
    other.graph.initializer[0].raw_data = bytes(len(other.graph.initializer[0].raw_data))   # another graph
    evaluate(ir.from_proto(other))
    assert len(runs) == 2
