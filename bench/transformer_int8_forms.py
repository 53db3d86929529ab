"""Why no INT8 form of all-MiniLM-L6-v2 is both >= 2x raw ORT FP32 and >= 98 % retrieval agreement here
(issue 22's target): two measurements on the same model and text, in one run.

A. ONNX Runtime dynamic INT8 (per-tensor activations quantized at run time, per-channel int8 weights, the
   default SmoothQuant-style smoothing), on our fused FP32 graph: all MatMul/Attention quantized, then
   each group of layers kept FP32 in turn (QKV Attention, attention output, FFN in, FFN out) and each of
   the 6 encoder layers kept FP32 in turn. Accuracy only (mean/min cosine, retrieval top-1 agreement to
   the FP32 graph on the 256 Lee evaluation sentences): it shows which layers carry the error.
B. OpenVINO's dynamic INT8 (our `--backend openvino --quantize dynamic` bundle: uint8 MatMul weights,
   activations quantized per group of G input channels at run time by the CPU plugin) for group sizes
   G = 0 (weight-only), 32, 64 (the default), 128, 384 (one group per token row of a 384-wide layer):
   accuracy as in A (each sentence encoded alone, no padding) and batch-1 latency on one 126-token
   text padded to 128, interleaved with raw ORT FP32 on the plain optimum export (the issue's base).
C. Where OpenVINO runs bf16 natively: static INT8 (ours, Q/DQ on the MatMul inputs (the default for
   token-id models) and on every op (the earlier default); NNCF's) and our dynamic INT8, with the f32 and
   the bf16 hint, against bf16 on the FP32 graph (needs nncf: `.venv/bin/pip install -e '.[bench]'`).
   Under the bf16 hint OpenVINO quantizes no activation of the dynamic (weight-only) graph.
D. Where OpenVINO runs bf16 natively: our static INT8 (Q/DQ on the MatMul inputs) with families of
   layers kept in float (attention scores Q x K', FFN output, attention output, Q/K/V projections), each
   with the f32 and the bf16 hint: does any mix reach 98 % retrieval and stay faster than bf16?
E. Where the time goes: OpenVINO's per-node profile (PERF_COUNT) of one 128-token inference, summed by
   node type and kernel, for bf16, static INT8 (bf16 hint) and dynamic INT8 with groups of 64 (f32
   hint): the MatMul (FullyConnected) kernels each form runs and their time.

    .venv/bin/python bench/transformer_int8_forms.py [--fp32 DIR] [--int8-ov DIR] [--rounds 5]

Bundles default to builds of models/minilm (served from the build cache when present). About 4 minutes.
Writes bench/results/transformer_int8_forms.txt.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _results import Lines, load_average, write_results  # bench/ is on sys.path (the script's directory)

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]   # keep `transformers` importable


class Engine:
    def __init__(self, run):
        self.run = run                 # interleaved_latency's calling convention: run(feeds)


def accuracy(emb, ref) -> str:
    from edgecompile.verify.textmetrics import nearest_neighbours, row_cosines

    c = row_cosines(emb, ref)
    agree = float((nearest_neighbours(emb) == nearest_neighbours(ref)).mean())
    return f"cos mean {c.mean():.5f}  min {c.min():.5f}  retrieval {100 * agree:5.1f} %"


def ov_form(core, model, cfg, one_by_one, ref1) -> tuple[str, Engine]:
    """`model` compiled by OpenVINO with `cfg`: its accuracy line (each sentence encoded alone, against `ref1`)
    and its engine for the latency rounds."""
    req = core.compile_model(model, "CPU", cfg).create_infer_request()
    emb = np.concatenate([next(iter(req.infer(f).values())).copy() for f in one_by_one])
    return accuracy(emb, ref1), Engine(req.infer)


def p50s(cands: dict, lat_feeds, args) -> dict[str, float]:
    """Median latency (ms) of each engine in `cands`, all in the same interleaved rounds."""
    from edgecompile.compiler.autochoice import interleaved_latency

    samples = interleaved_latency(list(cands.values()), lat_feeds, rounds=args.rounds, round_seconds=args.round_seconds)
    return {name: float(np.median(v)) for name, v in zip(cands, samples)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, help="our fp32 bundle of models/minilm (default: build it)")
    ap.add_argument("--int8-ov", type=Path, help="our OpenVINO dynamic int8 bundle (default: build it)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "transformer_int8_forms.txt")
    args = ap.parse_args()

    import tempfile

    import onnx
    import onnx_ir as ir
    import onnxruntime as ort
    import openvino as ov

    import edgecompile
    from edgecompile.compiler.config import Config, QuantizeSection
    from edgecompile.compiler.textdata import corpus_split
    from edgecompile.passes.quantize import Quantize
    from edgecompile.runtime.machine import cpu_info
    from edgecompile.source import resolve_source

    out = Lines()
    t0 = time.perf_counter()
    out(f"# bench/transformer_int8_forms.py  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    cpu = cpu_info()
    out(f"CPU: {cpu.get('model')} ({cpu.get('cores')} logical CPUs), threads {args.threads}; "
        f"onnxruntime {ort.__version__}, openvino {ov.__version__}; load average {load_average()} at the start")
    work = Path(tempfile.mkdtemp(prefix="bench-int8-forms-"))
    src = resolve_source("models/minilm")
    fp32_dir = args.fp32 or edgecompile.build(src, target="cpu", backend="ort", precision="fp32",
                                              output=work / "fp32").path
    ov_dir = args.int8_ov or edgecompile.build(src, target="cpu", backend="openvino", precision="int8",
                                               config=Config().with_overrides({"passes.quantize.mode": "dynamic"}),
                                               output=work / "int8-ov").path
    texts = corpus_split("lee", "eval")
    ev, cal = src.dataset("eval"), src.dataset("calib")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = args.threads, 3

    def ort_embed(proto) -> np.ndarray:
        s = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in s.get_inputs()}
        return np.concatenate([s.run(None, {k: v for k, v in b.items() if k in names})[0] for b in ev.batches(32)])

    fused = onnx.load(str(fp32_dir / "model.onnx"))
    ref = ort_embed(fused)
    out("\n## A. ONNX Runtime dynamic INT8 (per-tensor activations), layers kept FP32 in turn; "
        "accuracy vs the FP32 graph, 256 sentences in batches of 32")
    nodes = [n.name for n in fused.graph.node if n.op_type in ("MatMul", "Attention")]
    groups = {"none (all quantized)": [],
              "QKV (fused Attention)": [n for n in nodes if n.startswith("Attention")],
              "attention output dense": [n for n in nodes if "attention/output" in n],
              "FFN in (intermediate)": [n for n in nodes if "intermediate" in n],
              "FFN out (output dense)": [n for n in nodes if "/output/dense" in n and "attention" not in n]}
    groups.update({f"encoder layer {i}": [n for n in nodes if f"layer.{i}/" in n or n == f"Attention_{i}"]
                   for i in range(6)})
    for label, keep in groups.items():
        q = Quantize(QuantizeSection(mode="dynamic"), keep, backend="ort", calibration=cal)(ir.from_proto(fused))
        out(f"  kept FP32: {label:24s} ({len(keep):2d} ops)  " + accuracy(ort_embed(ir.to_proto(q.model)), ref))

    out("\n## B. OpenVINO dynamic INT8, activation group size G; accuracy (each sentence alone) vs ORT FP32 on "
        "our FP32 graph; latency batch 1, 128 tokens, vs raw ORT FP32 on the plain optimum export")
    tok = src.tokenizer()
    one_by_one = []
    for t in texts:
        ids = np.array([tok.encode(t).ids], np.int64)
        one_by_one.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    s_fused = ort.InferenceSession(fused.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref1 = np.concatenate([s_fused.run(None, f)[0] for f in one_by_one])
    ids = tok.encode(" ".join(texts[:12])).ids[:127] + [102]
    ids = np.array([ids + [0] * (128 - len(ids))], np.int64)
    lat_feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    raw = ort.InferenceSession(str(src.path), so, providers=["CPUExecutionProvider"])
    raw_names = {i.name for i in raw.get_inputs()}
    cands = {"raw ORT fp32": Engine(lambda f: raw.run(None, {k: v for k, v in f.items() if k in raw_names}))}
    core = ov.Core()
    model = core.read_model(str(ov_dir / "model.xml"))
    rows = []
    for g in (0, 32, 64, 128, 384):
        cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads,
               "DYNAMIC_QUANTIZATION_GROUP_SIZE": g}
        acc, cands[f"G={g}"] = ov_form(core, model, cfg, one_by_one, ref1)
        rows.append((g, acc))
    lat = p50s(cands, lat_feeds, args)
    base = lat["raw ORT fp32"]
    out(f"  raw ORT fp32: p50 {base:.2f} ms")
    for g, acc in rows:
        name = "weight-only" if g == 0 else f"G={g}"
        out(f"  OpenVINO {name:12s} p50 {lat[f'G={g}']:6.2f} ms  {base / lat[f'G={g}']:4.2f}x raw fp32  {acc}")
    section_c(out, src, cal, ov_dir, one_by_one, ref1, lat_feeds, cands["raw ORT fp32"], work, args)
    section_d(out, src, cal, one_by_one, ref1, lat_feeds, cands["raw ORT fp32"], work, args)
    section_e(out, src, cal, ov_dir, lat_feeds, work, args)
    out(f"\n({time.perf_counter() - t0:.0f} s in all; load average {load_average()} at the end)")
    write_results(args.out, out)
    return 0


def section_c(out, src, cal, ov_dir, one_by_one, ref1, lat_feeds, raw_engine, work, args) -> None:
    """C. Static INT8 on OpenVINO (ours: `--quantize static --force`; NNCF's, model_type TRANSFORMER) against
    bf16 and our dynamic INT8, each with the f32 and the bf16 hint: whether any INT8 form beats bf16 on a
    CPU that runs bf16 natively."""
    import importlib.util

    import openvino as ov

    import edgecompile
    from edgecompile.compiler.config import Config
    from edgecompile.targets.openvino.run import supports_bf16

    out("\n## C. Static INT8 on OpenVINO vs bf16; accuracy and latency as in B")
    if not supports_bf16("CPU"):
        out("  skipped: OpenVINO runs no native bf16 on this CPU")
        return
    if importlib.util.find_spec("nncf") is None:
        out("  skipped: nncf is not installed (.venv/bin/pip install -e '.[bench]')")
        return
    import logging

    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    core = ov.Core()
    plain = core.read_model(str(src.path))
    calib = nncf.Dataset([dict(f) for f in cal.batches(1)])
    theirs = nncf.quantize(plain, calib, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(cal))
    static = {"passes.quantize.mode": "static", "build.force": True}
    ours = edgecompile.build(src, target="cpu", backend="openvino", precision="int8",
                             config=Config().with_overrides(static), output=work / "int8-ov-static").path
    # before ops = "matmul": Q/DQ on every op ORT's registry lists, MatMul outputs included, norms smoothed only
    every = {**static, "passes.quantize.ops": "all", "passes.quantize.smooth_alpha": 0.5}
    ours_all = edgecompile.build(src, target="cpu", backend="openvino", precision="int8",
                                 config=Config().with_overrides(every), output=work / "int8-ov-static-all").path
    models = {"bf16 (the FP32 graph)": (plain, ("bf16",)),
              "ours static INT8, all ops": (core.read_model(str(ours_all / "model.xml")), ("f32",)),
              "ours static INT8, MatMul inputs": (core.read_model(str(ours / "model.xml")), ("f32", "bf16")),
              "NNCF static INT8": (theirs, ("f32", "bf16")),
              "ours dynamic INT8": (core.read_model(str(ov_dir / "model.xml")), ("f32", "bf16"))}
    cands, rows = {"raw ORT fp32": raw_engine}, []
    for label, (model, hints) in models.items():
        for hint in hints:
            cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
                   "INFERENCE_NUM_THREADS": args.threads, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 64}
            name = f"{label}, {hint}"
            acc, cands[name] = ov_form(core, model, cfg, one_by_one, ref1)
            rows.append((name, acc))
    lat = p50s(cands, lat_feeds, args)
    base = lat["raw ORT fp32"]
    out(f"  raw ORT fp32: p50 {base:.2f} ms")
    for name, acc in rows:
        out(f"  {name:40s} p50 {lat[name]:6.2f} ms  {base / lat[name]:4.2f}x raw fp32  {acc}")


def _static_int8(src, cal):
    """Our static INT8 pass (Q/DQ on the MatMul inputs) over the graph the OpenVINO backend quantizes,
    calibrated once; `requantize(names)` re-applies it with those nodes kept in float."""
    import onnx
    import onnx_ir as ir

    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.quantize import Quantize
    from edgecompile.passes.simplify import Simplify

    graph = Simplify()(ir.from_proto(onnx.load(str(src.path)))).model
    q = Quantize(QuantizeSection(mode="static", ops="matmul"), [], backend="openvino", calibration=cal)
    first = q(graph)
    return q, first, [n.name for n in ir.to_proto(graph).graph.node if n.op_type == "MatMul"]


def _ov_cfg(hint: str, threads: int, **extra) -> dict:
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
            **extra}


def section_d(out, src, cal, one_by_one, ref1, lat_feeds, raw_engine, work, args) -> None:
    """D. Static INT8 with families of layers kept in float, f32 and bf16 hints, against bf16."""
    import onnx_ir as ir
    import openvino as ov

    from edgecompile.targets.openvino.run import supports_bf16

    out("\n## D. Our static INT8 (MatMul inputs) with layer families kept in float; accuracy and latency as in B")
    if not supports_bf16("CPU"):
        out("  skipped: OpenVINO runs no native bf16 on this CPU")
        return
    q, first, mm = _static_int8(src, cal)
    fam = {"QxK'": [n for n in mm if n.endswith("attention/self/MatMul")],
           "FFN out": [n for n in mm if "/output/dense" in n and "attention" not in n],
           "attention out": [n for n in mm if "attention/output/dense" in n],
           "QKV": [n for n in mm if any(k in n for k in ("/query/", "/key/", "/value/"))]}
    mixes = {"none kept float (all static)": []}
    for i in range(1, len(fam) + 1):       # the families kept in float cumulatively, in that order
        mixes["float: " + " + ".join(list(fam)[:i])] = [n for nodes in list(fam.values())[:i] for n in nodes]
    core = ov.Core()
    cands, rows = {"raw ORT fp32": raw_engine}, []
    acc, cands["bf16 (the FP32 graph)"] = ov_form(core, core.read_model(str(src.path)),
                                                 _ov_cfg("bf16", args.threads), one_by_one, ref1)
    rows.append(("bf16 (the FP32 graph)", 0, acc))
    for label, exclude in mixes.items():
        path = work / f"static-mix-{len(exclude)}.onnx"
        path.write_bytes(ir.to_proto(q.requantize(exclude).model if exclude else first.model).SerializeToString())
        for hint in ("f32", "bf16"):
            name = f"{label}, {hint}"
            acc, cands[name] = ov_form(core, core.read_model(str(path)), _ov_cfg(hint, args.threads), one_by_one, ref1)
            rows.append((name, len(exclude), acc))
    lat = p50s(cands, lat_feeds, args)
    base = lat["raw ORT fp32"]
    out(f"  raw ORT fp32: p50 {base:.2f} ms; families: " + ", ".join(f"{k} {len(v)}" for k, v in fam.items()))
    for name, n, acc in rows:
        out(f"  {name:58s} ({n:2d} float) p50 {lat[name]:6.2f} ms  {base / lat[name]:4.2f}x raw fp32  {acc}")


def section_e(out, src, cal, ov_dir, lat_feeds, work, args) -> None:
    """E. OpenVINO's per-node profile, summed by node type and kernel, for three forms."""
    import collections

    import onnx_ir as ir
    import openvino as ov

    from edgecompile.targets.openvino.run import supports_bf16

    out("\n## E. Where the time goes: OpenVINO per-node profile of one 128-token inference (mean of 100), "
        "by node type and kernel")
    if not supports_bf16("CPU"):
        out("  skipped: OpenVINO runs no native bf16 on this CPU")
        return
    static = work / "static-all.onnx"
    static.write_bytes(ir.to_proto(_static_int8(src, cal)[1].model).SerializeToString())
    forms = {"bf16 (the FP32 graph)": (src.path, _ov_cfg("bf16", args.threads)),
             "static INT8, bf16 hint": (static, _ov_cfg("bf16", args.threads)),
             "dynamic INT8 G=64, f32 hint": (ov_dir / "model.xml",
                                             _ov_cfg("f32", args.threads, DYNAMIC_QUANTIZATION_GROUP_SIZE=64)),
             "dynamic INT8 (int8 weights), bf16 hint": (ov_dir / "model.xml", _ov_cfg("bf16", args.threads))}
    core = ov.Core()
    for label, (path, cfg) in forms.items():
        model = core.read_model(str(path))
        names = {i.get_any_name() for i in model.inputs}
        feeds = {k: v for k, v in lat_feeds.items() if k in names}
        req = core.compile_model(model, "CPU", {**cfg, "PERF_COUNT": True}).create_infer_request()
        for _ in range(30):
            req.infer(feeds)
        spent: dict = collections.defaultdict(float)
        for _ in range(100):
            req.infer(feeds)
            for p in req.profiling_info:
                spent[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 10   # ms per run (/100)
        total = sum(spent.values())
        top = sorted(spent.items(), key=lambda kv: -kv[1])[:3]
        out(f"  {label:40s} total {total:5.2f} ms; " + "; ".join(f"{t} [{k}] {v:.2f} ms" for (t, k), v in top))


if __name__ == "__main__":
    sys.exit(main())
