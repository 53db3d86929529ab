"""The text front-end of text bundles: `runner.encode(texts)` and `runner.classify(texts)`.

Torch-free: the bundle's `tokenizer.json` (a hashed artifact) runs with the `tokenizers` package,
the graph with the bundle's engine. Texts are tokenized, truncated to the manifest's `max_length`
(a truncation is reported with a RuntimeWarning naming the texts, never silent), and padded to
the smallest length bucket that holds the longest text of each batch, so short texts do not pay
for `max_length` tokens. Pooling and normalisation are those recorded in the manifest: applied in
the graph (`pooling_applied: "graph"`), or here on a `last_hidden_state` output. A text may be a pair
(`(first, second)`: cross-encoders, NLI), tokenized as the model's tokenizer joins pairs. Classification
scores follow the manifest's `scoring` (softmax, sigmoid per label, or none for regression heads).
"""
from __future__ import annotations

import warnings

import numpy as np

from edgecompile.errors import BundleError, DataError
from edgecompile.runtime.tokenizer import read_tokenizer_json


class TextFrontend:
    def __init__(self, runner, bundle, spec: dict):
        self.runner = runner
        self.spec = spec
        self.task = spec.get("task", "feature-extraction")
        self.max_length = int(spec["max_length"])
        self.buckets = sorted(int(b) for b in spec.get("buckets") or [self.max_length])
        self.input_names = list(spec["input_names"])
        self.output = spec["output"]
        self.pooling = spec.get("pooling")
        self.normalize = bool(spec.get("normalize"))
        self.pooling_applied = spec.get("pooling_applied")
        self.labels = spec.get("labels")
        self.scoring = spec.get("scoring") or "softmax"        # bundles before the field: softmax
        self.tokenizer = read_tokenizer_json(bundle.artifact("tokenizer"), self.max_length)

    # -- tokenization -------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[int]]:
        """Feeds for `texts`, padded to a length bucket; the indices of truncated texts."""
        return tokenize(self.tokenizer, texts, self.input_names, self.buckets, self.max_length)

    def _check(self, texts) -> list:
        if isinstance(texts, str):
            texts = [texts]
        texts = [tuple(t) if isinstance(t, list) else t for t in texts]
        if not texts:
            raise DataError("no texts given", hint="pass a non-empty list of strings")
        bad = [t for t in texts if not isinstance(t, str)
               and not (isinstance(t, tuple) and len(t) == 2 and all(isinstance(x, str) for x in t))]
        if bad:
            what = f"a {len(bad[0])}-tuple" if isinstance(bad[0], tuple) else type(bad[0]).__name__
            raise DataError(f"texts must be strings or (first, second) pairs of strings, got {what}",
                            hint="pass a list of str, or of 2-tuples of str for a pair model")
        return texts

    def _forward(self, texts: list[str], batch_size: int) -> np.ndarray:
        texts = self._check(texts)
        outs = []
        truncated: list[int] = []
        # sort by length so that each batch is padded only to its own longest text
        order = sorted(range(len(texts)), key=lambda i: sum(map(len, texts[i])) if isinstance(texts[i], tuple)
                       else len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            feeds, cut = self.tokenize([texts[i] for i in idx])
            truncated.extend(idx[j] for j in cut)
            res = self.runner.run(feeds)[self.output]
            if self.pooling_applied != "graph" and self.task == "feature-extraction":
                res = pool(res, feeds["attention_mask"], self.pooling or "mean", self.normalize)
            outs.append(res)
        if truncated:
            shown = ", ".join(map(str, sorted(truncated)[:10])) + (" ..." if len(truncated) > 10 else "")
            warnings.warn(f"{len(truncated)} text(s) longer than {self.max_length} tokens were truncated "
                          f"(index {shown})", RuntimeWarning, stacklevel=4)
        out = np.concatenate(outs)
        result = np.empty_like(out)
        result[order] = out
        return result

    # -- public --------------------------------------------------------------------------------
    def encode(self, texts, batch_size: int = 32) -> np.ndarray:
        """float32 [N, dim] sentence embeddings (normalised when the manifest says so)."""
        if self.task != "feature-extraction":
            raise BundleError(f"this is a {self.task} bundle; encode() needs a feature-extraction bundle",
                              hint="use runner.classify(texts)")
        return np.ascontiguousarray(self._forward(texts, batch_size), np.float32)

    def classify(self, texts, batch_size: int = 32) -> dict:
        """{"labels": [N top labels], "scores": float32 [N] (the top label's score),
        "probabilities": float32 [N, classes]} by the manifest's scoring: softmax over the classes, or a
        sigmoid per label (multi-label heads, single-logit heads such as cross-encoders; then also
        "active": per text the labels scoring >= 0.5). Regression heads (scoring none) give
        "values": float32 [N, outputs] (raw) and "scores" = the first value, with no probabilities."""
        if self.task != "text-classification":
            raise BundleError(f"this is a {self.task} bundle; classify() needs a text-classification bundle",
                              hint="use runner.encode(texts)")
        logits = self._forward(texts, batch_size).astype(np.float64)
        names = self.labels or [f"LABEL_{i}" for i in range(logits.shape[1])]
        if self.scoring == "none":
            values = logits.astype(np.float32)
            return {"labels": [names[0]] * len(values), "scores": values[:, 0].copy(), "values": values}
        if self.scoring == "sigmoid":
            probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        else:
            z = np.exp(logits - logits.max(1, keepdims=True))
            probs = (z / z.sum(1, keepdims=True)).astype(np.float32)
        top = probs.argmax(1)
        res = {"labels": [names[i] for i in top], "scores": probs[np.arange(len(top)), top], "probabilities": probs}
        if self.scoring == "sigmoid":
            res["active"] = [[names[j] for j in np.flatnonzero(row >= 0.5)] for row in probs]
        return res


def tokenize(tokenizer, texts: list[str], input_names: list[str], buckets: list[int],
             max_length: int) -> tuple[dict[str, np.ndarray], list[int]]:
    """Token arrays for `texts` (a tokenizer with truncation to `max_length` enabled), padded to the
    smallest bucket that holds the longest text; and the indices of the texts that were truncated."""
    encs = tokenizer.encode_batch(list(texts))
    truncated = [i for i, e in enumerate(encs) if e.overflowing]
    longest = max((len(e.ids) for e in encs), default=1)
    length = next((b for b in sorted(buckets) if longest <= b), max_length)
    n = len(encs)
    arrays = {"input_ids": np.zeros((n, length), np.int64), "attention_mask": np.zeros((n, length), np.int64),
              "token_type_ids": np.zeros((n, length), np.int64),
              # right padding: each text's tokens sit at positions 0..k-1 (GPT-2-style exports take them)
              "position_ids": np.broadcast_to(np.arange(length, dtype=np.int64), (n, length)).copy()}
    for i, e in enumerate(encs):
        k = len(e.ids)
        arrays["input_ids"][i, :k] = e.ids
        arrays["attention_mask"][i, :k] = e.attention_mask
        arrays["token_type_ids"][i, :k] = e.type_ids
    missing = [name for name in input_names if name not in arrays]
    if missing:
        raise BundleError(f"text front-end cannot make model inputs {missing}", hint="rebuild the bundle")
    return {name: arrays[name] for name in input_names}, truncated


def tokenize_for(tokenizer, texts: list, frontend: dict) -> tuple[dict[str, np.ndarray], list[int]]:
    """`tokenize` by the rules of a text `frontend` record (input names, max length, length buckets)."""
    max_length = int(frontend["max_length"])
    return tokenize(tokenizer, texts, list(frontend["input_names"]),
                    [int(b) for b in frontend.get("buckets") or [max_length]], max_length)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    m = mask[:, :, None].astype(np.float32)
    if pooling == "mean":
        out = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    elif pooling == "cls":
        out = hidden[:, 0]
    elif pooling == "max":
        out = (hidden + (1.0 - m) * -1e9).max(1)
    elif pooling == "mean_sqrt_len":
        out = (hidden * m).sum(1) / np.sqrt(np.maximum(m.sum(1), 1e-9))
    elif pooling == "weightedmean":       # position-weighted (1..S) mean of the real tokens
        w = m * np.arange(1, hidden.shape[1] + 1, dtype=np.float32)[None, :, None]
        out = (hidden * w).sum(1) / np.maximum(w.sum(1), 1e-9)
    elif pooling == "lasttoken":          # right padding: the last real token
        last = np.maximum(mask.astype(np.int64).sum(1) - 1, 0)
        out = hidden[np.arange(len(hidden)), last]
    else:
        raise BundleError(f"unknown pooling {pooling!r} in the manifest", hint="rebuild the bundle")
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
