"""Build-cache effect on `edgecompile build models/digits` through the real CLI (fresh processes).

Interleaves, per round: a build with --no-cache (everything recomputed; trained weights kept),
a build that misses the bundle cache but hits the export stage (a changed --threads), and an
identical rebuild (bundle cache hit). Prints wall-clock medians and ratios measured in this run.

    .venv/bin/python bench/build_cache.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from edgecompile.runtime.machine import cpu_info


def timed(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgecompile", "-q", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    rounds = ap.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="ec-bench-cache-") as tmp:
        env = {**os.environ, "EDGECOMPILE_CACHE": os.path.join(tmp, "cache")}
        out = os.path.join(tmp, "bundle")
        timed(["build", "models/digits", "-o", out], env)                  # warm: weights, data, entries
        times: dict[str, list[float]] = {"no-cache": [], "export hit": [], "bundle hit": []}
        for i in range(rounds):
            times["no-cache"].append(timed(["build", "models/digits", "-o", out, "--no-cache"], env))
            # a thread count not built before: the bundle misses, the export stage hits
            times["export hit"].append(timed(["build", "models/digits", "-o", out, "--threads", str(10 + i)], env))
            times["bundle hit"].append(timed(["build", "models/digits", "-o", out], env))
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = cpu_info()
    print(f"edgecompile build models/digits (wall clock, fresh process each, median of {rounds}, interleaved)")
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores)")
    for k, v in times.items():
        print(f"  {k:<11} {med[k]:6.2f} s   runs: {', '.join(f'{t:.2f}' for t in v)}")
    print(f"  ratio no-cache / bundle hit: {med['no-cache'] / med['bundle hit']:.1f}x;  "
          f"no-cache / export hit: {med['no-cache'] / med['export hit']:.1f}x")


if __name__ == "__main__":
    main()
