"""Hugging Face encoders quantized to INT8 on ONNX Runtime: dynamic INT8 on the fused graph, and the
accuracy-aware fallback on the task metric (retrieval agreement) for static and dynamic INT8. Tiny random
BERTs as in tests/test_hf.py."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from test_hf import TEXTS, _tiny_dir


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory):
    return _tiny_dir(tmp_path_factory.mktemp("hfq") / "tiny-embed", classifier=False)


def _int8_build(directory, out, **quantize):
    import edgecompile
    from edgecompile.compiler.config import Config

    cfg = Config().with_overrides({f"passes.quantize.{k}": v for k, v in quantize.items()})
    return edgecompile.build(directory, target="cpu", backend="ort", precision="int8", config=cfg, output=out)


def test_int8_dynamic_on_fused_graph(tiny_embed_dir, tmp_path, monkeypatch):
    import onnx

    from edgecompile.compiler import precision as precision_stage
    from edgecompile.runtime import load

    # hidden size 32: INT8 can measure slower than FP32 on a loaded machine and ship FP32; this test is
    # about the graph the quantize pass makes, not that speed decision
    monkeypatch.setattr(precision_stage, "measurably_slower", lambda lat: False)

    b = _int8_build(tiny_embed_dir, tmp_path / "dyn", mode="dynamic", max_accuracy_drop=100.0)
    passes = [p["name"] for p in b.manifest["passes"]]
    assert passes == ["transformer_fusion", "quantize"]
    ops = {n.op_type for n in onnx.load(b.path / "model.onnx").graph.node}
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= ops or "QAttention" in ops
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}
    with load(b.path) as runner:
        emb = runner.encode(TEXTS)
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_static_int8_falls_back_on_the_task_metric(tiny_embed_dir, tmp_path):
    """Static QDQ on every op (ops = "all"; Q/DQ on the MatMul inputs only, the default for token ids, loses
    less than 1 pt here) of the (random, outlier-free) tiny encoder loses retrieval agreement; with
    max_accuracy_drop 1 pt the precision stage keeps layers in float or ships fp32, never the
    over-the-bound int8, and the report's metric is retrieval agreement."""
    b = _int8_build(tiny_embed_dir, tmp_path / "static", mode="static", ops="all", max_accuracy_drop=1.0)
    rep = b.report()
    assert rep["accuracy"]["metric"] == "retrieval_agreement"
    assert b.manifest["precision"] in ("mixed", "fp32")
    assert 100 * (rep["accuracy"]["reference"] - rep["accuracy"]["candidate"]) <= 1.0 + 1e-9
    cands = rep["precision_notes"]["candidates"]
    int8 = next(c for c in cands if c["precision"] == "int8")
    assert int8["accuracy_drop"] > 1.0 and int8["status"].startswith("rejected: accuracy drop")


def test_dynamic_int8_search_keeps_outlier_layers_in_float(tiny_embed_dir, tmp_path):
    """Dynamic INT8 with the accuracy-aware fallback: outlier channels after the intermediate MatMuls
    cost retrieval agreement when quantized; the precision search runs on the dynamic graph
    (sensitivity read at the consumers of the renamed integer ops, layers re-quantized in float),
    finds no mixed graph within 1 pt on this tiny model, and the build ships fp32 -- never the
    over-the-bound int8."""
    import torch
    from transformers import BertModel

    d = tmp_path / "outliers"
    shutil.copytree(tiny_embed_dir, d)
    model = BertModel.from_pretrained(d)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.intermediate.dense.weight[:4] *= 200.0
    model.save_pretrained(d)
    b = _int8_build(d, tmp_path / "mixed", mode="dynamic", max_accuracy_drop=1.0)
    rep = b.report()
    cands = {c["precision"]: c for c in rep["precision_notes"]["candidates"]}
    assert cands["int8"]["accuracy_drop"] > 1.0
    search = rep["precision_notes"]["precision_search"]
    assert search["sensitivity"] and search["steps"]                 # the dynamic graph was searched
    assert search["sensitivity"][0]["node"].endswith("intermediate/dense/MatMul")
    assert cands["mixed"]["accuracy_drop"] > 1.0 and cands["mixed"]["status"].startswith("rejected")
    assert b.manifest["precision"] == "fp32"
    assert 100 * (rep["accuracy"]["reference"] - rep["accuracy"]["candidate"]) <= 1.0 + 1e-9
