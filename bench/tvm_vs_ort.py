"""TVM (untuned, tuned with growing budgets, warm database) vs ONNX Runtime, FP32, on this host.

    .venv/bin/python bench/tvm_vs_ort.py --models resnet18 mobilenetv2 --budgets 64 192 --timeout 20

For each model: export once (the same ONNX graph for every candidate), compile TVM untuned, then tune
with growing trial budgets in a fresh database (each budget tops up the previous one, so the curve is
cumulative trials -> latency, with the tuning time so far), rebuild from the warm database (timing the
compile step: no re-tuning), and measure every library and ORT side by side, interleaved A/B/A/B.
Not part of CI: tuning takes minutes to hours. Uses a private cache dir unless --cache is given.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(fn, feeds, rounds: int, seconds: float) -> list[float]:
    fn(feeds)
    out = []
    t_end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn(feeds)
        out.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > t_end and len(out) >= rounds:
            return out


def interleaved(candidates: dict, feeds, rounds: int, round_seconds: float) -> dict[str, float]:
    """p50 latency (ms) per candidate, measured in interleaved rounds A/B/C/A/B/C..."""
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name] += _median_ms(fn, feeds, 3, round_seconds)
    return {name: float(np.median(v)) for name, v in samples.items()}


def export(name: str):
    import onnx_ir as ir

    from edgecompile.compiler.export import export_torch
    from edgecompile.source import load_data, resolve_source

    src = resolve_source(f"models/{name}")
    ds = load_data(None, src, default=src.default_evaluation)
    model = export_torch(src.module(), src, ds)
    feeds = {k: v[:1] for k, v in next(ds.batches(1)).items()}
    return model, ir.to_proto(model).SerializeToString(), feeds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[64, 192],
                    help="cumulative MetaSchedule trial budgets (each tops up the previous)")
    ap.add_argument("--timeout", type=float, default=20.0, help="minutes of tuning per model at most")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", help="cache dir (default: a fresh temporary one, so tuning starts cold)")
    args = ap.parse_args(argv)
    if args.cache:
        os.environ["EDGECOMPILE_CACHE"] = args.cache
    else:
        os.environ["EDGECOMPILE_CACHE"] = tempfile.mkdtemp(prefix="edgecompile-bench-tvm-")

    from edgecompile.data import TensorSpec
    from edgecompile.runtime.machine import cpu_info
    from edgecompile.progress import Progress
    from edgecompile.targets.ort.run import create_session
    from edgecompile.targets.profiles import get_profile
    from edgecompile.targets.tvm.build import compile_library
    from edgecompile.targets.tvm.run import load_library

    progress = Progress()
    cpu = get_profile("cpu")
    info = cpu_info()
    print(f"CPU: {info['model']} ({info['cores']} cores; flags {' '.join(info['flags'])}); "
          f"threads={args.threads or 'default'}; rounds={args.rounds}x{args.round_seconds}s interleaved")
    work = Path(tempfile.mkdtemp(prefix="edgecompile-bench-libs-"))
    for name in args.models:
        print(f"\n== {name} ==", flush=True)
        model, onnx_bytes, feeds = export(name)
        specs_in = [TensorSpec(k, tuple(v.shape), v.dtype.name) for k, v in feeds.items()]
        sess = create_session(onnx_bytes, threads=args.threads)
        out_names = [o.name for o in sess.get_outputs()]
        specs_out = [TensorSpec(n, (), "float32") for n in out_names]
        candidates = {"ort": lambda f, s=sess: s.run(None, f)}
        curve = []
        untuned = compile_library(model, cpu, work / f"{name}-untuned.so", cache=False)
        candidates["tvm untuned"] = load_library(work / f"{name}-untuned.so", specs_in, specs_out, args.threads).run
        spent = 0.0
        for budget in args.budgets:
            left = args.timeout - spent / 60.0
            if left <= 0:
                print(f"  budget {budget}: skipped, tuning time limit reached")
                break
            lib = work / f"{name}-tuned-{budget}.so"
            meta = compile_library(model, cpu, lib, tune_trials=budget, tune_timeout=left, progress=progress)
            spent = meta["tuning"]["tuning_seconds_total"]
            label = f"tvm {meta['tuning']['trials_in_database']} trials"
            candidates[label] = load_library(lib, specs_in, specs_out, args.threads).run
            curve.append((label, meta["tuning"]["trials_in_database"], spent, meta["tuning"]["stopped"]))
        t0 = time.perf_counter()
        # a rebuild from the warm database: no --tune at all (the database is applied automatically)
        warm = compile_library(model, cpu, work / f"{name}-warm.so", progress=progress)
        warm_wall = time.perf_counter() - t0
        candidates["tvm warm db"] = load_library(work / f"{name}-warm.so", specs_in, specs_out, args.threads).run
        lat = interleaved(candidates, feeds, args.rounds, args.round_seconds)
        ort = lat["ort"]
        print(f"  {'candidate':<22} {'p50 ms':>10} {'vs ORT':>8}")
        for label, ms in lat.items():
            print(f"  {label:<22} {ms:>10.3f} {ms / ort:>7.2f}x")
        print("  trials -> latency curve (cumulative trials, tuning seconds so far):")
        print(f"    {0:>6} trials  {0:>8.0f} s  {lat['tvm untuned']:.3f} ms (untuned)")
        for label, trials, secs, stopped in curve:
            print(
                f"    {trials:>6} trials  {secs:>8.0f} s  {lat[label]:.3f} ms" + (f"  ({stopped})" if stopped else "")
            )
        print(f"  warm database rebuild: trials run {warm['tuning']['trials_run_now']}, TVM compile step "
              f"{warm['timings_s']['compile']:.1f} s (import {warm['timings_s']['import']:.1f} s, link "
              f"{warm['timings_s']['link']:.1f} s, wall {warm_wall:.1f} s); untuned compile "
              f"{untuned['timings_s']['compile']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
