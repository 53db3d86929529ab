"""all-MiniLM-L6-v2 (models/minilm) side by side in one run: our text bundles vs raw engines.

    .venv/bin/python bench/transformers.py [--fp32 DIR] [--int8 DIR] [--int8-nosmooth DIR] [--int8-ov DIR]
                                         [--int8-ov-f32 DIR] [--int8-ov-static DIR] [--bf16-ov DIR] [--rounds 7]
                                         [--threads 2]

Latency: batch 1, one real text of 120-128 tokens (Lee sentences joined), padded to 128, with
tokenization included for every candidate: our bundles through `runner.encode([text])`; peers
tokenize with the `tokenizers` package and run the engine on the same 128 tokens, with numpy pooling
where the graph has none. Interleaved rounds (rotating order) so machine-load drifts hit all alike.
Peers, on the plain optimum export (`hf_source(...).path`: the optimum graph + the pooling nodes):
  * raw ORT FP32 (ORT_ENABLE_ALL session optimisations) -- the ratio base;
  * ORT's own transformer optimizer + `quantize_dynamic` (per-channel, MatMul/Attention);
  * raw OpenVINO, f32 inference hint, and with the CPU plugin's default hint where that differs (bf16
    on CPUs with native bf16: AMX, AVX512-BF16);
  * ORT's MatMulNBits, 8-bit weights in blocks of 128 with accuracy_level 4 (activations quantized
    to int8 per block at run time) on ORT's fused graph (the fused Attention stays FP32): the most
    accurate INT8 form measured, listed to show its speed.
Ours: fp32 (fused), int8 (dynamic, SmoothQuant-style smoothing of the LayerNorm outputs, the
default) and int8 with smoothing off (`smooth_alpha = 0`, the earlier default), on ORT; and the
OpenVINO backend's dynamic int8 (uint8 MatMul weights, activations quantized per group of 64 (the default) at run
time by the CPU plugin; the float ops in bf16 where that measured faster at build time, else f32), and where
the CPU runs bf16 natively, our OpenVINO bf16 bundle (what `--precision auto` picks on such CPUs). Under the bf16
hint OpenVINO quantizes no activations, so there the dynamic bundle is also built with the f32 hint (int8
activations per group); and OpenVINO static INT8 (Q/DQ on the MatMul inputs, `--force`: shipped whatever its
accuracy).
Accuracy vs raw ORT FP32 on real text: mean/min embedding cosine over the 256 evaluation sentences,
nearest-neighbour retrieval top-1 agreement over them, and Spearman correlation with the human
judgements of the 50 Lee documents (each candidate and FP32).
Fresh process: wall time and peak RSS of a new Python process that loads and encodes one sentence,
our bundle (`edgecompile.runtime.load`) vs raw ORT + tokenizers (median of 5, alternating).

Bundles default to builds of models/minilm (served from the build cache when present).
Writes bench/results/transformers.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_results  # bench/ is still on sys.path here (the script's directory)

HERE = Path(__file__).resolve().parent
# this file is named like the `transformers` package: keep its directory off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


class Candidate:
    def __init__(self, name, encode):
        self.name, self.encode = name, encode

    def run(self, _feeds):          # the interleaved timer's calling convention
        return self.encode([TEXT])


TEXT = ""


def long_text(tok, lo=120, hi=128) -> str:
    from edgecompile.compiler.textdata import lee_sentences

    words: list[str] = []
    for sent in lee_sentences()[1000:]:
        trial = " ".join([*words, sent])
        n = len(tok.encode(trial).ids)
        if n > hi:
            continue
        words.append(sent)
        if n >= lo:
            return trial
    raise RuntimeError("no text of the wanted length")


def raw_tokenize(tok, texts, names, length=None):
    encs = tok.encode_batch(texts)
    n = max(len(e.ids) for e in encs) if length is None else length
    arr = {k: np.zeros((len(encs), n), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for i, e in enumerate(encs):
        arr["input_ids"][i, :len(e.ids)] = e.ids
        arr["attention_mask"][i, :len(e.ids)] = e.attention_mask
        arr["token_type_ids"][i, :len(e.ids)] = e.type_ids
    return {k: arr[k] for k in names}


def engine_encoder(run, tok, names, length=128):
    def encode(texts):
        return run(raw_tokenize(tok, texts, names, length if len(texts) == 1 else None))
    return encode


def ort_run(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda feeds: s.run(None, feeds)[0]


def ov_run(path, threads, hint: str | None = "f32"):
    """Raw OpenVINO on `path`; hint None: the CPU plugin's own default (bf16 where the CPU has it natively)."""
    import openvino as ov

    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if hint:
        cfg["INFERENCE_PRECISION_HINT"] = hint
    req = ov.Core().compile_model(str(path), "CPU", cfg).create_infer_request()
    return lambda feeds: next(iter(req.infer(feeds).values()))


def ov_default_hint() -> str:
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def ort_optimized_dynamic(src_path: Path, work: Path) -> Path:
    """ORT's own recipe: transformers optimizer (bert) then quantize_dynamic per-channel."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    opt = optimize_model(onnx.load(str(src_path)), model_type="bert", opt_level=0)
    fused = work / "ort-optimized.onnx"
    opt.save_model_to_file(str(fused))
    out = work / "ort-optimized-dynamic.onnx"
    # DefaultTensorType: what ORT's own error message prescribes for contrib-op outputs
    quantize_dynamic(str(fused), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def ort_matmul_nbits8(fused: Path, work: Path, block_size: int = 128) -> Path:
    """ORT's MatMulNBitsQuantizer, 8 bits, symmetric, accuracy_level 4 (int8 activations per block)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    q = MatMulNBitsQuantizer(onnx.load(str(fused)), bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4)
    q.process()
    out = work / f"ort-nbits8-b{block_size}.onnx"
    q.model.save_model_to_file(str(out))
    return out


FRESH_OURS = """
import sys, time
def hwm():   # peak RSS of this process in KiB (ru_maxrss would carry over the forking parent's peak)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
t = time.perf_counter()
from edgecompile.runtime import load
r = load(sys.argv[1], threads={threads})
e = r.encode(["The bushfire forced hundreds of residents to leave their homes."])
dt = time.perf_counter() - t
print(dt, hwm(), e.shape[1])
"""

FRESH_RAW = """
import sys, time
def hwm():   # peak RSS of this process in KiB (ru_maxrss would carry over the forking parent's peak)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
t = time.perf_counter()
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2]); tok.no_padding()
so = ort.SessionOptions(); so.intra_op_num_threads = {threads}
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
enc = tok.encode("The bushfire forced hundreds of residents to leave their homes.")
feeds = {{"input_ids": np.array([enc.ids], np.int64), "attention_mask": np.array([enc.attention_mask], np.int64),
         "token_type_ids": np.array([enc.type_ids], np.int64)}}
e = s.run(None, feeds)[0]
dt = time.perf_counter() - t
print(dt, hwm(), e.shape[1])
"""


def fresh(code: str, *args) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    dt, rss, _ = out.stdout.split()
    return float(dt), float(rss) / 1024.0


def main() -> None:
    global TEXT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, help="our fp32 bundle of models/minilm (default: build it)")
    ap.add_argument("--int8", type=Path, help="our int8 bundle of models/minilm (default: build it)")
    ap.add_argument("--int8-nosmooth", type=Path, help="our int8 bundle built with smooth_alpha = 0 (default: build)")
    ap.add_argument("--int8-ov", type=Path, help="our OpenVINO dynamic int8 bundle (default: build it)")
    ap.add_argument("--int8-ov-f32", type=Path, help="the same with [openvino] int8_float_hint = f32 (default: "
                                                      "built where the CPU has bf16)")
    ap.add_argument("--int8-ov-static", type=Path, help="our OpenVINO static int8 bundle (default: build it, --force)")
    ap.add_argument("--bf16-ov", type=Path, help="our OpenVINO bf16 bundle (default: built where the CPU has bf16)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "transformers.txt")
    args = ap.parse_args()

    import tempfile

    import edgecompile
    from edgecompile.compiler.autochoice import interleaved_latency
    from edgecompile.compiler.hf import load_tokenizer
    from edgecompile.compiler.textdata import lee_similarity
    from edgecompile.compiler.config import Config
    from edgecompile.runtime.machine import cpu_info, toolchain_versions
    from edgecompile.runtime import load
    from edgecompile.source import resolve_source
    from edgecompile.verify.textmetrics import nearest_neighbours, row_cosines, spearman_vs_human

    t_start = time.perf_counter()
    load_before = f"{os.getloadavg()[0]:.2f}"
    work = Path(tempfile.mkdtemp(prefix="bench-transformers-"))
    src = resolve_source("models/minilm")
    fp32_dir = args.fp32 or edgecompile.build(src, target="cpu", backend="ort", precision="fp32",
                                              output=work / "fp32").path
    int8_dir = args.int8 or edgecompile.build(src, target="cpu", backend="ort", precision="int8",
                                              config=Config().with_overrides({"passes.quantize.mode": "dynamic"}),
                                              output=work / "int8").path
    nosmooth_cfg = Config().with_overrides({"passes.quantize.mode": "dynamic", "passes.quantize.smooth_alpha": 0.0})
    nosmooth_dir = args.int8_nosmooth or edgecompile.build(src, target="cpu", backend="ort", precision="int8",
                                                           config=nosmooth_cfg, output=work / "int8-nosmooth").path
    ov_dir = args.int8_ov or edgecompile.build(src, target="cpu", backend="openvino", precision="int8",
                                               config=Config().with_overrides({"passes.quantize.mode": "dynamic"}),
                                               output=work / "int8-ov").path
    from edgecompile.targets.openvino.run import supports_bf16

    # where the CPU runs bf16 natively, the dynamic bundle's auto hint runs bf16 MatMuls on int8 weights (no
    # activation is quantized then): the f32-hinted one is the dynamic INT8 that quantizes its activations
    ov_f32_dir = args.int8_ov_f32 or (edgecompile.build(
        src, target="cpu", backend="openvino", precision="int8", output=work / "int8-ov-f32",
        config=Config().with_overrides({"passes.quantize.mode": "dynamic", "openvino.int8_float_hint": "f32"})).path
        if supports_bf16("CPU") else None)
    # static INT8 (Q/DQ on the MatMul inputs, the default for token-id models), shipped whatever its accuracy
    ov_static_dir = args.int8_ov_static or edgecompile.build(
        src, target="cpu", backend="openvino", precision="int8", output=work / "int8-ov-static",
        config=Config().with_overrides({"passes.quantize.mode": "static", "build.force": True})).path
    bf16_dir = args.bf16_ov or (edgecompile.build(src, target="cpu", backend="openvino", precision="bf16",
                                                  output=work / "bf16-ov").path if supports_bf16("CPU") else None)
    tok = load_tokenizer(src.directory / "tokenizer.json", src.max_length)
    TEXT = long_text(tok)
    n_tokens = len(tok.encode(TEXT).ids)
    names = [s.name for s in src.inputs]
    plain = src.path
    peer_q = ort_optimized_dynamic(plain, work)
    peer_nbits = ort_matmul_nbits8(work / "ort-optimized.onnx", work)

    default_hint = ov_default_hint()
    ours_fp32 = load(fp32_dir, threads=args.threads)
    ours_int8 = load(int8_dir, threads=args.threads)
    ours_nosmooth = load(nosmooth_dir, threads=args.threads)
    ours_ov = load(ov_dir, threads=args.threads)
    cands = [
        Candidate("raw ORT fp32, plain optimum export", engine_encoder(ort_run(plain, args.threads), tok, names)),
        Candidate(
            "ORT optimizer + quantize_dynamic (per-channel)", engine_encoder(ort_run(peer_q, args.threads), tok, names)
        ),
        Candidate("raw OpenVINO f32, plain optimum export", engine_encoder(ov_run(plain, args.threads), tok, names)),
        *([Candidate(f"raw OpenVINO default hint ({default_hint}), plain export",
                     engine_encoder(ov_run(plain, args.threads, None), tok, names))]
          if default_hint != "f32" else []),
        Candidate("ORT fused + MatMulNBits 8-bit b128 acc4", engine_encoder(ort_run(peer_nbits, args.threads), tok,
                                                                            names)),
        Candidate(f"ours: {fp32_dir.name} ({ours_fp32.bundle.manifest['precision']}, fused)", ours_fp32.encode),
        Candidate(f"ours: {int8_dir.name} ({ours_int8.bundle.manifest['precision']}, smoothed)", ours_int8.encode),
        Candidate(f"ours: {nosmooth_dir.name} ({ours_nosmooth.bundle.manifest['precision']}, smoothing off)",
                  ours_nosmooth.encode),
        Candidate(f"ours: {ov_dir.name} (OpenVINO {ov_form(ours_ov)})", ours_ov.encode),
    ]
    for d in (ov_f32_dir, ov_static_dir):
        if d is not None:
            r = load(d, threads=args.threads)
            cands.append(Candidate(f"ours: {d.name} (OpenVINO {ov_form(r)})", r.encode))
    if bf16_dir is not None:
        cands.append(Candidate(f"ours: {bf16_dir.name} (OpenVINO bf16)", load(bf16_dir, threads=args.threads).encode))
    # accuracy on real text vs raw ORT fp32
    eval_texts = src.texts("eval")
    docs, human = lee_similarity()
    ref = cands[0].encode(eval_texts)
    ref_nn = nearest_neighbours(ref)
    ref_docs = cands[0].encode(list(docs))
    rho_ref = spearman_vs_human(ref_docs, human)
    acc = []
    for c in cands:
        emb = c.encode(eval_texts)
        cos = row_cosines(emb, ref)
        agree = float(np.mean(nearest_neighbours(emb) == ref_nn))
        rho = spearman_vs_human(c.encode(list(docs)), human)
        acc.append((float(cos.mean()), float(cos.min()), agree, rho))
    samples = interleaved_latency(cands, None, rounds=args.rounds, round_seconds=args.round_seconds, warmup=5)
    p50 = [float(np.median(s)) for s in samples]
    # fresh process: load + encode one sentence
    raw_code = FRESH_RAW.format(threads=args.threads)
    our_code = FRESH_OURS.format(threads=args.threads)
    ours_f, raw_f = [], []
    for _ in range(5):
        ours_f.append(fresh(our_code, int8_dir))
        raw_f.append(fresh(raw_code, int8_dir / "model.onnx", int8_dir / "tokenizer.json"))

    cpu = cpu_info()
    tv = toolchain_versions()
    lines = [f"# bench/transformers.py  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{time.perf_counter() - t_start:.0f} s)",
             f"CPU: {cpu.get('model')} ({cpu.get('cores')} cores), threads {args.threads}; "
             + ", ".join(f"{k} {v}" for k, v in tv.items() if k in ("onnxruntime", "openvino", "tokenizers", "onnx")),
             f"model: all-MiniLM-L6-v2 (models/minilm); latency: batch 1, {n_tokens}-token text padded to 128, "
             f"tokenization included; {args.rounds} interleaved rounds; load average {load_before} (start), "
             f"{os.getloadavg()[0]:.2f} (end)",
             f"accuracy vs raw ORT fp32 on {len(eval_texts)} Lee sentences (cosine, retrieval top-1 agreement) "
             f"and 50 Lee documents (Spearman vs human; fp32 rho {rho_ref:.4f})",
             "",
             f"{'candidate':<52} {'p50 ms':>8} {'x raw fp32':>10} {'cos mean':>9} {'cos min':>8} "
             f"{'retrieval':>9} {'Spearman':>9} {'d rho':>7}"]
    for c, p, (cm, cmin, agree, rho) in zip(cands, p50, acc):
        lines.append(f"{c.name:<52} {p:8.2f} {p50[0] / p:9.2f}x {cm:9.5f} {cmin:8.5f} {100 * agree:8.1f}% "
                     f"{rho:9.4f} {rho - rho_ref:+7.4f}")
    ot, orss = np.median([f[0] for f in ours_f]), np.median([f[1] for f in ours_f])
    rt, rrss = np.median([f[0] for f in raw_f]), np.median([f[1] for f in raw_f])
    lines += ["", "fresh process, load + encode one sentence (median of 5):",
              f"  ours (edgecompile.runtime.load, int8 bundle): {1e3 * ot:8.1f} ms  {orss:7.1f} MiB peak RSS",
              f"  raw ORT + tokenizers (same model.onnx):        {1e3 * rt:8.1f} ms  {rrss:7.1f} MiB peak RSS",
              f"  ratio: time {ot / rt:.2f}x, memory {orss / rrss:.2f}x",
              "", "int8 bundle: " + json.dumps({k: ours_int8.bundle.manifest.get(k) for k in ("precision", "backend")})
              + ", passes " + ", ".join(p["name"] for p in ours_int8.bundle.manifest["passes"]),
              "int8 quantize options: " + json.dumps(next(p["options"] for p in ours_int8.bundle.manifest["passes"]
                                                          if p["name"] == "quantize"))]
    execution = (ours_ov.bundle.manifest.get("backend_options") or {}).get("execution") or {}
    lines.append("OpenVINO int8 bundle, float ops: " + execution.get("float_ops", "f32"))
    if execution.get("activations"):
        lines.append("OpenVINO int8 bundle, activations: " + execution["activations"])
    write_results(args.out, lines, echo=True)


def ov_form(runner) -> str:
    """What an OpenVINO int8 bundle runs: static Q/DQ or int8 weights, and its activations (recorded at build)."""
    m = runner.bundle.manifest
    quant = next(p["options"] for p in m["passes"] if p["name"] == "quantize")
    hint = m["backend_options"]["config"].get("INFERENCE_PRECISION_HINT", "f32")
    if quant["mode"] == "static":
        return f"static int8, {quant.get('ops', 'all')} ops, float ops {hint}"
    if (m["backend_options"].get("execution") or {}).get("activations"):
        return "int8 weights, bf16 activations"
    return f"int8 weights, dynamic int8 activations, float ops {hint}"


if __name__ == "__main__":
    main()
