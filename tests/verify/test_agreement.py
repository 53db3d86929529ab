import numpy as np
import pytest

from edgecompile.verify.agreement import agreement, per_sample, softmax


def _logits(probs):
    return np.log(np.asarray(probs, np.float64))


def test_near_tie_flip_lowers_top1_but_not_confident_agreement():
    ref = _logits([[0.40, 0.39, 0.21], [0.90, 0.05, 0.05], [0.10, 0.80, 0.10], [0.30, 0.30, 0.40]])
    cand = _logits([[0.39, 0.40, 0.21], [0.88, 0.07, 0.05], [0.12, 0.78, 0.10], [0.30, 0.30, 0.40]])
    a = agreement(cand, ref)
    assert a["top1_agreement"] == pytest.approx(0.75)
    assert a["confident_samples"] == 2 and a["confident_agreement"] == 1.0
    assert a["top5_containment"] == 1.0                      # only 3 classes: top-5 holds all
    assert 0 < a["mean_kl"] < 0.01


def test_real_disagreement_shows_in_every_number():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(64, 20)) * 4
    a_same = agreement(ref, ref)
    assert (
        a_same["top1_agreement"] == 1.0
        and a_same["top5_containment"] == 1.0
        and a_same["mean_kl"] == pytest.approx(0, abs=1e-12)
    )
    shuffled = ref[:, rng.permutation(20)]
    a = agreement(shuffled, ref)
    assert a["top1_agreement"] < 0.3 and a["top5_containment"] < 0.6 and a["mean_kl"] > 1.0
    assert a["confident_agreement"] < 0.5


def test_kl_matches_definition_and_top5():
    p = np.array([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05]])
    q = np.array([[0.05, 0.3, 0.2, 0.2, 0.15, 0.1]])         # reference top-1 (class 0) is last in q: not in top-5
    s = per_sample(np.log(q), np.log(p))
    assert s["kl"][0] == pytest.approx(np.sum(p * np.log(p / q)))
    assert s["topk"][0] == 0.0 and s["agree"][0] == 0.0
    assert np.allclose(softmax(np.log(q)), q)


def test_no_confident_sample_gives_none_not_a_number():
    ref = np.zeros((3, 4))
    a = agreement(ref, ref)
    assert a["confident_samples"] == 0 and a["confident_agreement"] is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        per_sample(np.zeros((2, 3)), np.zeros((2, 4)))
