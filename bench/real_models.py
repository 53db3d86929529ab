"""INT8 on real pretrained networks and real data, side by side in one run.

* MobileNetV2 with torchvision's pretrained IMAGENET1K_V1 weights (models/mobilenetv2), calibrated
  on crops of one set of Debian opencv-doc photos and evaluated on crops of OTHER photos; no
  labels, so: top-1 agreement with ORT FP32, agreement on confident samples (FP32 max prob >=
  0.5), top-5 containment, mean KL (edgecompile.verify.agreement).
* The Fashion-MNIST CNN (models/fashion) on the 10,000 real test images: top-1 against the labels
  (delta with a paired bootstrap 95 % CI), plus the agreement numbers.

Quantizers, all on the same FP32 graph (export + simplify, what a build hands the precision stage)
and the same calibration samples:
  ours        -- passes/quantize.py static INT8 as `edgecompile build --precision int8` runs it
                 (cross-layer equalization, per-tensor MSE range search, bias correction; QDQ,
                 uint8 activations, per-channel int8 weights), run by ORT and by OpenVINO;
  ORT         -- onnxruntime.quantization.quantize_static (QDQ, per-channel, MinMax);
  NNCF        -- nncf.quantize on the OpenVINO model (default preset), run by OpenVINO.
"ours: min-max only" is the quantize pass as it was before these steps; then range search + bias
correction; "ours int8" is the default (all three); "+ AdaRound" is that calibration again with learned
rounding (passes/adaround.py) before bias correction, what `adaround = "auto"` runs when the default
is over the bound; --waterfall adds range search alone; --levers adds speed levers on the final graph
(S8S8: int8 activations; per-tensor weights) and the ORT profile's kernel-time share per op type.
Latency: batch 1, interleaved rounds (edgecompile.verify.bench.interleaved), ratio = ORT FP32 ms / ms.

    .venv/bin/python bench/real_models.py [--models mobilenetv2,fashion] [--calib 256] [--threads N]
                                          [--seconds 8] [--waterfall] [--no-adaround] [--levers]
                                          [--out bench/results/real_models.txt]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import Lines, load_average, require  # noqa: E402
from quantization import cpu_line, fp32_graph  # noqa: E402  (sibling bench script)

LINES = say = Lines()      # say(text): print the line and keep it for the results file


def ours(src, model, cal, **section):
    import onnx_ir as ir

    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.quantize import Quantize

    p = Quantize(QuantizeSection(calib_samples=len(cal), **section), backend="ort", calibration=cal)
    res = p(model)
    return ir.to_proto(res.model).SerializeToString(), res.notes, p


def with_adaround(p):
    """The default pass `p` again with learned rounding (passes/adaround.py) on the same calibration:
    what `adaround = "auto"` runs in a build when round-to-nearest is over the bound."""
    import onnx_ir as ir

    res = p.adaround()
    return ir.to_proto(res.model).SerializeToString(), res.notes


def lever(p, **preset_changes) -> bytes:
    """The same float graph and ranges as `p`'s last run, QDQ-inserted with another preset (a speed lever)."""
    from dataclasses import replace

    proto, preset, ranges, _ = p._calibrated
    return p._qdq(proto, replace(preset, **preset_changes), ranges, ()).SerializeToString()


def float_ops(onnx_bytes: bytes, feed: np.ndarray, runs: int = 20) -> str:
    """ORT profile of `runs` batch-1 calls: the share of kernel time per op type, float ops marked."""
    import json
    import os

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        s = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        for _ in range(runs):
            s.run(None, {name: feed})
        events = json.loads(Path(s.end_profiling()).read_text())
    total: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            total[op] = total.get(op, 0.0) + e["dur"]
    whole = sum(total.values()) or 1.0
    quantized = ("QLinear", "QuantizeLinear", "DequantizeLinear", "QGemm", "ConvInteger", "MatMulInteger")
    parts = [f"{op}{'' if op.startswith(quantized) else ' (float)'} {100 * t / whole:.0f} %"
             for op, t in sorted(total.items(), key=lambda kv: -kv[1]) if t / whole >= 0.01]
    return ", ".join(parts)


def ort_quantize_static(fp32: bytes, cal) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(cal.batches(1))

        def get_next(self):
            return next(self.it, None)

    from edgecompile.passes.quantize import _quiet_ort_logging

    with tempfile.TemporaryDirectory() as tmp, _quiet_ort_logging():
        fin, fout = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        fin.write_bytes(fp32)
        quantize_static(str(fin), str(fout), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        return fout.read_bytes()


def ov_compile(onnx_bytes: bytes | None = None, ov_model=None, threads=None):
    import openvino as ov

    core = ov.Core()
    if ov_model is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "m.onnx")
            path.write_bytes(onnx_bytes)
            ov_model = core.read_model(str(path))
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(ov_model, "CPU", cfg)
    request = compiled.create_infer_request()          # as the OpenVINO runner does
    port = compiled.output(0)

    def run(x):
        return request.infer({0: np.ascontiguousarray(x)}, share_inputs=True)[port].copy()

    return run


def nncf_quantize(fp32: bytes, cal, threads=None):
    import logging

    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "m.onnx")
        path.write_bytes(fp32)
        model = ov.Core().read_model(str(path))
    x = cal.inputs[next(iter(cal.inputs))]
    data = nncf.Dataset([x[i:i + 1] for i in range(len(x))])
    q = nncf.quantize(model, data, subset_size=len(x))
    return ov_compile(ov_model=q, threads=threads)


def ort_fn(onnx_bytes: bytes, threads=None):
    from edgecompile.targets.ort.run import create_session

    s = create_session(onnx_bytes, threads=threads)
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def outputs(fn, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])


def paired_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap CI of mean(b - a) for per-sample scores a, b."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    return float(lo), float(hi)


ADA = "ours int8 (ORT) + AdaRound"


def bench_model(name: str, calib: int, threads, seconds: float, waterfall: bool, adaround: bool = True,
                levers: bool = False) -> None:
    import onnx_ir as ir

    from edgecompile.verify.bench import interleaved
    from edgecompile.verify.agreement import agreement

    t0 = time.perf_counter()
    src, model = fp32_graph(name)
    fp32 = ir.to_proto(model).SerializeToString()
    cal = src.dataset("calibration").take(calib)
    ev = src.dataset("test")
    x = ev.inputs["input"]
    say(f"## {name}: calibration {src.default_calibration} ({len(cal)} samples), evaluation "
        f"{src.default_evaluation} ({len(ev)} samples{', labelled' if ev.labels is not None else ', no labels'})")
    graphs: dict[str, tuple] = {}          # label -> (callable, seconds to quantize, notes)
    graphs["ORT fp32 (reference)"] = (ort_fn(fp32, threads), 0.0, {})
    graphs["OpenVINO fp32"] = (ov_compile(fp32, threads=threads), 0.0, {})
    steps = [("ours: min-max only (before this work)", dict(calibrate="minmax", equalize=False, bias_correction=False))]
    if waterfall:
        steps.append(("ours: range search only", dict(calibrate="search", equalize=False, bias_correction=False)))
    steps += [
        ("ours: range search + bias correction", dict(calibrate="search", equalize=False, bias_correction=True)),
        (
            "ours int8 (ORT): + cross-layer equalization (default)",
            dict(calibrate="search", equalize=True, bias_correction=True),
        ),
    ]
    final = None
    for label, opts in steps:
        t = time.perf_counter()
        q, notes, qpass = ours(src, model, cal, **opts)
        graphs[label] = (ort_fn(q, threads), time.perf_counter() - t, notes)
        if label.startswith("ours int8 (ORT)"):
            final, final_label, final_pass = q, label, qpass
    graphs["ours int8 (OpenVINO)"] = (ov_compile(final, threads=threads), graphs[final_label][1], {})
    extra = {}
    if adaround:
        t = time.perf_counter()
        ada, notes = with_adaround(final_pass)
        secs = graphs[final_label][1] + time.perf_counter() - t
        graphs[ADA] = (ort_fn(ada, threads), secs, notes)
        graphs["ours int8 + AdaRound (OpenVINO)"] = (ov_compile(ada, threads=threads), secs, {})
        final = ada
    if levers:
        extra["S8S8 (int8 activations)"] = lever(final_pass, activations="int8")
        extra["per-tensor weights"] = lever(final_pass, per_channel=False)
        for label, q in extra.items():
            graphs[f"lever: {label}"] = (ort_fn(q, threads), 0.0, {})
    t = time.perf_counter()
    graphs["ORT quantize_static"] = (ort_fn(ort_quantize_static(fp32, cal), threads), time.perf_counter() - t, {})
    t = time.perf_counter()
    graphs["NNCF (OpenVINO)"] = (nncf_quantize(fp32, cal, threads), time.perf_counter() - t, {})
    for label, _ in steps[1:]:
        notes = graphs[label][2]
        say(f"{label}: {notes.get('quantized_ops')} quantized ops; float outputs {notes.get('float_outputs')}; "
            f"equalization {notes.get('equalization')}; "
            f"range search {notes.get('range_search')}; bias correction {notes.get('bias_correction')}")
    if adaround:
        notes = graphs[ADA][2]
        say(f"{ADA}: adaround {notes.get('adaround')}; bias correction after it {notes.get('bias_correction')}")
    if levers:
        feed1 = np.ascontiguousarray(x[:1])
        for label, q in [("ours int8 (U8S8, per-channel)", final), *extra.items()]:
            say(f"ORT profile, {label}: {float_ops(q, feed1)}")

    outs = {k: outputs(fn, x) for k, (fn, _, _) in graphs.items()}
    ref = outs["ORT fp32 (reference)"]
    feed = np.ascontiguousarray(x[:1])
    lat = interleaved({k: (lambda fn=fn: fn(feed)) for k, (fn, _, _) in graphs.items()}, rounds=10, seconds=seconds)
    base = lat["ORT fp32 (reference)"]["ms"]
    labelled = ev.labels is not None
    head = "| quantizer | top-1 agreement | confident agreement | top-5 containment | mean KL |"
    rule = "|---|---|---|---|---|"
    if labelled:
        head += " top-1 (labels) | delta vs fp32 [95 % CI] |"
        rule += "---|---|"
    say(head + " latency ms | speed vs ORT fp32 | quantize s |")
    say(rule + "---|---|---|")
    ref_correct = (ref.argmax(1) == ev.labels).astype(float) if labelled else None
    for k, out in outs.items():
        a = agreement(out, ref)
        conf = (
            "n/a"
            if a["confident_agreement"] is None
            else f"{100 * a['confident_agreement']:.2f} % (n={a['confident_samples']})"
        )
        row = (f"| {k} | {100 * a['top1_agreement']:.2f} % | {conf} | {100 * a['top5_containment']:.2f} % | "
               f"{a['mean_kl']:.4f} |")
        if labelled:
            correct = (out.argmax(1) == ev.labels).astype(float)
            lo, hi = paired_ci(ref_correct, correct)
            row += (f" {100 * correct.mean():.2f} % | {100 * (correct.mean() - ref_correct.mean()):+.2f} pt "
                    f"[{100 * lo:+.2f}, {100 * hi:+.2f}] |")
        row += f" {lat[k]['ms']:.3f} | {base / lat[k]['ms']:.2f}x | {graphs[k][1]:.0f} |"
        say(row)
    say(f"({name}: {time.perf_counter() - t0:.0f} s in all; load average {load_average()} at the end)")
    say()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenetv2,fashion")
    ap.add_argument("--calib", type=int, default=256, help="calibration samples for every quantizer")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the engines')")
    ap.add_argument("--seconds", type=float, default=8.0, help="latency budget per model (all graphs)")
    ap.add_argument("--waterfall", action="store_true", help="add our intermediate steps (two more calibrations)")
    ap.add_argument("--no-adaround", action="store_true", help="leave out the AdaRound rows")
    ap.add_argument("--levers", action="store_true", help="add speed levers (S8S8, per-tensor) and ORT profiles")
    ap.add_argument("--out", default=None, help="also write the output to this file")
    args = ap.parse_args()
    require("nncf")

    from importlib.metadata import version

    say(f"CPU: {cpu_line()}")
    say(f"onnxruntime {version('onnxruntime')}, openvino {version('openvino')}, nncf {version('nncf')}, "
        f"threads {args.threads or 'engine default'}, batch 1, latency interleaved over 10 rounds; "
        f"load average {load_average()} at the start")
    say()
    for name in [m for m in args.models.split(",") if m]:
        bench_model(name, args.calib, args.threads, args.seconds, waterfall=args.waterfall,
                    adaround=not args.no_adaround, levers=args.levers)
    if args.out:
        Path(args.out).write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
