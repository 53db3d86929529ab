"""Text task metrics: retrieval agreement and Spearman correlation (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from edgecompile.verify.textmetrics import (
    nearest_neighbours,
    retrieval_agreement,
    spearman,
    spearman_vs_human,
)


def test_nearest_neighbours_exclude_the_sentence_itself():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.8]])
    assert nearest_neighbours(emb).tolist() == [1, 0, 3, 2]


def test_retrieval_agreement_counts_changed_neighbours():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 16))
    assert retrieval_agreement(ref * 3.0, ref).tolist() == [1.0] * 50       # scale-invariant (cosine)
    cand = ref.copy()
    nn = nearest_neighbours(ref)
    cand[7] = cand[nn[7]] * -1.0            # sentence 7 now points away from its neighbour
    scores = retrieval_agreement(cand, ref)
    assert scores[7] == 0.0 and 0.8 < scores.mean() < 1.0


def test_spearman_matches_scipy_with_ties():
    import scipy.stats as stats
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=200).astype(float)      # many ties
    b = a + rng.normal(scale=2.0, size=200)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_spearman_vs_human_uses_the_upper_triangle():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(10, 8))
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    human = np.triu(u @ u.T)                # the Lee matrix is upper-triangular
    assert spearman_vs_human(emb, human) == pytest.approx(1.0)
    assert spearman_vs_human(emb, -human) == pytest.approx(-1.0)


def test_retrieval_agreement_is_a_registered_percentage_metric():
    from edgecompile.verify.metrics import get_metric

    m = get_metric("retrieval_agreement")
    assert m.kind == "percentage" and m.higher_is_better and not m.needs_labels
