"""Run in a fresh process by the decoder build: TTFT, decode speed and peak memory of a (staged)
bundle through `edgecompile.runtime.load`, as an app would see them. Prints one JSON line.

    python -m edgecompile.compiler.decoder_measure BUNDLE_DIR THREADS
"""
from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

TTFT_LENGTHS = (16, 64, 256)
DECODE_TOKENS = 64
REPEATS = 3


def measure(bundle_dir: str, threads: int | None) -> dict:
    from edgecompile.runtime import load

    t0 = time.perf_counter()
    runner = load(bundle_dir, threads=threads)
    fe = runner.frontend
    list(fe.generate_ids([1] * 8, max_new_tokens=1, ignore_eos=True))
    cold = (time.perf_counter() - t0) * 1e3
    out = measure_frontend(fe, threads)
    runner.close()
    return {**out, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "cold_start_ms": cold, "torch_loaded": "torch" in sys.modules}


def measure_frontend(fe, threads: int | None) -> dict:
    """TTFT at a few prompt lengths and forced-length decoding (random token ids, EOS ignored)."""
    vocab = fe.tokenizer.vocab_size
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(min(100, vocab // 2), min(vocab, 30000), size=max(TTFT_LENGTHS))]
    list(fe.generate_ids(prompt[:8], max_new_tokens=2, ignore_eos=True))
    ttft = {}
    for n in TTFT_LENGTHS:
        if n + 1 > fe.context_length:
            continue
        runs = []
        for _ in range(REPEATS):
            list(fe.generate_ids(prompt[:n], max_new_tokens=1, ignore_eos=True))
            runs.append(fe.timings["prefill_ms"])
        ttft[str(n)] = float(np.median(runs))
    n_prompt = min(16, fe.context_length // 4)
    n_new = min(DECODE_TOKENS, fe.context_length - n_prompt)
    steps = []
    for _ in range(REPEATS):
        list(fe.generate_ids(prompt[:n_prompt], max_new_tokens=n_new, ignore_eos=True))
        steps += fe.timings["step_ms"]
    steps = np.asarray(steps)
    return {
        "ttft_ms": ttft,
        "decode_tokens_per_s": float(1e3 / steps.mean()),
        "per_token_ms": {"p50": float(np.percentile(steps, 50)), "p99": float(np.percentile(steps, 99)),
                         "n": int(steps.size), "context": f"{n_prompt}..{n_prompt + n_new} tokens"},
        "threads": threads or "ort default",
    }


if __name__ == "__main__":
    out = measure(sys.argv[1], int(sys.argv[2]) or None)
    print(json.dumps(out))
