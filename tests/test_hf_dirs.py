"""Hugging Face directories as they come: sharded weights, a slow tokenizer only (vocab.txt, no
tokenizer.json), RoBERTa-family position embeddings. Tiny random models with MiniLM's real tokenizer files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_hf import MINILM, ST_FILES, TEXTS, _tiny_dir
from test_hf_heads import PAIRS, _encoded, _head_dir


@pytest.mark.parametrize("safetensors", [True, False])
def test_sharded_checkpoints_build_and_distill(tmp_path, safetensors):
    """save_pretrained's sharded weights (model-0000k-of-0000n.safetensors or pytorch_model-...bin plus the
    index) are a model directory like a single file: the bundle matches transformers, and a distilled student
    gets its own weights, none of the teacher's shards or index."""
    import torch
    from transformers import AutoModelForSequenceClassification

    import edgecompile
    from edgecompile.compiler.hf_distill import distill_student
    from edgecompile.runtime import load

    directory, _ = _head_dir(tmp_path / "teacher", num_labels=2)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="500KB", safe_serialization=safetensors)
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    assert (sharded / index).is_file() and len(list(sharded.glob("*-of-*"))) >= 2
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(MINILM / name, sharded / name)
    bundle = edgecompile.build(sharded, target="cpu", backend="ort", precision="fp32", output=tmp_path / "b")
    with load(bundle.path) as runner:
        res = runner.classify(PAIRS)
    with torch.no_grad():
        want = torch.softmax(model(**_encoded(PAIRS, sharded)).logits, -1).numpy()
    np.testing.assert_allclose(res["probabilities"], want, atol=1e-4)
    distill_student(sharded, 1, tmp_path / "student", steps=2, batch_size=4)
    names = sorted(p.name for p in (tmp_path / "student").iterdir())
    assert "model.safetensors" in names and not [n for n in names if "-of-" in n or n.endswith(".index.json")]


def test_roberta_position_offset_caps_the_length(tmp_path):
    """RoBERTa-family position ids start after the padding index: 514 position embeddings hold 512 tokens.
    A text longer than that is truncated to what fits (it used to crash in the position Gather)."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    import edgecompile
    from edgecompile.compiler.hf import usable_positions
    from edgecompile.runtime import load

    assert usable_positions({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert usable_positions({"model_type": "bert", "max_position_embeddings": 512, "pad_token_id": 0}) == 512
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, pad_token_id=0)
    d = tmp_path / "roberta"
    RobertaModel(cfg).eval().save_pretrained(d)
    for name in ST_FILES:
        (shutil.copytree if (MINILM / name).is_dir() else shutil.copyfile)(MINILM / name, d / name)
    pool_cfg = json.loads((d / "1_Pooling" / "config.json").read_text())
    (d / "1_Pooling" / "config.json").write_text(json.dumps({**pool_cfg, "word_embedding_dimension": 32}))
    b = edgecompile.build(d, target="cpu", backend="ort", precision="fp32", output=tmp_path / "b")
    assert b.manifest["frontend"]["max_length"] == 39
    long = " ".join(["word"] * 100)
    with load(b.path) as runner, pytest.warns(RuntimeWarning, match="longer than 39 tokens were truncated"):
        got = runner.encode([long])
    enc = AutoTokenizer.from_pretrained(d)([long], truncation=True, max_length=39, return_tensors="pt")
    with torch.no_grad():
        hidden = RobertaModel.from_pretrained(d).eval()(**enc).last_hidden_state
    want = torch.nn.functional.normalize(hidden.mean(1), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_a_slow_tokenizer_is_converted_to_tokenizer_json(tmp_path):
    """No tokenizer.json, only vocab.txt and tokenizer_config.json: transformers converts the slow tokenizer
    once (cached); the bundle carries the converted tokenizer.json and encodes as the original does. With
    no vocabulary either, a one-line error."""
    import edgecompile
    from edgecompile.runtime import load

    full = _tiny_dir(tmp_path / "full", classifier=False)
    slow = tmp_path / "slow"
    shutil.copytree(full, slow)
    (slow / "tokenizer.json").unlink()
    bundles = [edgecompile.build(d, target="cpu", backend="ort", precision="fp32", output=tmp_path / f"b-{d.name}")
               for d in (full, slow)]
    assert (bundles[1].path / "tokenizer.json").is_file()
    with load(bundles[0].path) as a, load(bundles[1].path) as b:
        assert [a.frontend.tokenizer.encode(t).ids for t in TEXTS] == [b.frontend.tokenizer.encode(t).ids
                                                                          for t in TEXTS]
        np.testing.assert_allclose(b.encode(TEXTS), a.encode(TEXTS), atol=1e-6)
    (slow / "vocab.txt").unlink()
    from conftest import run_cli

    rc, _, err = run_cli("build", slow, "-o", tmp_path / "x")
    assert rc == 1 and "no tokenizer.json, nor a vocabulary to make one from" in err and "Traceback" not in err
