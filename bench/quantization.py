"""INT8 PTQ benchmark: our quantize pass vs FP32 vs ONNX Runtime's own `quantize_static` (defaults).

All three graphs run through ONNX Runtime CPU sessions with the same feeds and threads; latency
is measured side by side (interleaved rounds, edgecompile.verify.bench.interleaved), so the ratios
are comparable even on a noisy machine. Then digits FP32 vs INT8 top-1 for each calibration method.

    .venv/bin/python bench/quantization.py [--models resnet18,mobilenetv2] [--calibrate minmax]
                                           [--threads N] [--seconds 6] [--eval 32]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_line() -> str:
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keys = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, flags: {' '.join(keys) or 'none of avx2/avx512/vnni/amx'}"


def fp32_graph(name: str):
    """The FP32 graph exactly as a build would hand it to the precision stage (export + simplify)."""
    from edgecompile.compiler.export import export_torch
    from edgecompile.passes.simplify import Simplify
    from edgecompile.source import resolve_source

    src = resolve_source(name)
    model = Simplify()(export_torch(src.module(), src, src.dataset(src.default_evaluation.split(":")[1]))).model
    return src, model


def ours(src, model, calibrate: str, backend: str = "ort"):
    import onnx_ir as ir

    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.quantize import Quantize

    cal = src.dataset(src.default_calibration.split(":")[1])
    p = Quantize(QuantizeSection(calibrate=calibrate), backend=backend, calibration=cal)
    res = p(model)
    return ir.to_proto(res.model).SerializeToString(), res.notes


def ort_default(src, fp32_bytes: bytes) -> bytes:
    """ONNX Runtime's quantize_static with its default settings on the same graph and data."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    cal = src.dataset(src.default_calibration.split(":")[1])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(cal.batches(1))

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        fin.write_bytes(fp32_bytes)
        quantize_static(str(fin), str(fout), Reader())
        return fout.read_bytes()


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def compare_model(name: str, calibrate: str, threads, seconds: float, n_eval: int) -> list[dict]:
    import onnx_ir as ir

    from edgecompile.verify.bench import interleaved
    from edgecompile.targets.ort.run import create_session

    t0 = time.perf_counter()
    src, model = fp32_graph(name)
    fp32 = ir.to_proto(model).SerializeToString()
    t1 = time.perf_counter()
    mine, notes = ours(src, model, calibrate)
    t2 = time.perf_counter()
    theirs = ort_default(src, fp32)
    t3 = time.perf_counter()
    print(f"  {name}: export {t1 - t0:.0f} s, our PTQ {t2 - t1:.0f} s ({notes.get('quantized_ops')} ops), "
          f"ORT quantize_static {t3 - t2:.0f} s", flush=True)
    graphs = {"fp32": fp32, f"ours ({calibrate})": mine, "ort quantize_static": theirs}
    sessions = {k: create_session(v, threads=threads) for k, v in graphs.items()}
    ev = src.dataset(src.default_evaluation.split(":")[1]).take(n_eval)
    outs = {k: np.concatenate([s.run(None, f)[0] for f in ev.batches(8)]) for k, s in sessions.items()}
    feeds = {k: v[:1] for k, v in next(ev.batches(1)).items()}
    lat = interleaved({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()},
                      rounds=10, seconds=seconds)
    rows = []
    for k in graphs:
        rows.append({"model": name, "graph": k, "ms": lat[k]["ms"], "speedup": lat["fp32"]["ms"] / lat[k]["ms"],
                     "size_mb": len(graphs[k]) / 2**20, "size_ratio": len(graphs[k]) / len(fp32),
                     "cosine": cosine(outs[k], outs["fp32"]),
                     "agree": float((outs[k].argmax(1) == outs["fp32"].argmax(1)).mean())})
    return rows


def digits_methods() -> list[tuple[str, float]]:
    import onnx_ir as ir

    from edgecompile.targets.ort.build import ort_outputs

    src, model = fp32_graph("digits")
    test = src.dataset("test")

    def top1(data: bytes) -> float:
        return float((ort_outputs(data, test.batches(128))[0].argmax(1) == test.labels).mean())

    rows = [("fp32", top1(ir.to_proto(model).SerializeToString()))]
    for method in ("minmax", "entropy", "percentile"):
        rows.append((f"int8 {method}", top1(ours(src, model, method)[0])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenetv2")
    ap.add_argument("--calibrate", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ORT's)")
    ap.add_argument("--seconds", type=float, default=6.0, help="latency budget per model (all graphs)")
    ap.add_argument("--eval", type=int, default=32, help="evaluation images for cosine/agreement")
    args = ap.parse_args()

    from edgecompile.runtime.machine import toolchain_versions

    tv = toolchain_versions()
    print(f"CPU: {cpu_line()}")
    print(f"onnxruntime {tv.get('onnxruntime')}, threads {args.threads or 'ORT default'}, batch 1, "
          f"latency interleaved over 10 rounds\n", flush=True)
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        rows += compare_model(name, args.calibrate, args.threads, args.seconds, args.eval)
    print()
    print("| model | graph | latency ms | speedup vs fp32 | size MB | size ratio | cosine vs fp32 | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['graph']} | {r['ms']:.2f} | {r['speedup']:.2f}x | {r['size_mb']:.2f} | "
              f"{r['size_ratio']:.3f} | {r['cosine']:.5f} | {r['agree']:.3f} |")
    by_model: dict[str, dict] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["graph"]] = r
    for name, g in by_model.items():
        mine = next(v for k, v in g.items() if k.startswith("ours"))
        theirs = g["ort quantize_static"]
        print(f"{name}: our speedup / ORT's speedup = {mine['speedup'] / theirs['speedup']:.2f}")
    print("\n| digits (test split, 360) | top-1 |\n|---|---|")
    for label, acc in digits_methods():
        print(f"| {label} | {100 * acc:.2f} % |")


if __name__ == "__main__":
    main()
