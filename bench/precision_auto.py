"""Issue 21 on pretrained MobileNetV2 through the real CLI (fresh processes, a private cache):

1. `edgecompile build models/mobilenetv2 --precision auto --max-accuracy-drop 1`: what ships (backend,
   precision, the bound metric and its delta, top-1 agreement beside it) and its batch-1 speed against
   the FP32 bundle, both loaded through the runtime and timed side by side (interleaved rounds).
2. Wall time of `--backend auto --precision int8` against a single-backend `--backend ort --precision
   int8` build, alternated (ort, auto, auto, ort, ...). Every timed build runs in a fresh process
   with the build cache's bundle entries removed (the quantized result is cold) and the export
   stage kept (torch export + parity + FP32 reference, the same for both; warmed by the FP32 build
   first). Calibration is shared only as a user gets it: within one build process, across the
   backend candidates of `auto` (passes/calibration_cache.py), never across builds.

    .venv/bin/python bench/precision_auto.py [--rounds 1] [--out bench/results/precision_auto_mobilenetv2.txt]

About 8-10 minutes on 2 vCPUs (rounds=1: five MobileNetV2 builds).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import Lines, load_average  # noqa: E402
from quantization import cpu_line  # noqa: E402  (sibling bench script)

LINES = say = Lines()      # say(text): print the line and keep it for the results file
MODEL = "models/mobilenetv2"


def build(args: list[str], env: dict, out: Path) -> float:
    """One `edgecompile build` in a fresh process; wall seconds. The bundle cache is emptied first."""
    shutil.rmtree(Path(env["EDGECOMPILE_CACHE"]) / "stages" / "bundle", ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgecompile", "-q", "build", MODEL, *args, "-o", str(out)],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"build {' '.join(args)} failed (exit {r.returncode}):\n{r.stdout[-3000:]}")
    return dt


def report(bundle: Path) -> dict:
    return json.loads((bundle / "report.json").read_text())


def side_by_side(a: Path, b: Path, seconds: float) -> dict:
    """Batch-1 latency of two bundles through the runtime, interleaved rounds (ms, medians)."""
    from edgecompile.runtime import load as load_bundle
    from edgecompile.verify.bench import interleaved
    from edgecompile.verify.regression import bundle_dataset
    from edgecompile.runtime.bundle import Bundle

    feeds = bundle_dataset(Bundle.open(a)).first_feed()
    with load_bundle(a) as ra, load_bundle(b) as rb:
        return interleaved({"a": lambda: ra.run(feeds), "b": lambda: rb.run(feeds)}, rounds=10, seconds=seconds)


def part1(env: dict, root: Path, fp32: Path) -> None:
    out = root / "auto"
    args = ["--precision", "auto", "--max-accuracy-drop", "1"]
    say(f"## 1. edgecompile build {MODEL} {' '.join(args)}")
    dt = build(args, env, out)
    rep = report(out)
    man = json.loads((out / "manifest.json").read_text())
    acc, ag = rep["accuracy"], rep["accuracy"].get("agreement") or {}
    say(f"build wall time {dt:.0f} s; shipped: backend {man.get('backend')}, precision "
        f"{man.get('precision')}" + (f", {len(man['float_nodes'])} nodes kept in float" if man.get("float_nodes")
                                     else ""))
    say(f"bound metric {acc['metric']}: {100 * acc['candidate']:.2f} % (reference {100 * acc['reference']:.2f} %, "
        f"delta {100 * acc['delta']:+.2f} pt, n={acc['n']}, 95% CI {100 * acc['ci95'][0]:.2f} .. "
        f"{100 * acc['ci95'][1]:.2f} %)")
    if ag:
        say(f"beside it: top-1 agreement {100 * ag['top1_agreement']:.2f} %, top-5 containment "
            f"{100 * ag['top5_containment']:.2f} %, mean KL {ag['mean_kl']:.4f}; confident samples "
            f"{ag['confident_samples']} of {ag['n']}")
        if ag.get("bound_reason"):
            say(f"why: {ag['bound_reason']}")
    choice = rep.get("backend_choice") or {}
    if choice:
        say(f"auto chose {choice['chosen']['backend']} {choice['chosen']['precision']}: {choice['chosen']['reason']}")
        say("| backend | precision | p50 ms | speed vs ORT fp32 | bound-metric drop pt | status |")
        say("|---|---|---|---|---|---|")
        for c in choice["candidates"]:
            sp = c.get("speedup_vs_ort_fp32")
            drop = c.get("accuracy_drop")
            say(f"| {c['backend']} | {c['precision']} | {c['p50_ms'] or float('nan'):.3f} | "
                f"{'' if sp is None else f'{sp:.2f}x'} | {'' if drop is None else f'{drop:.2f}'} | "
                f"{c['status']}{': ' + c['reason'] if c.get('reason') else ''} |")
    lat = side_by_side(fp32, out, seconds=8.0)
    say(f"shipped bundle vs the FP32 bundle (ORT fp32, runtime, batch 1, 10 interleaved rounds): "
        f"{lat['a']['ms']:.3f} ms / {lat['b']['ms']:.3f} ms = {lat['a']['ms'] / lat['b']['ms']:.2f}x faster than FP32")
    say()


def part2(env: dict, root: Path, rounds: int) -> None:
    say(f"## 2. wall time: --backend auto --precision int8 vs --backend ort --precision int8 ({rounds} round(s), "
        "alternated; fresh process each; bundle cache emptied before each, export stage cached)")
    kinds = {"ort": ["--backend", "ort", "--precision", "int8"], "auto": ["--backend", "auto", "--precision", "int8"]}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        for k in (("ort", "auto") if r % 2 == 0 else ("auto", "ort")):
            times[k].append(build(kinds[k], env, root / f"int8-{k}"))
            say(f"  round {r + 1} {k:<4} {times[k][-1]:.1f} s  (load {load_average()})")
    q = report(root / "int8-auto")
    choice = q.get("backend_choice") or {}
    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = ", ".join(f"{a / o:.2f}x" for a, o in zip(times["auto"], times["ort"]))
    say(f"median ort {med['ort']:.1f} s, auto {med['auto']:.1f} s: auto / single = {med['auto'] / med['ort']:.2f}x "
        f"(per round: {pairs}; target <= 1.5x)")
    if choice:
        say("auto int8 candidates: " + ", ".join(f"{c['backend']}/{c['precision']} {c['status']}"
                                                  for c in choice["candidates"]))
    say()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default="bench/results/precision_auto_mobilenetv2.txt")
    ap.add_argument("--skip", choices=["1", "2"], help="leave out part 1 or 2")
    a = ap.parse_args()
    t0 = time.time()
    say(f"# .venv/bin/python bench/precision_auto.py {' '.join(sys.argv[1:])}   "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    say(f"CPU: {cpu_line()}")
    say(f"load average {load_average()} at the start")
    with tempfile.TemporaryDirectory(prefix="ec-bench-auto-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "EDGECOMPILE_CACHE": str(root / "cache")}
        dt = build(["--backend", "ort", "--precision", "fp32"], env, root / "fp32")     # warms export + data
        say(f"warm-up: FP32 ORT build {dt:.0f} s (fills the private cache's export stage and photo crops)")
        say()
        if a.skip != "1":
            part1(env, root, root / "fp32")
        if a.skip != "2":
            part2(env, root, a.rounds)
    say(f"({time.time() - t0:.0f} s in all; load average {load_average()} at the end)")
    Path(a.out).write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
