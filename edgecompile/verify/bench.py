"""Latency measured through the same Runner an app uses: warm-up, then enough runs for stable
percentiles. Cold start and peak RSS are measured in a fresh torch-free subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from edgecompile.runtime.specs import np_dtype


def latency(runner, feeds: Mapping[str, np.ndarray], *, warmup: int = 10, min_runs: int = 50,
            max_runs: int = 2000, min_seconds: float = 1.0, threads: int | None = None) -> dict:
    """p50/p90/p99/mean in milliseconds over at least `min_runs` runs and `min_seconds` seconds."""
    for _ in range(warmup):
        runner.run(feeds)
    samples = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        runner.run(feeds)
        samples.append(time.perf_counter() - t0)
    ms = np.asarray(samples) * 1e3
    first = next(iter(feeds.values())) if feeds else None
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "runs": len(ms),
        "warmup": warmup,
        "batch": batch,
        "threads": threads or os.cpu_count(),
        "samples": [round(float(v), 4) for v in ms[:1000]],
    }


def bench(bundle_dir: str | Path, *, runs: int = 50, warmup: int = 10, threads: int | None = None,
          batch: int = 1, min_seconds: float = 1.0, max_runs: int = 2000) -> dict:
    """Python API: latency of a bundle on synthetic inputs of the declared shapes.

    At least `runs` timed runs and `min_seconds` seconds, at most `max_runs` runs
    (`runs == max_runs, min_seconds=0` gives exactly `runs`)."""
    from edgecompile.runtime import load

    with load(bundle_dir, threads=threads) as runner:
        feeds = synthetic_feeds(runner.inputs, batch)
        return latency(runner, feeds, warmup=warmup, min_runs=runs, max_runs=max(max_runs, runs),
                       min_seconds=min_seconds, threads=threads)


def synthetic_feeds(inputs, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = [batch if not isinstance(d, int) or d <= 0 else d for d in spec.shape]
        dt = np_dtype(spec.dtype)
        if dt.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(np.float32).astype(dt)
        elif dt.kind == "U":
            feeds[spec.name] = rng.choice(np.array(["a", "b"]), size=shape)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dt)
    return feeds


_PROBE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
from edgecompile.runtime import load
t1 = time.perf_counter()
runner = load(sys.argv[1], threads=int(sys.argv[2]) if sys.argv[2] != "0" else None)
feeds = {name: np.load(f"{sys.argv[3]}_{i}.npy") for i, name in enumerate(json.loads(sys.argv[4]))}
t2 = time.perf_counter()
runner.run(feeds)
t3 = time.perf_counter()
def peak_rss_mb():
    # VmHWM belongs to this exec'd image; ru_maxrss may carry the forking parent's peak on Linux.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "load_ms": (t2 - t1) * 1e3, "first_run_ms": (t3 - t2) * 1e3,
                  "cold_start_ms": (t3 - t1) * 1e3,
                  "peak_rss_mb": peak_rss_mb(),
                  "torch_imported": "torch" in sys.modules}))
"""


def cold_start(bundle_dir: str | Path, feeds: Mapping[str, np.ndarray], threads: int | None = None,
               timeout: float = 300) -> dict:
    """Load + first inference in a fresh process (which also proves the runtime is torch-free)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgecompile-probe-") as tmp:
        prefix = os.path.join(tmp, "feed")
        names = list(feeds)            # files are numbered: an input's name never becomes a path
        for i, name in enumerate(names):
            np.save(f"{prefix}_{i}.npy", feeds[name])
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(bundle_dir), str(threads or 0), prefix,
                               json.dumps(names)],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"cold-start probe failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved(candidates: Mapping[str, Callable[[], object]], *, rounds: int = 8, seconds: float = 1.0,
                warmup: int = 3) -> dict[str, dict]:
    """Per-call latency of several zero-argument callables measured side by side.

    Each round times a burst of calls of every candidate, alternating the order (A B, B A, ...)
    so that drifting machine load hits all candidates alike; a round's value is the median call
    time of its burst (robust to preemption stalls on a loaded machine), the result per candidate
    the median over rounds, in ms. `seconds` is the total budget (about). `p10_ms` (the 10th percentile
    of all calls) is the least disturbed by other processes when a call lasts about a scheduler time slice.
    """
    names = list(candidates)
    per_call = {}
    for name in names:                       # warm up, and size the bursts to the budget
        fn = candidates[name]
        for _ in range(warmup):
            fn()
        calls, t0 = 0, time.perf_counter()
        while calls < 3 or (time.perf_counter() - t0 < 0.02 and calls < 10000):
            fn()
            calls += 1
        per_call[name] = max((time.perf_counter() - t0) / calls, 1e-7)
    share = seconds / max(1, rounds * len(names))
    burst = {n: max(1, int(share / per_call[n])) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    calls: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            fn, k = candidates[name], burst[name]
            times = np.empty(k)
            for i in range(k):
                t0 = time.perf_counter()
                fn()
                times[i] = time.perf_counter() - t0
            samples[name].append(float(np.median(times)) * 1e3)
            calls[name].append(times)
    return {n: {"ms": float(np.median(s)), "rounds": len(s), "calls_per_round": burst[n],
                "p99_ms": float(np.percentile(np.concatenate(calls[n]), 99)) * 1e3,
                "p10_ms": float(np.percentile(np.concatenate(calls[n]), 10)) * 1e3,
                "samples_ms": [round(v, 5) for v in s]} for n, s in samples.items()}
