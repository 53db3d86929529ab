"""Every sentence-transformers pooling mode a 1_Pooling/config.json may declare, appended to the exported
graph: the bundle's embeddings against sentence-transformers' definitions computed here in torch on the
model's last_hidden_state (texts of different lengths, so padding is exercised). Tiny random BERTs as in
tests/test_hf.py."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_hf import TEXTS, _tiny_dir

MODES = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
         "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens", "weightedmean": "pooling_mode_weightedmean_tokens",
         "lasttoken": "pooling_mode_lasttoken"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return _tiny_dir(tmp_path_factory.mktemp("pool") / "base", classifier=False)


def _st_pooling(mode: str, hidden, mask):
    """sentence-transformers' Pooling module, written out for right-padded batches."""
    import torch

    m = mask.unsqueeze(-1).float()
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return torch.where(m > 0, hidden, torch.full_like(hidden, -1e9)).max(1).values
    if mode == "lasttoken":
        return hidden[torch.arange(len(hidden)), mask.sum(1) - 1]
    if mode == "weightedmean":
        m = m * torch.arange(1, hidden.shape[1] + 1).float()[None, :, None]
    total = (hidden * m).sum(1)
    count = m.sum(1).clamp(min=1e-9)
    return total / count.sqrt() if mode == "mean_sqrt_len" else total / count


@pytest.mark.parametrize("mode", list(MODES))
def test_pooling_mode_matches_sentence_transformers(base_dir, tmp_path, mode):
    import torch
    from transformers import AutoTokenizer, BertModel

    import edgecompile
    from edgecompile.runtime import load

    d = tmp_path / mode
    shutil.copytree(base_dir, d)
    cfg_file = d / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update({key: name == mode for name, key in MODES.items()})
    cfg_file.write_text(json.dumps(cfg))
    b = edgecompile.build(d, target="cpu", backend="ort", precision="fp32", output=tmp_path / "b")
    assert b.manifest["frontend"]["pooling"] == mode and b.manifest["frontend"]["normalize"] is True
    texts = [TEXTS[0], "Short.", TEXTS[1] + " " + TEXTS[2]]
    with load(b.path) as runner:
        got = runner.encode(texts)
    enc = AutoTokenizer.from_pretrained(d)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = BertModel.from_pretrained(d).eval()(**enc).last_hidden_state
        want = torch.nn.functional.normalize(_st_pooling(mode, hidden, enc["attention_mask"]), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_two_pooling_modes_are_a_one_line_error(base_dir, tmp_path):
    from edgecompile.errors import ModelLoadError
    from edgecompile.source import resolve_source

    d = tmp_path / "two"
    shutil.copytree(base_dir, d)
    cfg_file = d / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True})
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"enables \['mean', 'cls'\]; exactly one of mean, cls, max, "):
        resolve_source(str(d))
