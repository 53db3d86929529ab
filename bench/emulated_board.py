"""rpi5 bundles on the emulated aarch64 board vs this x86-64 host: a correctness record, not a speed claim.

    .venv/bin/python bench/emulated_board.py                       # digits + mobilenetv2, ORT fp32/int8 + TVM
    .venv/bin/python bench/emulated_board.py --models digits --no-tvm --out /tmp/eb.txt

For each model it builds the `--target rpi5` bundles (ORT fp32, ORT QDQ int8, TVM fp32 cross-linked for
aarch64), runs the ORT bundles here (x86-64 kernels) and every bundle inside the emulated board
(`scripts/emulated_board.sh`: Debian arm64 under qemu-user + proot, the slim runtime from this repo's wheel,
no torch), and compares: top-1 agreement and max |diff| of the board's outputs with the x86 run of the same
ORT bundle, and with the x86 ORT fp32 run (the reference a TVM bundle, which cannot run here, is held to);
accuracy on the labels where the model has them. Timings under qemu are an emulator's, not an ARM CPU's:
the wall times below say how long the record took, nothing about a board's speed.
Writes bench/results/emulated_board.txt (with the CPU model and the load average).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "emulated_board.sh"

# Runs inside the board with /opt/board/bin/python: the slim runtime only (numpy + one engine).
BOARD_CODE = """
import json, platform, sys, time, importlib.util, numpy as np
from edgecompile.runtime import load
job = json.load(open(sys.argv[1]))
res = {"machine": platform.machine(), "torch": importlib.util.find_spec("torch") is not None, "runs": {}}
for name, item in job.items():
    x = np.load(item["inputs"])["input"][: item["limit"]]
    t0 = time.perf_counter()
    with load(item["bundle"]) as r:
        y = np.concatenate([r(x[i:i + 32]) for i in range(0, len(x), 32)])
    np.save(item["out"], y)
    res["runs"][name] = {"seconds": time.perf_counter() - t0, "backend": r.bundle.backend, "n": len(x)}
print(json.dumps(res))
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def board(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOST_PY": sys.executable, "EC": str(Path(sys.executable).parent / "edgecompile")}
    return subprocess.run(["nice", "-n", "10", "bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def compare(got: np.ndarray, want: np.ndarray) -> dict:
    n = len(got)
    want = want[:n]
    return {"top1": float((got.argmax(1) == want.argmax(1)).mean()), "max_abs": float(np.abs(got - want).max()),
            "scale": float(np.abs(want).max())}


def build_all(models: list[str], tvm: bool, work: Path, log) -> dict:
    """{(model, variant): Bundle} and {model: (inputs .npz, labels or None)}"""
    import edgecompile
    from edgecompile.source import resolve_source

    variants = [("ort", "fp32"), ("ort", "int8")] + ([("tvm", "fp32")] if tvm else [])
    bundles, data = {}, {}
    for m in models:
        src = resolve_source(f"models/{m}")
        ds = src.dataset("test")
        npz = work / f"{m}-inputs.npz"
        np.savez(npz, input=ds.inputs["input"])
        data[m] = (npz, None if ds.labels is None else np.asarray(ds.labels))
        for backend, precision in variants:
            t0 = time.perf_counter()
            bundles[m, f"{backend}-{precision}"] = edgecompile.build(
                f"models/{m}", target="rpi5", backend=backend, precision=precision,
                output=work / f"{m}-rpi5-{backend}-{precision}")
            log(f"built {m} rpi5 {backend} {precision} in {time.perf_counter() - t0:.0f} s")
    return bundles, data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits", "mobilenetv2"])
    ap.add_argument("--no-tvm", action="store_true", help="only the ORT bundles")
    ap.add_argument("--samples", type=int, default=96, help="samples per model the ORT bundles run on the board")
    ap.add_argument("--tvm-samples", type=int, default=16,
                    help="samples per model the TVM bundle runs on the board (untuned TVM under qemu is slow)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "emulated_board.txt"))
    args = ap.parse_args(argv)
    t_start = time.time()
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from edgecompile.runtime import load

    t0 = time.perf_counter()
    prep = board("prepare")
    if prep.returncode != 0:
        sys.exit(f"error: preparing the emulated board failed:\n{prep.stderr[-3000:]}")
    t_prepare = time.perf_counter() - t0
    log(f"board prepared in {t_prepare:.0f} s")

    # /tmp is bound into the board, so it reads the bundles and writes its outputs there
    work = Path(tempfile.mkdtemp(prefix="emulated-board-", dir="/tmp"))
    bundles, data = build_all(args.models, not args.no_tvm, work, log)

    here, job = {}, {}
    for (m, v), b in bundles.items():
        npz, _ = data[m]
        if v.startswith("ort"):
            with load(b.path) as r:
                x = np.load(npz)["input"]
                here[m, v] = np.concatenate([r(x[i:i + 32]) for i in range(0, len(x), 32)])
        n = len(np.load(npz)["input"])
        job[f"{m}/{v}"] = {"bundle": str(b.path), "inputs": str(npz), "out": str(work / f"out-{m}-{v}.npy"),
                           "limit": min(n, args.tvm_samples if v.startswith("tvm") else args.samples)}
    # one board process per bundle, as an app loads one bundle (and a crash names its bundle)
    res, crashed, t0 = {"runs": {}}, {}, time.perf_counter()
    for key, item in job.items():
        spec = work / f"job-{key.replace('/', '-')}.json"
        spec.write_text(json.dumps({key: item}))
        proc = board("exec", "/opt/board/bin/python", "-c", BOARD_CODE, str(spec))
        if proc.returncode != 0:
            crashed[key] = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
            log(f"{key} failed on the board: {proc.stderr[-2000:]}")
            continue
        one = json.loads(proc.stdout.strip().splitlines()[-1])
        res["runs"].update(one.pop("runs"))
        res.update(one)
        log(f"{key}: {res['runs'][key]['seconds']:.0f} s on the board")
    t_board = time.perf_counter() - t0
    if not res["runs"]:
        sys.exit(f"error: every board run failed: {crashed}")

    lines += [
        "# rpi5 bundles on the emulated aarch64 board vs this x86-64 host (bench/emulated_board.py)",
        f"command: {' '.join([Path(sys.executable).name, 'bench/emulated_board.py', *(argv or sys.argv[1:])])}",
        f"host CPU: {cpu_model()} ({os.cpu_count()} cores); load average at start "
        f"{os.getloadavg()[0]:.1f} (shared machine); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}",
        f"board: Debian bookworm arm64 under qemu-aarch64-static + proot; platform.machine() = {res['machine']}; "
        f"torch importable on the board: {res['torch']}",
        "CORRECTNESS RECORD, NOT A SPEED CLAIM: the board's seconds are qemu emulating aarch64 on x86, "
        "meaningless as ARM latency.",
        f"board prepare (cached rootfs/wheels after the first run): {t_prepare:.0f} s; "
        f"all board runs: {t_board:.0f} s",
        "",
        "top-1 / max|diff| columns: the board's outputs vs (a) the x86 run of the same ORT bundle, "
        "(b) the x86 run of the ORT fp32 bundle",
        f"{'model':<12} {'bundle':<9} {'n':>4} {'top1 vs same(a)':>15} {'max|d| (a)':>11} "
        f"{'top1 vs fp32(b)':>15} {'max|d| (b)':>11} {'|out|max':>9} {'acc board':>9} {'acc x86':>8} "
        f"{'board s':>8}",
    ]
    for (m, v) in bundles:
        if f"{m}/{v}" in crashed:
            lines.append(f"{m:<12} {v:<9} FAILED on the board: {crashed[f'{m}/{v}']}")
            continue
        got = np.load(work / f"out-{m}-{v}.npy")
        run = res["runs"][f"{m}/{v}"]
        a = compare(got, here[m, v]) if (m, v) in here else None
        b = compare(got, here[m, "ort-fp32"])
        labels = data[m][1]
        acc_b = f"{(got.argmax(1) == labels[:len(got)]).mean() * 100:.2f}" if labels is not None else "-"
        acc_h = (f"{(here[m, v][:len(got)].argmax(1) == labels[:len(got)]).mean() * 100:.2f}"
                 if labels is not None and (m, v) in here else "-")
        top1_a = f"{a['top1'] * 100:.2f} %" if a else "-"
        diff_a = f"{a['max_abs']:.2e}" if a else "-"
        lines.append(
            f"{m:<12} {v:<9} {run['n']:>4} {top1_a:>15} {diff_a:>11} {b['top1'] * 100:>13.2f} % {b['max_abs']:>11.2e} "
            f"{b['scale']:>9.2f} {acc_b:>9} {acc_h:>8} {run['seconds']:>8.1f}")
    lines += ["", "n: the first n samples of the test split (--samples, --tvm-samples: qemu is slow, untuned TVM",
              "slower still). acc: top-1 accuracy on the labels over those n (models with labels only).",
              f"total wall time: {time.time() - t_start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
