"""Text generation front-end for decoder bundles (no torch, no transformers).

The bundle's graph takes `input_ids`, `attention_mask`, `position_ids` and the past key/values of
every layer and returns `logits` and the `present.*` key/values (optimum's
`text-generation-with-past` layout). The KV cache lives here (`kv_cache.py`): the prompt is prefilled
in one call, then each new token is one call. With ONNX Runtime the cache is preallocated to the
context length up front: per layer two ping-pong buffers for keys and two for values, bound with I/O
binding as the `past_key_values.*` inputs and `present.*` outputs, so ORT writes the grown cache
straight into them and no step allocates (the decode step's logits too); beam search reorders the
buffers in place. Peak memory for the cache is those buffers: 2 x 2 x layers x batch x kv_heads x
context_length x head_dim elements, committed by the OS as positions are written. A finished
generation hands its buffers to the next one. Other engines feed and fetch numpy arrays.

Decoding: greedy, sampling (temperature, top-k, top-p, seeded numpy RNG) and beam search with a
length penalty; `stop` strings end the text (the stop string itself is not returned).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np

from edgecompile.errors import BundleError, DataError
from edgecompile.runtime.kv_cache import BoundCache, FeedCache
from edgecompile.runtime.tokenizer import Tokenizer


class GenerationFrontend:
    def __init__(self, runner, bundle, spec: dict):
        self.runner = runner
        self.spec = spec
        try:
            self.layers = [tuple(names) for names in spec["kv"]]  # (past key, past value, present key, present value)
            self.kv_heads = int(spec["num_kv_heads"])
            self.head_dim = int(spec["head_dim"])
            self.context_length = int(spec["context_length"])
            self.eos_ids = [int(i) for i in spec.get("eos_token_ids") or []]
            self.has_position_ids = bool(spec.get("position_ids", True))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{bundle.path}: the manifest's generation front-end is incomplete ({exc})",
                              hint="rebuild the bundle with this version of edgecompile") from None
        self.kv_dtype = np.dtype(spec.get("kv_dtype", "float32"))
        self.tokenizer = Tokenizer(bundle.artifact("tokenizer"), spec.get("chat_template"),
                                   spec.get("special_tokens"))
        self.session = getattr(runner, "session", None)         # ORT: preallocated cache, I/O binding
        self.timings: dict = {}                                  # last call: prefill_ms, step_ms (list)
        self._spare: BoundCache | None = None                    # a finished generation's buffers
        self._spare_lock = threading.Lock()                      # served requests generate from threads

    # -- model calls -------------------------------------------------------------------------------------
    def new_cache(self, batch: int = 1, capacity: int | None = None):
        """An empty KV cache for `batch` rows of up to `capacity` positions (default the context length)."""
        if self.session is None:
            return FeedCache(self.runner, self.layers, self.kv_heads, self.head_dim, self.kv_dtype,
                             self.has_position_ids)
        capacity = self.context_length if capacity is None else capacity
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.max_batch >= batch and spare.capacity >= capacity:
            spare.reset()
            return spare
        return BoundCache(self.session, self.layers, self.kv_heads, self.head_dim, capacity, batch, self.kv_dtype,
                          self.has_position_ids)

    def _release(self, cache) -> None:
        if isinstance(cache, BoundCache) and cache.capacity == self.context_length:
            with self._spare_lock:
                self._spare = cache

    def logits(self, ids) -> np.ndarray:
        """Logits [T, V] of a whole token sequence in one call (no cache): perplexity, recompute baselines."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        self._check_length(ids.shape[1], 0)
        cache = self.new_cache(1, ids.shape[1])
        try:
            return cache.forward(ids)[0]
        finally:
            self._release(cache)

    # -- prompts --------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            ids = self.tokenizer.encode_chat(prompt)
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, (int, np.integer)) for t in prompt):
            ids = [int(t) for t in prompt]                    # already token ids
            vocab = self.tokenizer.vocab_size
            if any(t < 0 or t >= vocab for t in ids):
                raise DataError(f"token ids must be in [0, {vocab})", hint="encode text with the bundle's tokenizer")
        else:
            raise DataError(f"prompt must be a str, a list of chat messages or token ids, got {type(prompt).__name__}",
                            hint="e.g. runner.generate('Once upon a time') or "
                                 "runner.generate([{'role': 'user', 'content': 'Hi'}])")
        if not ids:
            raise DataError("the prompt encodes to zero tokens", hint="pass a non-empty prompt")
        return ids

    def _check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        if prompt_len + max_new_tokens > self.context_length:
            raise DataError(f"the prompt ({prompt_len} tokens) plus max_new_tokens ({max_new_tokens}) is "
                            f"{prompt_len + max_new_tokens} tokens, over the model's context length "
                            f"{self.context_length}", hint="shorten the prompt or lower max_new_tokens")

    # -- decoding -----------------------------------------------------------------------------------------------
    def generate_ids(self, prompt, *, max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                     num_beams: int = 1, length_penalty: float = 1.0, ignore_eos: bool = False) -> Iterator[int]:
        """Yield the new token ids one by one (beam search yields the best beam at the end).
        `ignore_eos` decodes exactly max_new_tokens tokens (benchmarks)."""
        ids = self.encode_prompt(prompt)
        _check_options(max_new_tokens, do_sample, temperature, top_k, top_p, num_beams)
        self._check_length(len(ids), max_new_tokens)
        if max_new_tokens == 0:
            return iter(())
        if num_beams > 1:
            if do_sample:
                raise DataError("beam search with sampling is not supported", hint="use num_beams=1 with do_sample")
            return iter(self._beam(ids, max_new_tokens, num_beams, length_penalty))
        return self._decode(ids, max_new_tokens, do_sample, temperature, top_k, top_p, seed, ignore_eos)

    def _decode(self, ids, max_new_tokens, do_sample, temperature, top_k, top_p, seed, ignore_eos=False):
        rng = np.random.default_rng(seed)
        steps: list[float] = []
        self.timings = {"prompt_tokens": len(ids), "step_ms": steps}
        cache = self.new_cache(1)
        try:
            t0 = time.perf_counter()
            logits = cache.forward(np.asarray([ids], dtype=np.int64))
            self.timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
            for i in range(max_new_tokens):
                row = logits[0, -1]
                tok = _sample(row, temperature, top_k, top_p, rng) if do_sample else int(np.argmax(row))
                self.timings["new_tokens"] = i + 1
                yield tok
                if (tok in self.eos_ids and not ignore_eos) or i == max_new_tokens - 1:
                    return
                t0 = time.perf_counter()
                logits = cache.forward(np.asarray([[tok]], dtype=np.int64))
                steps.append((time.perf_counter() - t0) * 1e3)
        finally:
            self._release(cache)

    def _beam(self, ids, max_new_tokens, num_beams, length_penalty) -> list[int]:
        cache = self.new_cache(num_beams)
        try:
            return self._beam_search(cache, ids, max_new_tokens, num_beams, length_penalty)
        finally:
            self._release(cache)

    def _beam_search(self, cache, ids, max_new_tokens, num_beams, length_penalty) -> list[int]:
        """Beam search: keep the `num_beams` best partial sequences by summed log-probability; a
        finished sequence (EOS) scores sum / len**length_penalty, len = its number of new tokens."""
        steps: list[float] = []
        self.timings = {"prompt_tokens": len(ids), "step_ms": steps}
        t0 = time.perf_counter()
        logits = cache.forward(np.asarray([ids], dtype=np.int64))
        self.timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
        cache.expand(num_beams)
        logits = np.repeat(logits[:, -1:], num_beams, axis=0)
        scores = np.full(num_beams, -1e9)
        scores[0] = 0.0                     # all beams start identical: expand only the first
        beams: list[list[int]] = [[] for _ in range(num_beams)]
        finished: list[tuple[float, list[int]]] = []
        for step in range(max_new_tokens):
            logp = _log_softmax(logits[:, -1].astype(np.float64))
            cand = (scores[:, None] + logp).ravel()
            top = np.argpartition(-cand, 2 * num_beams)[:2 * num_beams] if cand.size > 2 * num_beams \
                else np.arange(cand.size)
            top = top[np.argsort(-cand[top], kind="stable")]
            vocab = logp.shape[1]
            keep_src, keep_tok, keep_score = [], [], []
            for flat in top:
                src, tok = divmod(int(flat), vocab)
                if tok in self.eos_ids:
                    seq = beams[src] + [tok]
                    finished.append((cand[flat] / (len(seq) ** length_penalty), seq))
                    continue
                keep_src.append(src), keep_tok.append(tok), keep_score.append(cand[flat])
                if len(keep_src) == num_beams:
                    break
            finished.sort(key=lambda f: -f[0])
            finished = finished[:num_beams]
            cur = step + 1
            if len(finished) == num_beams and max(keep_score) / (cur ** length_penalty) <= finished[-1][0]:
                break
            beams = [beams[s] + [t] for s, t in zip(keep_src, keep_tok)]
            scores = np.asarray(keep_score)
            if step == max_new_tokens - 1:
                break
            cache.reorder(np.asarray(keep_src))
            t0 = time.perf_counter()
            logits = cache.forward(np.asarray(keep_tok, dtype=np.int64)[:, None])
            steps.append((time.perf_counter() - t0) * 1e3)
        self.timings["new_tokens"] = step + 1
        for s, b in zip(scores, beams):
            if b:
                finished.append((s / (len(b) ** length_penalty), b))
        finished.sort(key=lambda f: -f[0])
        return finished[0][1]

    # -- text API -----------------------------------------------------------------------------------------------
    def stream(self, prompt, *, stop=None, **kw) -> Iterator[str]:
        """Yield the continuation's text as it is produced (special tokens stripped). Text that could
        still turn into a stop string, or an incomplete UTF-8 character, is held back until it can't."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise DataError("stop must be a non-empty string or a list of them", hint="e.g. stop=['\\n\\n']")
        hold = max((len(s) for s in stops), default=1) - 1
        new: list[int] = []
        sent = 0
        for tok in self.generate_ids(prompt, **kw):
            new.append(tok)
            text = self.tokenizer.decode(new)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                if cut > sent:
                    yield text[sent:cut]
                return
            if text.endswith("\ufffd"):
                continue
            ready = len(text) - hold
            if ready > sent:
                yield text[sent:ready]
                sent = ready
        text = self.tokenizer.decode(new)
        if len(text) > sent:
            yield text[sent:]

    def generate(self, prompt, **kw) -> str:
        return "".join(self.stream(prompt, **kw))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _sample(row: np.ndarray, temperature: float, top_k, top_p, rng) -> int:
    x = row.astype(np.float64) / temperature
    if top_k is not None and top_k < x.size:
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[:int(np.searchsorted(cum, top_p)) + 1]     # smallest prefix with mass >= top_p
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))


def _check_options(max_new_tokens, do_sample, temperature, top_k, top_p, num_beams) -> None:
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise DataError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}", hint="e.g. 64")
    if not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
        raise DataError(f"num_beams must be an integer >= 1, got {num_beams!r}", hint="1 = no beam search")
    if do_sample:
        if not temperature or temperature <= 0:
            raise DataError(f"temperature must be > 0 when sampling, got {temperature!r}",
                            hint="use do_sample=False for greedy decoding")
        if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise DataError(f"top_k must be an integer >= 1, got {top_k!r}", hint="None disables it")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise DataError(f"top_p must be in (0, 1], got {top_p!r}", hint="None disables it")
