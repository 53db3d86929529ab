"""TVM tuned with growing trial budgets vs ONNX Runtime FP32, side by side on this host: the trials -> latency curve.

    .venv/bin/python bench/tvm_vs_ort.py --models resnet18 mobilenetv2 --minutes 20     # the issue's target run
    .venv/bin/python bench/tvm_vs_ort.py --models resnet18 --minutes 4                  # a short look
    .venv/bin/python bench/tvm_vs_ort.py --models resnet18 --precision fp32 int8        # INT8 vs FP32 TVM

For each model: export once (the same ONNX graph for every candidate; ResNet-18 has random weights,
MobileNetV2 is models/mobilenetv2), compile TVM untuned, then tune in steps of doubling trial budgets
(each step tops up the records of the previous one: one MetaSchedule run with the gradient task scheduler,
the cost model warm-started from the previous step) until --minutes of tuning are spent, rebuild from the
warm database (timed: no trials run), and measure every library and ORT FP32 side by side, interleaved
A/B/A/B. Prints the curve (cumulative trials, tuning time, p50 latency, ratio to ORT) and writes it with the
CPU model and load average to bench/results/tvm_vs_ort.txt. With `--precision fp32 int8` the static INT8 QDQ
graph a `-p int8 --backend tvm` build compiles (integer kernels: targets/tvm/integer.py) is tuned the same
minutes, and ORT running that QDQ graph joins the comparison; every row gives its output's cosine to ORT FP32.
A fresh cache is used unless --cache is given; the models share it, so the second starts with the first's cost
model (and any identical kernels' records).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import Lines, load_average, write_results  # noqa: E402  (bench/ is the script's directory on sys.path)

RESULTS = Path(__file__).resolve().parent / "results" / "tvm_vs_ort.txt"


def _samples_ms(fn, feeds, rounds: int, seconds: float) -> list[float]:
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
            samples[name] += _samples_ms(fn, feeds, 3, round_seconds)
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



def quantized(model, name):
    """The static INT8 QDQ graph a `-p int8 --backend tvm` build compiles (the pass's defaults, TVM's preset),
    calibrated on the model's own calibration data."""
    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.quantize import Quantize
    from edgecompile.source import load_data, resolve_source

    src = resolve_source(f"models/{name}")
    cal = load_data(None, src, default=src.default_calibration)
    return Quantize(QuantizeSection(mode="static", calib_samples=min(64, len(cal))), backend="tvm",
                    calibration=cal)(model).model


def tune_curve(model, label, args, cpu, work, out, progress, add):
    """Untuned, then doubling trial budgets until --minutes of tuning are spent, then a warm rebuild; every
    library is added as a candidate. Returns (curve, untuned meta, warm meta, warm wall seconds)."""
    from edgecompile.targets.tvm.build import compile_library

    t0 = time.perf_counter()
    untuned = compile_library(model, cpu, work / f"{label}-untuned.so", cache=False)
    out(f"  {label}: untuned compile {time.perf_counter() - t0:.1f} s; lowering {untuned['lowering']}")
    add(f"{label} untuned", work / f"{label}-untuned.so")
    curve, budget, spent = [], args.first, 0.0
    while spent < 60.0 * args.minutes:
        lib = work / f"{label}-{budget}.so"
        meta = compile_library(model, cpu, lib, tune_trials=budget, tune_timeout=args.minutes - spent / 60.0,
                               progress=progress)
        tuning = meta["tuning"]
        spent += tuning["tuning_seconds_now"]
        name = f"{label} {tuning['trials_in_database']} trials"
        add(name, lib)
        curve.append((name, tuning))
        out(f"  {label} step: {tuning['trials_run_now']} trials run in {tuning['tuning_seconds_now']:.0f} s "
            f"(cost model warm start: {tuning['cost_model_warm_start']} samples), "
            f"{tuning['trials_in_database']} in the records" + (f"; {tuning['stopped']}" if tuning["stopped"] else ""))
        if tuning["trials_run_now"] == 0 or (tuning["stopped"] and "exhausted" in tuning["stopped"]):
            break
        budget *= 2
    t0 = time.perf_counter()
    warm = compile_library(model, cpu, work / f"{label}-warm.so", progress=progress)   # no --tune: records applied
    warm_wall = time.perf_counter() - t0
    add(f"{label} warm rebuild", work / f"{label}-warm.so")
    return curve, untuned, warm, warm_wall


def bench_model(name, args, cpu, work, out, progress):
    import onnx_ir as ir

    from edgecompile.data import TensorSpec
    from edgecompile.targets.ort.run import create_session
    from edgecompile.targets.tvm.run import load_library

    out(f"\n== {name} (batch 1; {', '.join(args.precision)}) ==")
    model, onnx_bytes, feeds = export(name)
    specs_in = [TensorSpec(k, tuple(v.shape), v.dtype.name) for k, v in feeds.items()]
    sess = create_session(onnx_bytes, threads=args.threads)
    specs_out = [TensorSpec(o.name, (), "float32") for o in sess.get_outputs()]
    candidates = {"ort fp32": lambda f, s=sess: s.run(None, f)}
    outputs = {}

    def add(label, lib):
        candidates[label] = load_library(lib, specs_in, specs_out, args.threads).run

    runs = {}
    for precision in args.precision:
        graph = model
        if precision == "int8":
            t0 = time.perf_counter()
            graph = quantized(model, name)
            out(f"  int8: static QDQ graph (TVM preset) in {time.perf_counter() - t0:.0f} s")
            qsess = create_session(ir.to_proto(graph).SerializeToString(), threads=args.threads)
            candidates["ort int8"] = lambda f, s=qsess: s.run(None, f)
        try:
            runs[precision] = tune_curve(graph, f"tvm {precision}", args, cpu, work, out, progress, add)
        except Exception as exc:       # written into the results, the other precision still measured
            out(f"  tvm {precision}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            for label in [k for k in candidates if k.startswith(f"tvm {precision}")]:
                del candidates[label]
    for label, fn in candidates.items():
        result = fn(feeds)
        first = next(iter(result.values())) if isinstance(result, dict) else result[0]
        outputs[label] = np.asarray(first, dtype=np.float64).ravel()
    out(f"  measuring {len(candidates)} candidates interleaved ({args.rounds} rounds x {args.round_seconds} s), "
        f"load average {load_average()}")
    lat = interleaved(candidates, feeds, args.rounds, args.round_seconds)
    ort = lat["ort fp32"]
    out(f"  {'':<10} {'trials':>7} {'tuning s':>9} {'p50 ms':>9} {'vs ORT':>8}  output cosine to ORT fp32")
    ref = outputs["ort fp32"]

    def row(label, trials, seconds, note=""):
        o = outputs[label]
        cos = float(o @ ref / (np.linalg.norm(o) * np.linalg.norm(ref) + 1e-30))
        out(f"  {' '.join(label.split()[:2]):<10} {trials:>7} {seconds:>9} {lat[label]:>9.3f} "
            f"{lat[label] / ort:>7.2f}x  {cos:.6f}{note}")

    row("ort fp32", "", "")
    if "ort int8" in lat:
        row("ort int8", "", "")
    for precision, (curve, untuned, warm, warm_wall) in runs.items():
        label = f"tvm {precision}"
        row(f"{label} untuned", 0, 0, "  (untuned)")
        for name_, tuning in curve:
            row(name_, tuning["trials_in_database"], f"{tuning['tuning_seconds_total']:.0f}")
        w = warm["tuning"]
        out(f"  {label} warm-database rebuild: {w['trials_run_now']} trials run, {warm_wall:.1f} s wall (TVM import "
            f"{warm['timings_s']['import']:.1f} s, compile {warm['timings_s']['compile']:.1f} s, link "
            f"{warm['timings_s']['link']:.1f} s; untuned compile {untuned['timings_s']['compile']:.1f} s); "
            f"p50 {lat[label + ' warm rebuild']:.3f} ms = {lat[label + ' warm rebuild'] / ort:.2f}x ORT")
    if set(runs) == {"fp32", "int8"}:
        f32, i8 = lat["tvm fp32 warm rebuild"], lat["tvm int8 warm rebuild"]
        out(f"  TVM int8 vs TVM fp32 after the same tuning budget ({args.minutes:g} min each): {f32 / i8:.2f}x "
            f"({'faster' if i8 < f32 else 'slower'}; {i8:.3f} vs {f32:.3f} ms)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2"])
    ap.add_argument("--minutes", type=float, default=20.0, help="tuning minutes per model and precision (default 20)")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "int8"], default=["fp32"],
                    help="fp32 and/or int8 (static QDQ, TVM's integer kernels), each tuned --minutes")
    ap.add_argument("--first", type=int, default=64, help="trials of the first step; each next step doubles")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", help="cache dir (default: a fresh temporary one, so tuning starts cold)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = ap.parse_args(argv)
    os.environ["EDGECOMPILE_CACHE"] = args.cache or tempfile.mkdtemp(prefix="edgecompile-bench-tvm-")

    from edgecompile.progress import Progress
    from edgecompile.runtime.machine import cpu_info
    from edgecompile.targets.profiles import get_profile

    out = Lines()
    info = cpu_info()
    out(f"# bench/tvm_vs_ort.py  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    out(f"# CPU: {info['model']} ({info['cores']} cores); threads={args.threads or 'default'}; "
        f"load average at start {load_average()}")
    out(f"# command: bench/tvm_vs_ort.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    out("# MetaSchedule: one run over all kernels per step, gradient task scheduler, XGBoost cost model "
        "warm-started from the previous step; latency p50 at batch 1, interleaved with ORT")
    work = Path(tempfile.mkdtemp(prefix="edgecompile-bench-libs-"))
    cpu = get_profile("cpu")
    for name in args.models:
        bench_model(name, args, cpu, work, out, Progress())
    out(f"\n# load average at end {load_average()}")
    write_results(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
