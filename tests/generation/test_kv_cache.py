"""The KV cache preallocated to the context length (runtime/kv_cache.py) on a tiny random GPT-2: ORT writes
the presents into our buffers (no copy, no per-step allocation), and greedy, beam and sampling outputs are
token-identical to the plain path that feeds and fetches numpy arrays."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import make_model_dir

PROMPTS = ["The quick brown fox", "Once upon a time", "def add(a, b):"]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    import edgecompile
    from edgecompile.runtime import load

    d = make_model_dir(tmp_path_factory.mktemp("tiny-gpt2") / "tiny-gpt2", "gpt2", context=64)
    b = edgecompile.build(str(d), output=tmp_path_factory.mktemp("b") / "gpt2-fp32", precision="fp32")
    with load(b.path) as r:
        yield r


class _NoSession:
    """The same engine seen without its ORT session: the numpy feed path."""

    def __init__(self, runner):
        self.run = runner.run


@pytest.fixture(scope="module")
def fes(runner):
    from edgecompile.runtime.generate import GenerationFrontend

    feed = GenerationFrontend(_NoSession(runner), runner.bundle, runner.bundle.manifest["frontend"])
    assert runner.frontend.session is not None and feed.session is None
    return runner.frontend, feed


def test_ort_writes_the_cache_into_the_preallocated_buffers(fes):
    from edgecompile.runtime.kv_cache import BoundCache, FeedCache

    bound, feed = fes
    cache, ref = bound.new_cache(1), feed.new_cache(1)
    assert isinstance(cache, BoundCache) and isinstance(ref, FeedCache)
    n_layers, ctx = len(bound.layers), bound.context_length
    assert cache.buffers.shape == (2, n_layers, 2, bound.kv_heads * ctx * bound.head_dim)
    cache.buffers.fill(np.nan)
    base = cache.buffers.ctypes.data
    ids = np.asarray([bound.encode_prompt(PROMPTS[0])])
    np.testing.assert_allclose(cache.forward(ids), ref.forward(ids), rtol=0, atol=1e-5)
    for tok in (5, 17, 99):
        logits = cache.forward(np.asarray([[tok]]))
        want = ref.forward(np.asarray([[tok]]))
        assert np.shares_memory(logits, cache.logits_buffer)            # the step's logits: our buffer
        np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5)
        for i in range(n_layers):
            for kv in (0, 1):                                            # only ORT wrote these views
                np.testing.assert_allclose(cache.view(cache.slot, i, kv), ref.past[2 * i + kv], rtol=0, atol=1e-6)
    assert cache.length == ids.shape[1] + 3 and cache.buffers.ctypes.data == base
    n = cache.length                   # beyond the written positions the buffers are still untouched
    assert np.isnan(cache.buffers[cache.slot, 0, 0, bound.kv_heads * n * bound.head_dim:]).all()


def test_greedy_beam_and_sampling_identical_to_the_feed_path(fes):
    bound, feed = fes
    for p in PROMPTS:
        for kw in ({}, {"num_beams": 3, "length_penalty": 0.7}, {"num_beams": 2},
                   {"do_sample": True, "temperature": 2.0, "top_k": 20, "seed": 3}):
            a = list(bound.generate_ids(p, max_new_tokens=20, **kw))
            b = list(feed.generate_ids(p, max_new_tokens=20, **kw))
            assert a == b, (p, kw)
        long = list(bound.generate_ids(p, max_new_tokens=bound.context_length - 10, ignore_eos=True))
        assert long == list(feed.generate_ids(p, max_new_tokens=bound.context_length - 10, ignore_eos=True))


def test_buffers_are_reused_and_concurrent_generations_do_not_share_them(fes):
    bound, feed = fes
    list(bound.generate_ids(PROMPTS[0], max_new_tokens=4))
    spare = bound._spare
    assert spare is not None
    list(bound.generate_ids(PROMPTS[1], max_new_tokens=4))
    assert bound._spare is spare                                          # the next generation took them back
    a, b = bound.generate_ids(PROMPTS[0], max_new_tokens=12, ignore_eos=True), \
        bound.generate_ids(PROMPTS[2], max_new_tokens=12, ignore_eos=True)
    got = [(next(a), next(b)) for _ in range(12)]                       # interleaved: two caches at once
    want = list(zip(feed.generate_ids(PROMPTS[0], max_new_tokens=12, ignore_eos=True),
                    feed.generate_ids(PROMPTS[2], max_new_tokens=12, ignore_eos=True)))
    assert got == want
