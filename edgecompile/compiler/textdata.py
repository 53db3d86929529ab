"""Real text for text models: the corpora that gensim's wheel ships under `gensim/test/test_data/`.

* `lee_background.cor`: 300 news articles (Lee et al. 2005) -> single sentences for evaluation,
  calibration and retrieval;
* `lee.cor` + `similarities0-1.txt`: 50 articles with a 50x50 matrix of human similarity
  judgements (for Spearman correlation);
* `pang_lee_polarity.cor`: 200 short movie-review sentences (for classification agreement).

Nothing here imports gensim itself (slow, pulls scipy): only the data files of the wheel are read.
"""
from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

import numpy as np

from edgecompile.errors import DataError

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[A-Z\"'])")


def corpus_dir() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the text corpora for text models come from the gensim wheel, which is not installed",
                        hint="pip install gensim (only its data files are read), or pass --data FILE.npz")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    if not (path / "lee_background.cor").is_file():
        raise DataError(f"{path}: gensim's test corpora are missing", hint="reinstall gensim, or pass --data FILE.npz")
    return path


def _lines(name: str) -> list[str]:
    return [line.strip() for line in (corpus_dir() / name).read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]


@cache
def lee_sentences() -> tuple[str, ...]:
    """Distinct sentences (6 to 30 words: under 64 tokens for BERT-style tokenizers) of the 300 Lee
    background articles, in corpus order."""
    seen: set[str] = set()
    out = []
    for doc in _lines("lee_background.cor"):
        for sent in _SENTENCE_END.split(doc):
            sent = sent.strip()
            words = len(sent.split())
            if 6 <= words <= 30 and sent not in seen:
                seen.add(sent)
                out.append(sent)
    return tuple(out)


# fixed, non-overlapping splits of each corpus (polarity's train overlaps eval on purpose: distillation
# on unlabelled text)
SPLITS = {"lee": {"eval": (0, 256), "calib": (256, 384), "train": (384, 896)},
          "polarity": {"eval": (0, 120), "calib": (120, 200), "train": (0, 200)}}


def corpus_split(corpus: str, split: str) -> list[str]:
    """A split of a corpus: `lee` eval 256 sentences, calib 128 others, train 512 others; `polarity`
    eval 120 sentences, calib the other 80, train all 200."""
    if corpus not in SPLITS:
        raise DataError(f"no text corpus {corpus!r}", hint=f"corpora: {', '.join(SPLITS)}")
    if split not in SPLITS[corpus]:
        raise DataError(f"no text split {split!r}", hint=f"splits: {', '.join(SPLITS[corpus])}")
    sents = lee_sentences() if corpus == "lee" else polarity_sentences()[0]
    return list(sents[slice(*SPLITS[corpus][split])])


def split_sentences(split: str) -> list[str]:
    return corpus_split("lee", split)


@cache
def lee_similarity() -> tuple[tuple[str, ...], np.ndarray]:
    """The 50 Lee documents and the 50x50 matrix of mean human similarity judgements."""
    docs = tuple(_lines("lee.cor"))
    rows = [[float(v) for v in line.split()] for line in _lines("similarities0-1.txt")]
    sim = np.asarray(rows, np.float64)
    if len(docs) != 50 or sim.shape != (50, 50):
        raise DataError(f"unexpected Lee data: {len(docs)} documents, matrix {sim.shape}",
                        hint="reinstall gensim")
    return docs, sim


def polarity_sentences() -> tuple[list[str], list[str]]:
    """(sentences, labels 'neg'/'pos') of pang_lee_polarity.cor."""
    texts, labels = [], []
    for line in _lines("pang_lee_polarity.cor"):
        label, _, text = line.partition(" ")
        texts.append(text)
        labels.append(label.replace("__label__", ""))
    return texts, labels
