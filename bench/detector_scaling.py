"""Issue 25: which ShapesNet size lets INT8 beat ORT FP32 by >= 1.5x (speed does not depend on the weights).

    python bench/detector_scaling.py            # about 3-4 minutes on 2 cores
    python bench/detector_scaling.py --quick    # three configurations only

For each candidate configuration (input size, width, output stride) a ShapesNet with random weights
(BatchNorm statistics re-estimated on the calibration images, so activations have sensible ranges) is
built twice through edgecompile.build exactly as `edgecompile build models/shapes` builds it -- dynamo
export, graph passes, then FP32, or static INT8 (the quantize pass, QDQ, --precision int8 --force) --
calibrated on 64 shapes images resized to the input size. The two bundles' graphs are then timed at
batch 1 through edgecompile.runtime.load (ORT CPU, default threads), interleaved in one process
(edgecompile.verify.bench.interleaved), and again at 1 thread. MACs from edgecompile.compiler.inspection.
"ratio" is FP32 / INT8 of the median latencies; "p10" the same of the 10th percentiles of all calls. On a
loaded machine a call that lasts about a scheduler time slice (FP32 of the larger configurations) is often
pre-empted, which inflates its median several-fold; the 10th percentile is the least disturbed figure.

The machine's load average is recorded at the start and at the end: on a loaded machine the ratios are
noisy (interleaving spreads the noise evenly, it does not remove it).

Writes bench/results/detector_scaling.txt (with the CPU model from /proc/cpuinfo).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tasks import cpu_model  # bench/ is the script's directory on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "detector_scaling.txt"
# (input size, width, output stride); the first is the 64x64 detector the issue started from
CONFIGS = [(64, 16, 4), (96, 16, 4), (96, 24, 4), (96, 32, 4), (128, 16, 8)]
QUICK = [(64, 16, 4), (96, 24, 4), (128, 16, 8)]


def calibration(size: int, n: int = 64) -> np.ndarray:
    """n shapes test images resized to size x size and normalised as the detection front-end does."""
    from edgecompile.models import shapes
    from edgecompile.runtime.detect import resize_bilinear

    imgs = shapes.raw_images("test")[:n]
    big = np.stack([np.clip(resize_bilinear(im, size, size), 0, 255).round().astype(np.uint8) for im in imgs])
    return shapes.normalise(big)


def source(size: int, width: int, stride: int):
    import torch

    from edgecompile.data import Dataset, TensorSpec
    from edgecompile.models._common import split_source
    from edgecompile.models.shapes.model import ShapesNet

    x = calibration(size)
    name = f"shapesnet-{size}-w{width}-s{stride}"

    def create():
        torch.manual_seed(0)
        module = ShapesNet(width=width, stride=stride)
        module.train()
        with torch.no_grad():                       # BatchNorm statistics of these inputs: sane activation ranges
            for m in module.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = None
            module(torch.from_numpy(x))
        return module.eval()

    return split_source(name, create=create, inputs=[TensorSpec("input", ("batch", 3, size, size), "float32")],
                        outputs=["maps"], load_split=lambda split: Dataset(f"{name}:{split}", {"input": x}, None),
                        metric="output_cosine", fingerprint=f"bench-detector-scaling-{name}")


def measure(size: int, width: int, stride: int, tmp: Path, seconds: float) -> str:
    """Build FP32 and INT8 bundles of one configuration and time them side by side; one table row."""
    import edgecompile
    from edgecompile.compiler.inspection import inspect_path
    from edgecompile.runtime import load
    from edgecompile.verify.bench import interleaved

    src = source(size, width, stride)
    b32 = edgecompile.build(src, "cpu", backend="ort", output=tmp / f"{src.name}-fp32", cache=False)
    b8 = edgecompile.build(src, "cpu", backend="ort", precision="int8", force=True, cache=False,
                           output=tmp / f"{src.name}-int8")
    feeds = {"input": np.ascontiguousarray(src.load_split("test").inputs["input"][:1])}
    with load(b32.path) as r32, load(b8.path) as r8, load(b32.path, threads=1) as s32, \
            load(b8.path, threads=1) as s8:
        lat = interleaved({"fp32": lambda: r32.run(feeds), "int8": lambda: r8.run(feeds),
                           "fp32-1t": lambda: s32.run(feeds), "int8-1t": lambda: s8.run(feeds)},
                          rounds=12, seconds=seconds)
    macs = inspect_path(b32.path / "model.onnx")["macs"]
    cols = [f"{size:>4}x{size:<2} {width:>5} {stride:>6} {size // stride:>3}^2 {macs / 1e6:>7.1f}"]
    for suffix in ("", "-1t"):
        f, q = lat["fp32" + suffix], lat["int8" + suffix]
        cols.append(f"{f['ms']:>8.3f} {q['ms']:>8.3f} {f['ms'] / q['ms']:>6.2f}x {f['p10_ms'] / q['p10_ms']:>6.2f}x")
    return "   ".join(cols)


def main(argv=None) -> int:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three configurations only")
    ap.add_argument("--only", default="", help="comma-separated SIZExWIDTHxSTRIDE, e.g. 96x24x4,128x16x8")
    ap.add_argument("--seconds", type=float, default=6.0, help="timing budget per configuration (default 6)")
    args = ap.parse_args(argv)
    configs = QUICK if args.quick else CONFIGS
    if args.only:
        configs = [tuple(int(v) for v in c.split("x")) for c in args.only.split(",")]
    lines = [f"# bench/detector_scaling.py  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
             f"# CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), python {platform.python_version()}",
             "# ORT CPU execution provider, batch 1; FP32 and INT8 bundles at default threads and at 1 thread,",
             "# the four interleaved per config; ratio = fp32 / int8 of medians, p10 = of 10th percentiles",
             "# random weights (BatchNorm re-estimated); INT8: build --precision int8 --force (static QDQ)",
             "# load average at start (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()), "",
             f"{'':>36}   {'default threads':-^33}   {'1 thread':-^33}",
             f"{'input':>7} {'width':>5} {'stride':>6} {'grid':>5} {'MMACs':>7}"
             + f"   {'fp32 ms':>8} {'int8 ms':>8} {'ratio':>7} {'p10':>7}" * 2]
    print("\n".join(lines), flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for size, width, stride in configs:
            row = measure(size, width, stride, Path(tmp), args.seconds)
            lines.append(row)
            print(row, flush=True)
    lines += ["", "# load average at end (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()),
              f"# total {time.perf_counter() - t0:.0f} s"]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    sys.stdout.write("\n".join(lines[-2:]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
