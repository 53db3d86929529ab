"""Issue 25 benchmark: the regression and detection examples, FP32 against INT8, side by side.

    python bench/tasks.py           # about 2-3 minutes on 2 cores (weights committed / cached)

* shapes (detector): COCO mAP@[.5:.95] and mAP@.5 (pycocotools) of the FP32 bundle and of the INT8
  bundle (static QDQ, ORT; built with --precision int8 --force so the INT8 graph is measured even
  where the precision stage would keep FP32), and batch-1 latency of both through
  edgecompile.runtime.load, interleaved in one run (edgecompile.verify.bench.interleaved).
  (The "int8-stem" bundle with the stem conv float, `float_stem_channels = 4`, is gone: that option keeps
  stems of <= 8 outputs, and the 96x96 detector's stem is 3->12; its last measurement on the 3->8 stem of
  the 64x64 detector is in git, bench/results/tasks.txt at commit f3dbb2b.) runner.detect end
  to end (resize/normalise + graph + decode + NMS) is timed for fp32 and int8 likewise, and the numpy
  pre/post-processing alone beside it.
* diabetes (regression): MSE / MAE / R² of FP32 and INT8 (forced likewise).

The machine's load average (os.getloadavg) is recorded at the start and at the end: ratios measured on a
loaded machine are noisy (interleaving only spreads the noise evenly); the ratio of the 10th percentiles
is printed beside the medians' (a call near a scheduler time slice long is often pre-empted there).

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
             "# ORT CPU execution provider, default threads; latency batch 1, interleaved rounds",
             "# load average at start (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()), ""]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        b = {}
        for model, prec in (("shapes", "fp32"), ("shapes", "int8"), ("diabetes", "fp32"), ("diabetes", "int8")):
            kw = {"precision": "int8", "force": True} if prec != "fp32" else {}
            b[model, prec] = edgecompile.build(f"models/{model}", "cpu", backend="ort",
                                               output=Path(tmp) / f"{model}-{prec}", **kw)
        rep = {k: json.loads((v.path / "report.json").read_text()) for k, v in b.items()}

        # detection accuracy
        a32, a8 = rep["shapes", "fp32"]["accuracy"], rep["shapes", "int8"]["accuracy"]
        d32, d8 = a32["detection"], a8["detection"]
        from edgecompile.models.shapes.data import IMG
        from edgecompile.models.shapes.model import WIDTH

        lines += [f"## shapes (CenterNet-style detector, {IMG}x{IMG} input, width {WIDTH}), test split "
                  f"({d32['images']} images, backgrounds held apart)", "",
                  f"{'':<8} {'mAP@[.5:.95]':>13} {'mAP@.5':>8}   per-class AP@[.5:.95]",
                  f"{'torch':<8} {d32['reference']['map']:>13.4f} {d32['reference']['map50']:>8.4f}"]
        for name, d in (("fp32", d32), ("int8", d8)):
            lines.append(f"{name:<8} {d['map']:>13.4f} {d['map50']:>8.4f}   "
                         + ", ".join(f"{r['class']} {r['ap']:.3f}" for r in d["per_class"]))
        for name, d in (("int8", d8),):
            lines.append(f"{name} - fp32: mAP@[.5:.95] {100 * (d['map'] - d32['map']):+.2f} pt, "
                         f"mAP@.5 {100 * (d['map50'] - d32['map50']):+.2f} pt")
        q = next(p for p in rep["shapes", "int8"]["passes"] if p["name"] == "quantize")["notes"]
        lines.append(f"int8 keeps float: {', '.join(q.get('float_stems', [])) or 'nothing'}")

        # detection latency, side by side
        feeds = {"input": np.ascontiguousarray(
            __import__("edgecompile.models.shapes", fromlist=["x"]).load_split("test").inputs["input"][:1])}
        from edgecompile.runtime.detect import decode, preprocess

        img = __import__("edgecompile.models.shapes", fromlist=["x"]).raw_images("test")[0]
        with load(b["shapes", "fp32"].path) as r32, load(b["shapes", "int8"].path) as r8:
            lat = interleaved({"fp32": lambda: r32.run(feeds), "int8": lambda: r8.run(feeds)}, rounds=16, seconds=12)
            det = interleaved({"fp32": lambda: r32.detect(img), "int8": lambda: r8.detect(img)}, rounds=10, seconds=8)
            spec, lut = r8.frontend.spec, {}
            maps = r8.run({"input": preprocess(img, spec)})["maps"]
            post = interleaved({"pre": lambda: preprocess(img, spec, lut), "decode": lambda: decode(maps, spec)},
                               rounds=6, seconds=3)
        ms = {k: v["ms"] for k, v in lat.items()}
        lines += [
            "",
            "latency, batch 1 (runner.run, graph only), interleaved fp32 / int8:",
            f"  ORT fp32 {ms['fp32']:.4f} ms   ORT int8 {ms['int8']:.4f} ms   "
            f"int8 speedup {ms['fp32'] / ms['int8']:.2f}x   (of the 10th percentiles, the least disturbed by "
            f"other processes: {lat['fp32']['p10_ms'] / lat['int8']['p10_ms']:.2f}x)",
            "latency, runner.detect (resize + normalise + graph + decode + NMS):",
            f"  fp32 {det['fp32']['ms']:.4f} ms   int8 {det['int8']['ms']:.4f} ms   "
            f"speedup {det['fp32']['ms'] / det['int8']['ms']:.2f}x   "
            f"(10th percentiles: {det['fp32']['p10_ms'] / det['int8']['p10_ms']:.2f}x)",
            f"  of which numpy: preprocess {1000 * post['pre']['ms']:.1f} us, decode + NMS "
            f"{1000 * post['decode']['ms']:.1f} us ({len(decode(maps, spec)[0][2])} detections)",
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
    lines += ["", "# load average at end (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()),
              f"# total {time.perf_counter() - t0:.0f} s"]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
