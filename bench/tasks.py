"""Issue 25 benchmark: the regression and detection examples, FP32 against INT8, side by side.

    python bench/tasks.py           # about 2-3 minutes on 2 cores (weights committed / cached)

* shapes (detector): COCO mAP@[.5:.95] and mAP@.5 (pycocotools) of the FP32 bundle and of the INT8
  bundle (static QDQ, ORT; built with --precision int8 --force so the INT8 graph is measured even
  where the precision stage would keep FP32), and batch-1 latency of both through
  edgecompile.runtime.load, interleaved in one run (edgecompile.verify.bench.interleaved).
* diabetes (regression): MSE / MAE / R² of FP32 and INT8 (forced likewise).

Writes bench/results/tasks.txt (with the CPU model from /proc/cpuinfo).
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "tasks.txt"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    import os

    import edgecompile
    from edgecompile.verify.bench import interleaved
    from edgecompile.runtime import load

    lines = [f"# bench/tasks.py  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
             f"# CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), python {platform.python_version()}",
             "# ORT CPU execution provider, default threads; latency batch 1, interleaved rounds", ""]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        b = {}
        for model in ("shapes", "diabetes"):
            for prec in ("fp32", "int8"):
                kw = {"precision": "int8", "force": True} if prec == "int8" else {}
                b[model, prec] = edgecompile.build(f"models/{model}", "cpu", backend="ort",
                                                   output=Path(tmp) / f"{model}-{prec}", **kw)
        rep = {k: json.loads((v.path / "report.json").read_text()) for k, v in b.items()}

        # detection accuracy
        a32, a8 = rep["shapes", "fp32"]["accuracy"], rep["shapes", "int8"]["accuracy"]
        d32, d8 = a32["detection"], a8["detection"]
        lines += ["## shapes (CenterNet-style detector, 64x64 input), test split "
                  f"({d32['images']} images, backgrounds held apart)", "",
                  f"{'':<8} {'mAP@[.5:.95]':>13} {'mAP@.5':>8}   per-class AP@[.5:.95]",
                  f"{'torch':<8} {d32['reference']['map']:>13.4f} {d32['reference']['map50']:>8.4f}"]
        for name, d in (("fp32", d32), ("int8", d8)):
            lines.append(f"{name:<8} {d['map']:>13.4f} {d['map50']:>8.4f}   "
                         + ", ".join(f"{r['class']} {r['ap']:.3f}" for r in d["per_class"]))
        lines.append(f"int8 - fp32: mAP@[.5:.95] {100 * (d8['map'] - d32['map']):+.2f} pt, "
                     f"mAP@.5 {100 * (d8['map50'] - d32['map50']):+.2f} pt")

        # detection latency, side by side
        feeds = {"input": np.ascontiguousarray(
            __import__("edgecompile.models.shapes", fromlist=["x"]).load_split("test").inputs["input"][:1])}
        with load(b["shapes", "fp32"].path) as r32, load(b["shapes", "int8"].path) as r8:
            lat = interleaved({"fp32": lambda: r32.run(feeds), "int8": lambda: r8.run(feeds)}, rounds=12, seconds=12)
            img = __import__("edgecompile.models.shapes", fromlist=["x"]).raw_images("test")[0]
            det = interleaved({"fp32": lambda: r32.detect(img), "int8": lambda: r8.detect(img)}, rounds=8, seconds=6)
        sp = lat["fp32"]["ms"] / lat["int8"]["ms"]
        lines += [
            "",
            "latency, batch 1 (runner.run, graph only):",
            f"  ORT fp32 {lat['fp32']['ms']:.4f} ms   ORT int8 {lat['int8']['ms']:.4f} ms   int8 speedup {sp:.2f}x",
            "latency, runner.detect (resize + normalise + graph + decode + NMS):",
            f"  fp32 {det['fp32']['ms']:.4f} ms   int8 {det['int8']['ms']:.4f} ms   "
            f"speedup {det['fp32']['ms'] / det['int8']['ms']:.2f}x",
        ]

        # regression
        r32, r8 = rep["diabetes", "fp32"]["accuracy"], rep["diabetes", "int8"]["accuracy"]
        lines += ["", f"## diabetes (MLP regressor), test split ({r32['n']} patients)", "",
                  f"{'':<8} {'MSE':>10} {'MAE':>8} {'R2':>8}"]
        for name, a in (("torch", None), ("fp32", r32), ("int8", r8)):
            if a is None:
                lines.append(f"{name:<8} {r32['reference']:>10.2f} {r32['beside']['mae']['reference']:>8.3f} "
                             f"{r32['beside']['r2']['reference']:>8.4f}")
            else:
                lines.append(f"{name:<8} {a['candidate']:>10.2f} {a['beside']['mae']['candidate']:>8.3f} "
                             f"{a['beside']['r2']['candidate']:>8.4f}")
        lines.append(
            f"int8 vs fp32: MSE {100 * (r8['candidate'] - r32['candidate']) / r32['candidate']:+.2f} % relative"
        )
    lines += ["", f"# total {time.perf_counter() - t0:.0f} s"]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
