"""Agreement of a classifier with its reference when there are no labels.

Plain top-1 agreement counts every sample the same, so on images where the reference itself is
unsure (two classes within a hair of each other) a tiny numeric change flips the argmax and the
metric drops without the model having got worse. So beside it we report:

* ``confident_agreement`` -- top-1 agreement on the samples where the reference's softmax max is
  at least ``CONFIDENT`` (0.5): the images whose answer is well defined;
* ``top5_containment``    -- the fraction of samples whose reference top-1 class is among the
  candidate's top-5;
* ``mean_kl``             -- mean KL(reference softmax || candidate softmax) in nats: how far the
  whole predicted distribution moved, near-ties included, without a threshold.

The accuracy bound (``max_accuracy_drop``) applies to ``top1_agreement`` (the task metric), which
is the strictest: it is what a user sees change. The others tell whether a drop comes from
near-ties (confident agreement and top-5 stay high) or from a real degradation.
All rates are fractions (0.005 = 0.5 pt), as every accuracy number in the contract.
"""
from __future__ import annotations

import numpy as np

CONFIDENT = 0.5


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64).reshape(len(logits), -1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_sample(candidate: np.ndarray, reference: np.ndarray, k: int = 5) -> dict[str, np.ndarray]:
    """Per-sample arrays: agree (0/1), top-k containment (0/1), KL (nats), reference confidence."""
    cand = np.asarray(candidate).reshape(len(candidate), -1)
    ref = np.asarray(reference).reshape(len(reference), -1)
    if cand.shape != ref.shape:
        raise ValueError(f"candidate {cand.shape} and reference {ref.shape} outputs differ in shape")
    p, q = softmax(ref), softmax(cand)
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


def is_classifier_output(out: np.ndarray) -> bool:
    a = np.asarray(out)
    return a.ndim == 2 and a.shape[1] > 1
