"""Task metrics for text embeddings: nearest-neighbour retrieval agreement and Spearman correlation
with human similarity judgements. numpy only."""
from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, np.float64).reshape(len(x), -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    return np.sum(_unit(a) * _unit(b), axis=1)


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row (itself excluded)."""
    u = _unit(emb)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def retrieval_agreement(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per sentence: 1.0 when its nearest neighbour in the corpus (by cosine, itself excluded) is the
    same under `out` as under the reference embeddings `ref`."""
    if len(out) < 2:
        return np.ones(len(out))
    return (nearest_neighbours(out) == nearest_neighbours(ref)).astype(np.float64)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def spearman_vs_human(emb: np.ndarray, human: np.ndarray) -> float:
    """Spearman rho between the embeddings' pairwise cosine and a human similarity matrix, over the
    pairs i < j (the upper triangle)."""
    u = _unit(emb)
    iu = np.triu_indices(len(u), 1)
    return spearman((u @ u.T)[iu], np.asarray(human, np.float64)[iu])
