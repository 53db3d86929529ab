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


# -- the bound for unlabelled classifiers: confident agreement, with a fallback (issue 21) -------------

def _near_tie_set(n_confident: int, n_ties: int):
    """Reference logits: `n_confident` samples sure of class 0 (p ~ 0.98), `n_ties` samples split between
    classes 0 and 1 (p ~ 0.49 each); the candidate flips every near tie to class 1."""
    conf = np.tile([5.0, 0.0, 0.0, 0.0], (n_confident, 1))
    ties = np.tile([0.05, 0.0, -3.0, -3.0], (n_ties, 1))
    ref = np.concatenate([conf, ties])
    cand = ref + np.array([0.0, 0.1, 0.0, 0.0])
    return ref, cand


def _score(cand, ref):
    from edgecompile.data import Dataset
    from edgecompile.verify.evaluate import choose_metric, compare

    ds = Dataset("synthetic", {"x": ref.astype(np.float32)})
    return compare(cand, ref, ds, choose_metric("top1", ds, classifier=True), "fp32")


def test_near_tie_flips_lower_top1_a_lot_but_the_bound_holds():
    ref, cand = _near_tie_set(40, 60)
    ev = _score(cand, ref)
    assert ev.agreement["top1_agreement"] == pytest.approx(0.40)         # 60 % of the samples flipped
    assert ev.metric == "confident_agreement" and ev.candidate == 1.0 and ev.n == 40
    assert ev.drop() == 0.0                                               # within any bound
    assert ev.agreement["bound_metric"] == "confident_agreement"
    assert "40 of 100" in ev.agreement["bound_reason"]


def test_flips_on_confident_samples_fail_the_bound():
    ref, cand = _near_tie_set(40, 60)
    cand[:4] = [0.0, 5.0, 0.0, 0.0]                                       # 4 of 40 confident samples flipped
    ev = _score(cand, ref)
    assert ev.metric == "confident_agreement" and ev.candidate == pytest.approx(0.9)
    assert ev.drop() == pytest.approx(10.0) and ev.drop() > 1.0


def test_too_few_confident_samples_bound_top1_agreement():
    # 29 confident of 100 (< max(30, 10)): top-1 agreement over all samples is bound, and the report says so
    ref, cand = _near_tie_set(29, 71)
    ev = _score(cand, ref)
    assert ev.metric == "top1_agreement" and ev.candidate == pytest.approx(0.29) and ev.n == 100
    assert ev.drop() == pytest.approx(71.0)
    assert ev.agreement["bound_metric"] == "top1_agreement" and "fewer than 30" in ev.agreement["bound_reason"]
    # with 1,000 samples the floor is 10 %: 99 confident are too few, 100 are enough
    from edgecompile.verify.agreement import bound_choice

    assert bound_choice(_near_tie_set(99, 901)[0])["bound_metric"] == "top1_agreement"
    assert bound_choice(_near_tie_set(100, 900)[0])["bound_metric"] == "confident_agreement"


def test_labelled_classifiers_keep_top1_on_labels():
    from edgecompile.data import Dataset
    from edgecompile.verify.evaluate import choose_metric, compare

    ref, cand = _near_tie_set(40, 60)
    ds = Dataset("synthetic", {"x": ref.astype(np.float32)}, labels=np.zeros(100, np.int64))
    ev = compare(cand, ref, ds, choose_metric("top1", ds, classifier=True), "fp32")
    assert ev.metric == "top1" and ev.candidate == pytest.approx(0.40) and "bound_metric" not in ev.agreement


def test_a_graph_ending_in_softmax_is_scored_on_its_own_probabilities():
    """Probabilities put through a second softmax are nearly uniform over 1000 classes (max ~0.003), so
    no sample would count as confident; they are taken as they are, and an INT8 candidate whose rows
    no longer sum to exactly 1 is renormalised, not re-softmaxed."""
    from edgecompile.verify.agreement import confident_mask

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 1000))
    logits[:100, 7] += 30                                     # half the samples: sure of class 7
    probs = softmax(logits)
    assert confident_mask(probs).sum() == 100 == confident_mask(logits).sum()
    cand = np.round(probs * 256) / 256                        # coarse rounding: sums move off 1
    cand[:10, 7], cand[:10, 8] = 0.0, 1.0                     # 10 confident samples flip to class 8
    r = agreement(cand, probs)
    assert r["confident_samples"] == 100 and r["confident_agreement"] == pytest.approx(0.9)
    s = per_sample(probs, probs)
    assert s["kl"] == pytest.approx(np.zeros(200), abs=1e-12) and s["confidence"][:100].min() > 0.99
