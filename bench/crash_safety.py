"""SIGKILL crash safety: kill `edgecompile build -o DIR` at random moments; DIR must always open as the old or
the new bundle, and every build-cache entry must pass its hash check.

    python bench/crash_safety.py [--kills 100] [--seed 0]

Two tiny ONNX models (A: y = x + w, B: y = x + 2w) are built alternately into one DIR; each build is killed
after a uniform random delay in [0, 1.2 x the measured build time]. After each kill: DIR opens and verifies
(Bundle.open: schema, link rules, sha256) and its bundle_id is one of the two known ids (or the first build's
empty state, before any commit), and every cache entry passes StageCache's hash check. Writes
bench/results/crash_safety.txt (with the CPU model).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_models(d: Path) -> tuple[Path, Path, Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    paths = []
    for name, scale in (("a", 1.0), ("b", 2.0)):
        w = numpy_helper.from_array(np.arange(4, dtype=np.float32) * scale, "W")
        g = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        p = d / f"{name}.onnx"
        onnx.save(m, p)
        paths.append(p)
    data = d / "x.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32))
    return paths[0], paths[1], data


def build_cmd(model: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edgecompile", "-q", "build", str(model), "--data", str(data), "--backend", "ort",
            "-o", str(out)]


def cache_entries_intact(root: Path) -> tuple[int, int]:
    from edgecompile.compiler.buildcache import STAGES_DIR, StageCache

    store, total, bad = StageCache(root), 0, 0
    stages = root / STAGES_DIR
    for stage in sorted(p for p in stages.iterdir() if p.is_dir()) if stages.is_dir() else []:
        for entry in sorted(p for p in stage.iterdir() if p.is_dir() and not p.name.startswith(".")):
            total += 1
            bad += not store._intact(entry, stage.name, entry.name)
    return total, bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=None, help="stop killing after this long (reports the count)")
    args = ap.parse_args()
    from edgecompile.errors import BundleError
    from edgecompile.runtime.bundle import Bundle

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="crash-safety-"))
    cache = work / "cache"
    env = {**os.environ, "EDGECOMPILE_CACHE": str(cache)}
    a, b, data = make_models(work)
    out = work / "bundle"
    ids = {}
    t0 = time.perf_counter()
    for model in (a, b):                       # the two complete bundles (and the time a build takes)
        subprocess.run(build_cmd(model, data, out), env=env, check=True, capture_output=True)
        ids[model.stem] = Bundle.open(out).bundle_id
    build_s = (time.perf_counter() - t0) / 2
    results = {"kills": 0, "killed_mid_build": 0, "old": 0, "new": 0, "broken": 0, "cache_entries_checked": 0,
               "cache_entries_bad": 0}
    failures = []
    current = "b"
    started = time.perf_counter()
    for i in range(args.kills):
        if args.max_seconds and time.perf_counter() - started > args.max_seconds:
            break
        target = "a" if current == "b" else "b"
        model = a if target == "a" else b
        # every other build with --no-cache: a full build, not a cache copy, is what gets killed then
        cmd = build_cmd(model, data, out) + (["--no-cache"] if i % 2 else [])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 1.2 * build_s))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        results["kills"] += 1
        results["killed_mid_build"] += not finished
        try:
            got = Bundle.open(out).bundle_id
        except BundleError as exc:
            results["broken"] += 1
            failures.append(f"kill {i}: {exc.message}")
            continue
        if got == ids[current]:
            results["old"] += 1
        elif got == ids[target]:
            results["new"] += 1
            current = target
        else:
            results["broken"] += 1
            failures.append(f"kill {i}: unknown bundle_id {got}")
        total, bad = cache_entries_intact(cache)
        results["cache_entries_checked"] += total
        results["cache_entries_bad"] += bad
        print(f"kill {i + 1}: {'mid-build' if not finished else 'after finish'}; {results}", flush=True)
    lines = [f"crash safety (SIGKILL during `edgecompile build`), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"kills requested {args.kills}, done {results['kills']}"
             + (f" (stopped by --max-seconds {args.max_seconds:g})" if results["kills"] < args.kills else ""),
             f"cpu: {cpu_model()} ({os.cpu_count()} cores)",
             f"one build takes {build_s:.1f} s; kill delay uniform in [0, {1.2 * build_s:.1f}] s; seed {args.seed}",
             *(f"{k}: {v}" for k, v in results.items()), *failures[:20]]
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "bench" / "results" / "crash_safety.txt").write_text(text)
    sys.exit(1 if results["broken"] or results["cache_entries_bad"] else 0)


if __name__ == "__main__":
    main()
