"""Overhead of edgecompile.runtime over raw onnxruntime, measured side by side in one run.

    .venv/bin/python bench/runtime_overhead.py [--rounds 7] [--calls-digits 3000] [--calls-resnet 40]

Builds (or reuses, with --reuse DIR) resnet18 and digits cpu/ort bundles, then alternates rounds of raw
`InferenceSession.run` and `Runner.run` on the same session options, same feeds, same threads, and prints
the median-of-rounds ratio (goal <= 1.02x on resnet18) and microseconds per call on digits.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def compare(bundle_dir: Path, calls: int, rounds: int, threads: int | None) -> dict:
    import edgecompile
    from edgecompile.verify.bench import synthetic_feeds
    from edgecompile.targets.ort.run import create_session

    runner = edgecompile.runtime.load(bundle_dir, threads=threads)
    raw = create_session(str(runner.bundle.artifact("model")), threads=threads)
    feeds = synthetic_feeds(runner.inputs, 1)
    names = [o.name for o in runner.outputs]
    raw_fn = lambda: raw.run(names, feeds)  # noqa: E731
    ec_fn = lambda: runner.run(feeds)  # noqa: E731
    for fn in (raw_fn, ec_fn):
        per_call_us(fn, max(3, calls // 10))          # warm-up
    raw_t, ec_t = [], []
    for r in range(rounds):                             # interleave, alternating who goes first
        pair = [(raw_t, raw_fn), (ec_t, ec_fn)]
        for acc, fn in (pair if r % 2 == 0 else pair[::-1]):
            acc.append(per_call_us(fn, calls))
    np.testing.assert_allclose(raw_fn()[0], ec_fn()[names[0]])
    return {"raw_us": statistics.median(raw_t), "edgecompile_us": statistics.median(ec_t),
            "ratio": statistics.median(e / r for e, r in zip(ec_t, raw_t))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls-digits", type=int, default=3000)
    ap.add_argument("--calls-resnet", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reuse", type=Path, default=None, help="directory with/for digits-cpu and resnet18-cpu bundles")
    args = ap.parse_args()

    import edgecompile
    from edgecompile.runtime.machine import cpu_info

    root = args.reuse or Path(tempfile.mkdtemp(prefix="ec-bench-"))
    bundles = {}
    for name in ("digits", "resnet18"):
        out = root / f"{name}-cpu"
        if not (out / "manifest.json").is_file():
            edgecompile.build(name, target="cpu", backend="ort", output=out)
        bundles[name] = out
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores; {' '.join(cpu['flags'])})")
    print(f"{'model':<10} {'raw ORT':>12} {'edgecompile':>12} {'ratio':>8}")
    for name, calls in (("resnet18", args.calls_resnet), ("digits", args.calls_digits)):
        res = compare(bundles[name], calls, args.rounds, args.threads)
        unit = "ms" if res["raw_us"] > 1000 else "us"
        scale = 1e-3 if unit == "ms" else 1.0
        print(f"{name:<10} {res['raw_us'] * scale:>9.3f} {unit} {res['edgecompile_us'] * scale:>9.3f} {unit} "
              f"{res['ratio']:>7.3f}x   (+{res['edgecompile_us'] - res['raw_us']:.2f} us/call)")
    print("goal: resnet18 ratio <= 1.02x")


if __name__ == "__main__":
    main()
