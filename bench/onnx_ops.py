"""Single-operator ONNX models through `edgecompile build` + `edgecompile.runtime`, against raw ONNX Runtime.

The cases are ONNX's own operator test cases (`onnx.backend.test.case.node`, shipped in the onnx wheel:
model, inputs and numpy reference outputs per case). For each case with plain tensor inputs/outputs:

  * ORT:  onnxruntime.InferenceSession(model).run(inputs) vs the reference outputs;
  * ours: `edgecompile build model.onnx --data inputs.npz -o DIR [--backend B]` (the CLI's `main`, in this
          process by default, or a fresh process per build with --fresh),
          then `edgecompile.runtime.load(DIR).run(inputs)` vs the reference outputs.

Both use the case's own rtol/atol (exact match for integer/bool/string outputs). A failing build must be
a one-line error with exit code 1 or 2, never "internal error"; those are counted separately.
Prints the pass shares and writes bench/results/onnx_ops.txt.

    .venv/bin/python bench/onnx_ops.py [--every K] [--backend ort] [--fresh [--jobs 2]]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def cases(every: int) -> list:
    """ONNX's node test cases whose inputs and outputs are all plain numpy tensors, every K-th by name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        found = collect_testcases(None)
    keep = []
    for c in sorted(found, key=lambda c: c.name):
        if not c.data_sets or c.kind != "node":
            continue
        ins, outs = c.data_sets[0]
        if all(isinstance(a, np.ndarray) and a.dtype.kind in "biufUO" for a in [*ins, *outs]):
            keep.append(c)
    return keep[::every]


def close(got, want, rtol: float, atol: float) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "fc":
        return bool(np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                                equal_nan=True))
    if want.dtype.kind in "UO":
        return bool((got.astype(str) == want.astype(str)).all())
    return bool((got == want).all())


def feeds_of(case) -> dict[str, np.ndarray]:
    ins = case.data_sets[0][0]
    names = [i.name for i in case.model.graph.input if i.name not in {x.name for x in case.model.graph.initializer}]
    return {n: (a.astype(str) if a.dtype.kind == "O" else a) for n, a in zip(names, ins)}


def run_ort(case) -> tuple[bool, str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(case.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds_of(case))
    except Exception as exc:
        return False, " ".join(str(exc).split())[:160]
    ok = all(close(g, w, case.rtol, case.atol) for g, w in zip(got, case.data_sets[0][1]))
    return ok, "" if ok else "outputs differ from the reference"


def cli(argv: list[str], fresh: bool) -> tuple[int, str]:
    """`edgecompile ARGV` -> (exit code, stderr): in a fresh process, or in this one through the CLI's own
    `main` (same code path, exit code and messages; saves the ~5 s of imports per case)."""
    if fresh:
        proc = subprocess.run([sys.executable, "-m", "edgecompile", *argv], capture_output=True, text=True,
                              timeout=300)
        return proc.returncode, proc.stderr
    from edgecompile.cli.main import main as cli_main

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli_main(argv)
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return rc, buf.getvalue()


def run_ours(case, root: Path, backend: str | None, fresh: bool) -> tuple[str, str]:
    """("pass" | "mismatch" | "error" | "internal", detail)."""
    import onnx

    from edgecompile.runtime import load

    d = root / case.name
    d.mkdir()
    onnx.save(case.model, d / "model.onnx")
    feeds = feeds_of(case)
    np.savez(d / "inputs.npz", **feeds)
    argv = ["-q", "build", str(d / "model.onnx"), "--data", str(d / "inputs.npz"), "-o", str(d / "bundle")]
    argv += ["--backend", backend] if backend else []
    rc, stderr = cli(argv, fresh)
    err = [ln for ln in stderr.splitlines() if ln.strip()]
    if rc != 0:
        one = next((ln for ln in err if ln.startswith("error:")), err[0] if err else "(no message)")
        clean = rc in (1, 2) and "internal error" not in stderr and "Traceback" not in stderr
        return ("error" if clean else "internal"), f"exit {rc}: {one[:200]}"
    try:
        with load(d / "bundle") as runner:
            got = runner.run(feeds)
    except Exception as exc:
        return "mismatch", f"runtime: {exc.__class__.__name__}: {str(exc)[:160]}"
    bad = [n for (n, g), w in zip(got.items(), case.data_sets[0][1]) if not close(g, w, case.rtol, case.atol)]
    return ("mismatch", f"output(s) {bad} differ from the reference") if bad else ("pass", "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=25, help="take every K-th case (by name); 1 = all")
    ap.add_argument("--backend", default="ort", help="--backend for the builds ('' = the target's default, auto)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel builds (with --fresh only)")
    ap.add_argument("--fresh", action="store_true", help="one fresh `edgecompile` process per build")
    ap.add_argument("--out", default="bench/results/onnx_ops.txt")
    args = ap.parse_args()
    from edgecompile.runtime.machine import cpu_info

    t0 = time.perf_counter()
    selected = cases(args.every)
    ort_ok = {c.name: run_ort(c) for c in selected}
    with tempfile.TemporaryDirectory(prefix="ec-onnx-ops-") as tmp:
        os.environ.setdefault("EDGECOMPILE_CACHE", os.path.join(tmp, "cache"))
        with cf.ThreadPoolExecutor(args.jobs if args.fresh else 1) as pool:
            ours = dict(zip([c.name for c in selected],
                            pool.map(lambda c: run_ours(c, Path(tmp), args.backend or None, args.fresh), selected)))
    n = len(selected)
    ort_pass = sum(ok for ok, _ in ort_ok.values())
    our_pass = sum(s == "pass" for s, _ in ours.values())
    internal = sum(s == "internal" for s, _ in ours.values())
    lines = [
        f"# bench/onnx_ops.py --every {args.every} --backend {args.backend or 'auto'}"
        f"{' --fresh' if args.fresh else ' (CLI main in-process)'}  "
        f"(onnx {__import__('onnx').__version__}, onnxruntime {__import__('onnxruntime').__version__})",
        f"# cpu: {cpu_info()}",
        f"# cases: every {args.every}-th of ONNX's node test cases with plain tensor inputs/outputs: {n}",
        f"onnxruntime (raw InferenceSession): {ort_pass}/{n} = {100 * ort_pass / max(n, 1):.1f} %",
        f"edgecompile build + runtime:        {our_pass}/{n} = {100 * our_pass / max(n, 1):.1f} %",
        f"difference: {100 * (our_pass - ort_pass) / max(n, 1):+.1f} pt; internal errors / tracebacks: {internal}",
        f"wall time: {time.perf_counter() - t0:.0f} s",
        "",
        "# case | ort | edgecompile | detail",
    ]
    for c in selected:
        s, detail = ours[c.name]
        o_ok, o_detail = ort_ok[c.name]
        lines.append(f"{c.name} | {'pass' if o_ok else 'FAIL'} | {s} | {detail or o_detail}")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
