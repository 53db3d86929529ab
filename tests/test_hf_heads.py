"""Sequence-classification heads beyond softmax, and text pairs: a single-logit head (cross-encoder style,
scored with a sigmoid, as transformers' pipeline does), a multi-label head (sigmoid per label) and a
regression head (raw values, gated on output closeness), each fed (first, second) pairs and checked
against transformers on the same pairs. Tiny random BERTs with MiniLM's real tokenizer."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from test_hf import MINILM

PAIRS = [("how do I bake bread", "Mix flour, water and yeast, then bake for forty minutes."),
         ("how do I bake bread", "The stock market fell sharply today."),
         ("what is the capital of France", "Paris is the capital and largest city of France."),
         ("a dog runs on the beach", "A cat sleeps.")]


def _head_dir(path, **config):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, **config)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():     # a random head scores every text alike: point label k at PAIRS[k]'s direction
        pooled = model.bert(**_encoded(PAIRS, MINILM)).pooler_output
        centred = pooled - pooled.mean(0)
        for k in range(cfg.num_labels):
            w = centred[k] / centred[k].norm() ** 2 * 3.0
            model.classifier.weight[k] = w
            model.classifier.bias[k] = -(pooled @ w).mean()
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(MINILM / name, path / name)
    return path, model


def _encoded(pairs, directory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    return tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")


def _reference_logits(model, directory) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**_encoded(PAIRS, directory)).logits.numpy().astype(np.float64)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """name -> (bundle path, transformers logits on PAIRS)."""
    import edgecompile

    root = tmp_path_factory.mktemp("heads")
    out = {}
    for name, cfg in {"single": {"num_labels": 1},
                      "multi": {"num_labels": 3, "problem_type": "multi_label_classification"},
                      "regression": {"num_labels": 1, "problem_type": "regression"}}.items():
        directory, model = _head_dir(root / name, **cfg)
        bundle = edgecompile.build(directory, target="cpu", backend="ort", precision="fp32", output=root / f"b-{name}")
        out[name] = (bundle, _reference_logits(model, directory))
    return out


def test_single_logit_head_scores_pairs_with_a_sigmoid(heads):
    from edgecompile.runtime import load

    bundle, logits = heads["single"]
    assert bundle.manifest["frontend"]["scoring"] == "sigmoid" and bundle.manifest["metric"] == "top1_agreement"
    with load(bundle.path) as runner:
        res = runner.classify(PAIRS)
        alone = runner.classify([a + " " + b for a, b in PAIRS])
    want = 1.0 / (1.0 + np.exp(-logits))
    assert np.abs(want[:, 0] - 0.5).max() > 0.2 and (logits[:, 0] > 0).any() and (logits[:, 0] < 0).any()
    np.testing.assert_allclose(res["probabilities"], want, atol=1e-4)
    np.testing.assert_allclose(res["scores"], want[:, 0], atol=1e-4)
    assert res["active"] == [["LABEL_0"] if p >= 0.5 else [] for p in want[:, 0]]
    # a pair is two segments (token_type_ids 1 for the second), not the two texts joined
    assert np.abs(alone["scores"] - res["scores"]).max() > 1e-3


def test_multi_label_head_has_a_sigmoid_per_label(heads):
    from edgecompile.runtime import load

    bundle, logits = heads["multi"]
    with load(bundle.path) as runner:
        res = runner.classify(PAIRS)
    want = 1.0 / (1.0 + np.exp(-logits))
    np.testing.assert_allclose(res["probabilities"], want, atol=1e-4)
    assert not np.allclose(want.sum(1), 1.0, atol=1e-2)        # not a softmax
    assert res["labels"] == [f"LABEL_{i}" for i in want.argmax(1)]
    assert res["active"] == [[f"LABEL_{j}" for j in range(3) if want[i, j] >= 0.5] for i in range(len(PAIRS))]


def test_regression_head_gives_raw_values_and_gates_on_closeness(heads):
    from edgecompile.runtime import load

    bundle, logits = heads["regression"]
    assert bundle.manifest["frontend"]["scoring"] == "none" and bundle.manifest["metric"] == "output_closeness"
    with load(bundle.path) as runner:
        res = runner.classify(PAIRS)
    assert "probabilities" not in res
    np.testing.assert_allclose(res["values"], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res["scores"], logits[:, 0], rtol=1e-4, atol=1e-4)


def test_cli_pairs(heads):
    bundle, logits = heads["single"]
    args = ["run", bundle.path, "--json"]
    for a, b in PAIRS[:2]:
        args += ["--text", a, "--pair", b]
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    res = json.loads(out)
    np.testing.assert_allclose(res["scores"], 1.0 / (1.0 + np.exp(-logits[:2, 0])), atol=1e-4)
    rc, out, err = run_cli("run", bundle.path, "--text", "a", "--text", "b", "--pair", "c")
    assert rc == 2 and "1 --pair for 2 --text" in err
    rc, out, err = run_cli("run", heads["regression"][0].path, "--text", PAIRS[0][0], "--pair", PAIRS[0][1])
    assert rc == 0, err
    label, value, text = out.split(None, 2)
    assert label == "LABEL_0" and abs(float(value) - heads["regression"][1][0, 0]) < 1e-3
    assert text.strip() == f"{PAIRS[0][0]} | {PAIRS[0][1]}"[:57] + "..."


def test_bad_pairs_are_refused(heads):
    from edgecompile.errors import DataError
    from edgecompile.runtime import load

    with load(heads["single"][0].path) as runner:
        with pytest.raises(DataError, match="got a 3-tuple"):
            runner.classify([("a", "b", "c")])
        with pytest.raises(DataError, match="pairs of strings, got int"):
            runner.classify(["a", 3])


def test_single_logit_agreement_is_the_sign_of_the_logit():
    """top-1 (and confident) agreement on a one-column output compares decisions (logit > 0), not an argmax
    that is always 0 (nor a one-class softmax that is always confident and always agrees)."""
    from edgecompile.verify.metrics import METRICS, decisions

    ref = np.array([[1.5], [-0.2], [0.3], [-2.0]])
    out = np.array([[1.4], [0.1], [0.2], [-1.0]])
    assert decisions(ref).tolist() == [1, 0, 1, 0]
    assert METRICS["top1_agreement"].per_sample(out, ref).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert METRICS["confident_agreement"].per_sample(out, ref).tolist() == [1.0, 0.0, 1.0, 1.0]
    two = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert decisions(two).tolist() == [1, 0]
