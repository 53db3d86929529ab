"""`baseline` / `check` on an unlabelled classifier: the paired test runs on agreement restricted to the
samples the baseline was confident on (issue 21), or on top-1 agreement when too few are confident."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import edgecompile
from edgecompile.verify.regression import check, make_baseline


def _add_model(path, bias):
    """y = x + bias: the logits are the input, so the data decide which samples are near ties."""
    b = h.make_tensor("b", T.FLOAT, [4], [float(v) for v in bias])
    g = h.make_graph([h.make_node("Add", ["x", "b"], ["y"])], path.stem,
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])], initializer=[b])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _data(path, n_confident, n_ties):
    conf = np.tile([5.0, 0.0, 0.0, 0.0], (n_confident, 1))
    ties = np.tile([0.05, 0.0, -3.0, -3.0], (n_ties, 1))          # p(class 0) ~ 0.49, class 1 a hair behind
    np.savez(path, x=np.concatenate([conf, ties]).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("confgate")
    data = _data(root / "d.npz", 40, 60)
    out = {"data": data, "few": _data(root / "few.npz", 20, 80)}
    for name, bias in {"ref": [0, 0, 0, 0], "ties": [0, 0.1, 0, 0], "broken": [-5.5, 0.1, 0, 0]}.items():
        out[name] = edgecompile.build(_add_model(root / f"{name}.onnx", bias), data=data, output=root / name,
                                      backend="ort")
    return out


def test_gate_bounds_confident_agreement(bundles):
    base = make_baseline(bundles["ref"].path, data=bundles["data"], measure_latency=False)
    bm = base["metric"]
    assert bm["name"] == "confident_agreement" and bm["confident"] == list(range(40)) and bm["n"] == 40
    assert len(base["per_sample"]) == 100 and "40 of 100" in bm["bound_reason"]
    ties = check(bundles["ties"].path, base, max_drop=1.0)             # 60 % of top-1 flipped, all near ties
    assert ties.ok and ties.metric == "confident_agreement" and ties.candidate_value == 1.0 and ties.n == 40
    broken = check(bundles["broken"].path, base, max_drop=1.0)         # every confident sample flipped
    assert not broken.ok and broken.candidate_value == 0.0 and "confident_agreement dropped" in broken.failures[0]


def test_gate_falls_back_to_top1_agreement_with_few_confident_samples(bundles):
    base = make_baseline(bundles["ref"].path, data=bundles["few"], measure_latency=False)
    assert base["metric"]["name"] == "top1_agreement" and "confident" not in base["metric"]
    assert "fewer than 30" in base["metric"]["bound_reason"]
    r = check(bundles["ties"].path, base, max_drop=1.0)
    assert not r.ok and r.metric == "top1_agreement" and r.candidate_value == pytest.approx(0.2) and r.n == 100


def test_build_report_names_the_bound_metric(bundles):
    acc = bundles["ties"].report()["accuracy"]
    assert acc["metric"] == "confident_agreement" and acc["candidate"] == 1.0 and acc["n"] == 40
    assert acc["agreement"]["bound_metric"] == "confident_agreement" and acc["agreement"]["confident_samples"] == 40
    text = (bundles["ties"].path / "report.md").read_text()
    assert "bound metric" in text and "40 of 100 samples where the reference is confident" in text
