"""Agreement of a classifier with its reference when there are no labels.

Plain top-1 agreement counts every sample the same, so on images where the reference itself is
unsure (two classes within a hair of each other) a tiny numeric change flips the argmax and the
metric drops without the model having got worse. So beside it we report:

* ``confident_agreement`` -- top-1 agreement on the samples where the reference's softmax max is
  at least ``CONFIDENT`` (0.5): the images whose answer is well defined (a graph that ends in Softmax
  gives probabilities, which are taken as they are, not put through a second softmax);
* ``top5_containment``    -- the fraction of samples whose reference top-1 class is among the
  candidate's top-5;
* ``mean_kl``             -- mean KL(reference softmax || candidate softmax) in nats: how far the
  whole predicted distribution moved, near-ties included, without a threshold.

The accuracy bound (``max_accuracy_drop``) applies to ``confident_agreement``: a flip between
near-tied classes on an image the reference itself is unsure about is not a degradation a user can
see as wrong, and on real photos such images are the majority (pretrained MobileNetV2 on natural
crops: mean top-1 confidence 0.38), so a top-1 bound would count rounding noise as lost points.
The confident samples are fixed by the reference alone, so every candidate is scored on the same
set. When fewer than ``min_confident(n)`` = max(30, 10 % of n) samples are confident, that set is
too small to bound anything and the bound falls back to ``top1_agreement`` over all samples;
``bound_choice`` says which metric was bound and why, and the report repeats it. Top-1 agreement,
top-5 containment and KL are always reported beside the bound metric.
All rates are fractions (0.005 = 0.5 pt), as every accuracy number in the contract.
"""
from __future__ import annotations

import math

import numpy as np

CONFIDENT = 0.5
MIN_CONFIDENT = 30              # fewer confident samples than max(MIN_CONFIDENT, MIN_CONFIDENT_SHARE * n):
MIN_CONFIDENT_SHARE = 0.10      # the bound falls back to top-1 agreement on all samples


def rows(x: np.ndarray) -> np.ndarray:
    """Output rows as class scores; a single logit (binary heads, cross-encoders) becomes the two-class
    logits [0, x], whose softmax is [1 - sigmoid(x), sigmoid(x)]: its decision is x > 0, not an argmax
    that is always 0."""
    z = np.asarray(x).reshape(len(x), -1)
    return np.concatenate([np.zeros_like(z), z], axis=1) if z.shape[1] == 1 else z


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64).reshape(len(logits), -1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def is_probabilities(x: np.ndarray) -> bool:
    """Rows that are already a distribution (a graph ending in Softmax): non-negative, summing to 1."""
    z = np.asarray(x, np.float64).reshape(len(x), -1)
    return bool(len(z)) and bool((z >= 0).all()) and bool(np.allclose(z.sum(axis=1), 1.0, atol=1e-3))


def _distribution(x: np.ndarray, probabilities: bool) -> np.ndarray:
    """Class distributions of output rows: the rows themselves when they are `probabilities` (clipped at
    0 and renormalised: INT8 rounding moves their sums), else their softmax (logits, log-probabilities)."""
    if not probabilities:
        return softmax(x)
    q = np.maximum(np.asarray(x, np.float64).reshape(len(x), -1), 0.0)
    return q / np.maximum(q.sum(axis=1, keepdims=True), 1e-300)


def distributions(candidate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reference, candidate) class distributions, both read the way the reference's outputs are:
    probabilities as they are, anything else through softmax."""
    probabilities = is_probabilities(reference)
    return _distribution(reference, probabilities), _distribution(candidate, probabilities)


def per_sample(candidate: np.ndarray, reference: np.ndarray, k: int = 5) -> dict[str, np.ndarray]:
    """Per-sample arrays: agree (0/1), top-k containment (0/1), KL (nats), reference confidence."""
    cand, ref = rows(candidate), rows(reference)
    if cand.shape != ref.shape:
        raise ValueError(f"candidate {cand.shape} and reference {ref.shape} outputs differ in shape")
    p, q = distributions(cand, ref)
    ref_top = p.argmax(axis=1)
    k = min(k, cand.shape[1])
    topk = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))), 0.0), axis=1)
    return {"agree": (q.argmax(axis=1) == ref_top).astype(np.float64),
            "topk": (topk == ref_top[:, None]).any(axis=1).astype(np.float64),
            "kl": np.maximum(kl, 0.0),
            "confidence": p.max(axis=1)}


def agreement(candidate: np.ndarray, reference: np.ndarray, *, confident: float = CONFIDENT) -> dict:
    """The four agreement numbers (and how many samples count as confident)."""
    s = per_sample(candidate, reference)
    mask = s["confidence"] >= confident
    return {
        "top1_agreement": float(s["agree"].mean()),
        "confident_agreement": float(s["agree"][mask].mean()) if mask.any() else None,
        "confident_samples": int(mask.sum()),
        "confident_threshold": confident,
        "top5_containment": float(s["topk"].mean()),
        "mean_kl": float(s["kl"].mean()),
        "n": int(len(s["agree"])),
    }


def confident_mask(reference: np.ndarray, confident: float = CONFIDENT) -> np.ndarray:
    """The samples whose reference softmax max is at least `confident` (fixed by the reference alone)."""
    reference = rows(reference)
    return _distribution(reference, is_probabilities(reference)).max(axis=1) >= confident


def min_confident(n: int) -> int:
    return max(MIN_CONFIDENT, math.ceil(MIN_CONFIDENT_SHARE * n))


def bound_choice(reference: np.ndarray, confident: float = CONFIDENT) -> dict:
    """Which agreement metric the accuracy bound applies to on this reference, and why."""
    return _choice(confident_mask(reference, confident), confident)


def _choice(mask: np.ndarray, confident: float) -> dict:
    k, n, need = int(mask.sum()), len(mask), min_confident(len(mask))
    if k >= need:
        return {"bound_metric": "confident_agreement", "confident_samples": k, "n": n, "min_confident": need,
                "bound_reason": f"bound on agreement over the {k} of {n} samples where the reference is confident "
                                f"(p>={confident:g}): flips among near-tied classes the reference itself is unsure "
                                "about are not counted as losses"}
    return {"bound_metric": "top1_agreement", "confident_samples": k, "n": n, "min_confident": need,
            "bound_reason": f"bound on top-1 agreement over all {n} samples: only {k} are confident "
                            f"(p>={confident:g}), fewer than {need} = max({MIN_CONFIDENT}, "
                            f"{100 * MIN_CONFIDENT_SHARE:g} % of samples)"}


def confident_agree(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-sample top-1 agreement (0/1) on the reference-confident samples only."""
    cand, ref = rows(candidate), rows(reference)
    mask = confident_mask(ref)
    return (cand[mask].argmax(axis=1) == ref[mask].argmax(axis=1)).astype(np.float64)


def gate_samples(reference: np.ndarray) -> tuple[str, np.ndarray | None, str]:
    """For a gate baseline: (bound metric, indices of the reference-confident samples or None for all, why)."""
    mask = confident_mask(reference)
    c = _choice(mask, CONFIDENT)
    idx = np.flatnonzero(mask) if c["bound_metric"] == "confident_agreement" else None
    return c["bound_metric"], idx, c["bound_reason"]


def is_classifier_output(out: np.ndarray) -> bool:
    a = np.asarray(out)
    return a.ndim == 2 and a.shape[1] > 1
