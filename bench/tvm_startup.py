"""TVM tuning start-up: seconds from the start of a tuning step to its first measured trial, this checkout's code
against a baseline checkout's (e.g. main), back to back per model, each in a fresh process and a fresh cache.

    .venv/bin/python bench/tvm_startup.py --baseline /work/main/.venv/bin/python --models digits resnet18

Each run: export the model (as bench/tvm_vs_ort.py does), then `compile_library(..., tune_trials=4)` in a fresh
cache: ONNX -> Relax, task extraction, MetaSchedule set-up, one measured batch of 4 candidates, compile. Reported:
"first trial s" = from the compile_library call to the first measured batch (its progress line), "step s" =
the whole call, and the load average before each run (the host is shared). Writes bench/results/tvm_startup.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import Lines, load_average, write_results  # noqa: E402  (bench/ is the script's directory on sys.path)

RESULTS = Path(__file__).resolve().parent / "results" / "tvm_startup.txt"



def child(model_name: str, trials: int) -> dict:
    """One tuning step in this process (a fresh cache is set by the parent); returns the timings."""
    import edgecompile
    from edgecompile.progress import Progress
    from edgecompile.targets.profiles import get_profile
    from edgecompile.targets.tvm.build import compile_library

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tvm_vs_ort import export

    model, _, _ = export(model_name)
    marks = {}

    class Timed(Progress):
        def info(self, text: str) -> None:
            if "tune [" in text and "first" not in marks:
                marks["first"] = time.perf_counter()
            super().info(text)

    work = Path(tempfile.mkdtemp(prefix="edgecompile-bench-startup-"))
    t0 = time.perf_counter()
    meta = compile_library(model, get_profile("cpu"), work / "lib.so", tune_trials=trials, progress=Timed())
    t1 = time.perf_counter()
    tuning = meta["tuning"]
    return {"code": str(Path(edgecompile.__file__).resolve().parents[1]), "step_s": t1 - t0,
            "first_trial_s": (marks["first"] - t0) if "first" in marks else None,
            "kernels": len(tuning["tasks"]), "trials": tuning["trials_run_now"],
            "tuning_s": tuning["tuning_seconds_now"], "stopped": tuning["stopped"]}


def run_child(python: str, model_name: str, trials: int) -> dict:
    env = dict(os.environ, EDGECOMPILE_CACHE=tempfile.mkdtemp(prefix="edgecompile-bench-startup-cache-"))
    root = Path(python).absolute().parents[2]       # <checkout>/.venv/bin/python: models/ resolve in its checkout
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--child", model_name, "--trials", str(trials)],
                          env=env, cwd=root, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-4000:])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"{python} {model_name}: exit {proc.returncode}\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits", "resnet18"])
    ap.add_argument("--baseline", help="<checkout>/.venv/bin/python of the baseline checkout (imports its edgecompile)")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.trials)), flush=True)
        return 0

    from edgecompile.runtime.machine import cpu_info

    out = Lines()
    info = cpu_info()
    out(f"# bench/tvm_startup.py  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    out(f"# CPU: {info['model']} ({info['cores']} cores); load average at start {load_average()}")
    out(f"# command: bench/tvm_startup.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    out(f"# one tuning step of {args.trials} trials per run, fresh process and cache; first trial s = from the "
        "compile_library call (ONNX -> Relax, extraction, MetaSchedule set-up) to the first measured batch")
    out(f"  {'model':<9} {'code':<9} {'kernels':>7} {'first trial s':>13} {'step s':>7} {'trials':>6}  load before")
    pythons = ([("baseline", args.baseline)] if args.baseline else []) + [("this", sys.executable)]
    for name in args.models:
        for label, python in pythons:
            load = load_average()
            r = run_child(python, name, args.trials)
            first = f"{r['first_trial_s']:.1f}" if r["first_trial_s"] is not None else "none"
            out(f"  {name:<9} {label:<9} {r['kernels']:>7} {first:>13} {r['step_s']:>7.1f} {r['trials']:>6}  "
                f"{load}" + (f"  ({r['stopped']})" if r["stopped"] else ""))
    out(f"# load average at end {load_average()}")
    write_results(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
