"""`edgecompile build` for decoder sources (see edgecompile.compiler.decoder for the stages)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecompile.compiler.writer import BundleWriter, json_default
from edgecompile.report.generation import render_generation_md
from edgecompile.runtime.bundle import Bundle
from edgecompile.compiler import decoder as dec
from edgecompile.errors import (
    ConfigError,
    GateError,
    ModelLoadError,
    TargetUnavailableError,
)

PPL_WINDOWS = 4
AGREEMENT_PROMPTS = 8


class _Files:
    """Enough of a Bundle for GenerationFrontend: artifacts by role from a plain directory."""

    def __init__(self, path: Path, roles: dict[str, Path]):
        self.path, self._roles = path, roles

    def artifact(self, role: str) -> Path:
        return self._roles[role]


SLOWER_THAN_FP32 = 0.9      # a quantized decoder below this fraction of FP32 tokens/s counts as slower


def frontend_for(model_path: Path, tokenizer_json: Path, spec: dict, threads: int | None):
    """A GenerationFrontend on an ONNX file (ORT session with I/O binding), outside any bundle."""
    from edgecompile.runtime.generate import GenerationFrontend
    from edgecompile.targets.ort.run import OrtRunner, create_session

    runner = OrtRunner(create_session(str(model_path), threads=threads), [], [], validate=False)
    return GenerationFrontend(runner, _Files(model_path.parent, {"tokenizer": tokenizer_json}), spec)


def _eos_ids(model) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _context_length(cfg) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ModelLoadError("the model config names no context length (max_position_embeddings / n_positions)",
                         hint="set max_position_embeddings in config.json")


def evaluate_candidate(fe, windows, prompts_ids, ref_greedy, n_tokens: int) -> dict:
    nlls = [dec.nll(fe.logits(w), w) for w in windows]
    agree, outs = [], []
    for ids, ref in zip(prompts_ids, ref_greedy):
        got = list(fe.generate_ids(ids, max_new_tokens=n_tokens))
        outs.append(got)
        agree.append(dec.prefix_agreement(got, ref, n_tokens))
    return {"perplexity": math.exp(float(np.mean(nlls))), "nll_per_window": nlls,
            "greedy_agreement": float(np.mean(agree)), "greedy_identical": sum(a == 1.0 for a in agree),
            "tokens": outs}


def quick_decode_tps(fe, n: int = 24) -> float:
    """Tokens/s of n forced decode steps after an 8-token prompt (candidate choice for int8)."""
    list(fe.generate_ids([1] * 8, max_new_tokens=4, ignore_eos=True))            # warm-up
    list(fe.generate_ids([1] * 8, max_new_tokens=n + 1, ignore_eos=True))
    return 1e3 / float(np.median(fe.timings["step_ms"]))


def build_decoder(plan, progress) -> Bundle:
    cfg = plan.config
    t_start = plan.started
    if plan.backend not in ("auto", "ort"):
        raise TargetUnavailableError(f"decoder bundles run on ONNX Runtime; backend {plan.backend!r} is not "
                                     "supported for them", hint="use --backend ort (or auto) for decoder models")
    if plan.precision not in dec.PRECISIONS:
        raise ConfigError(f"precision {plan.precision!r} is not supported for decoder models",
                          hint="use --precision fp32, int8 or int4 (weight-only)")
    if plan.profile.name != "cpu":
        raise ConfigError(f"decoder bundles are built for the cpu target only, not {plan.profile.name!r}",
                          hint="use --target cpu")
    q = cfg.passes.quantize
    block = q.block_size or dec.DEFAULT_BLOCK_SIZE
    if block < 16 or block & (block - 1):
        raise ConfigError(f"quantization block size must be a power of two >= 16, got {block}",
                          hint="e.g. --block-size 32 (the default) or 128")
    bound = dec.DEFAULT_BOUND_PCT if q.max_accuracy_drop is None else float(q.max_accuracy_drop)
    threads = cfg.build.threads
    src = plan.source
    with tempfile.TemporaryDirectory(prefix="edgecompile-decoder-") as tmpdir:
        tmp = Path(tmpdir)
        with progress.step("load", f"{src.path} (transformers, fp32)"):
            model, hf_tok = src.load(cache=plan.use_cache)
            if not getattr(hf_tok, "is_fast", False):
                raise ModelLoadError(f"{src.path}: the tokenizer has no fast (tokenizer.json) form",
                                     hint="decoder bundles ship tokenizer.json; use a model with a fast tokenizer")
            hf_tok.save_pretrained(str(tmp / "tok"))
            tok_json = tmp / "tok" / "tokenizer.json"
            context = _context_length(model.config)
            eos = _eos_ids(model)
        onnx_dir = tmp / "onnx"
        onnx_dir.mkdir()
        from edgecompile.compiler.buildcache import StageCache
        from edgecompile.cache import content_key
        from edgecompile.runtime.machine import toolchain_versions

        cache = StageCache(enabled=plan.use_cache)
        key = content_key(dec.EXPORT_VERSION, src.fingerprint, toolchain_versions())
        hit = cache.get("export", key) if plan.use_cache else None
        with progress.step("export", "cache hit" if hit else "optimum text-generation-with-past"):
            if hit is not None:
                shutil.copyfile(hit / "model.onnx", onnx_dir / "model.onnx")
            else:
                dec.export_onnx(model, onnx_dir)
                dec.fold_weight_transposes(onnx_dir / "model.onnx")
                cache.put("export", key, lambda d: shutil.copyfile(onnx_dir / "model.onnx", d / "model.onnx"))
        fp32_path = onnx_dir / "model.onnx"
        layout = dec.kv_layout(fp32_path)
        special = {k: v for k, v in {"bos_token": hf_tok.bos_token, "eos_token": hf_tok.eos_token,
                                     "unk_token": hf_tok.unk_token, "pad_token": hf_tok.pad_token}.items()
                   if isinstance(v, str)}
        spec = {"kind": "generation", **layout, "context_length": context, "eos_token_ids": eos,
                "kv_dtype": "float32", "chat_template": hf_tok.chat_template if isinstance(hf_tok.chat_template, str)
                else None, "special_tokens": special}

        # -- reference (transformers FP32) on held-apart text and the prompt set --------------------------
        from edgecompile.runtime.tokenizer import Tokenizer

        rt_tok = Tokenizer(tok_json)
        window = min(256, context)
        windows = dec.eval_windows(rt_tok.encode, PPL_WINDOWS, window)
        prompts_ids = [rt_tok.encode(p) for p in dec.PROMPTS[:AGREEMENT_PROMPTS]]
        n_tok = min(dec.AGREEMENT_TOKENS, context - max(len(p) for p in prompts_ids))
        with progress.step("reference", f"transformers fp32: perplexity on {len(windows)}x{window} tokens, "
                                        f"greedy {len(prompts_ids)}x{n_tok}"):
            ref_nll = [dec.nll(dec.torch_logits(model, w), w) for w in windows]
            ref_ppl = math.exp(float(np.mean(ref_nll)))
            ref_greedy = [dec.torch_greedy(model, ids, n_tok, eos) for ids in prompts_ids]
        del model

        with progress.step("parity", "ONNX fp32 vs transformers: greedy tokens"):
            fp32_eval = evaluate_candidate(frontend_for(fp32_path, tok_json, spec, threads), windows,
                                           prompts_ids, ref_greedy, n_tok)
        parity = {"greedy_identical": fp32_eval["greedy_identical"], "prompts": len(prompts_ids),
                  "tokens": n_tok, "greedy_agreement": fp32_eval["greedy_agreement"],
                  "perplexity_onnx": fp32_eval["perplexity"], "perplexity_torch": ref_ppl}
        if fp32_eval["greedy_agreement"] < 1.0:
            progress.warn(f"ONNX fp32 greedy tokens differ from transformers on "
                          f"{len(prompts_ids) - fp32_eval['greedy_identical']} of {len(prompts_ids)} prompts")

        # -- precision ----------------------------------------------------------------------------------
        achieved, chosen_path, chosen_eval, quant, tried = "fp32", fp32_path, fp32_eval, None, []
        if plan.precision != "fp32":
            achieved, chosen_path, chosen_eval, quant, tried = _choose_quantized(
                plan, fp32_path, tmp, tok_json, spec, windows, prompts_ids, ref_greedy, n_tok, ref_ppl,
                block, bound, threads, progress)

        # -- bundle -------------------------------------------------------------------------------------
        writer = BundleWriter(plan.output)
        try:
            shutil.copyfile(chosen_path, writer.path("model.onnx"))
            writer.add_artifact("model.onnx", "model")
            shutil.copyfile(tok_json, writer.path("tokenizer.json"))
            writer.add_artifact("tokenizer.json", "tokenizer")
            manifest = writer.write_manifest(_manifest(plan, chosen_path, achieved, spec, quant, parity))
            with progress.step("measure", "TTFT, decode tokens/s, peak memory (runtime process)"):
                perf = measure_runtime(writer.staging, threads, context)
            rep = _report(plan, manifest, achieved, quant, parity, ref_ppl, chosen_eval, fp32_eval, perf,
                          tried, bound, writer.staging, fp32_path, time.perf_counter() - t_start, window, len(windows))
            writer.write_derived("report.json", json.dumps(rep, indent=2, default=json_default))
            writer.write_derived("report.md", render_generation_md(rep))
            if achieved != plan.precision:
                msg = (
                    f"requested precision {plan.precision} was not met: shipping {achieved} ({rep['precision_reason']})"
                )
                progress.warn(msg)
                if cfg.build.strict:
                    raise GateError(msg, hint="drop --strict to ship the fallback, or --force to ship the "
                                              "requested precision")
            final = writer.commit()
        finally:
            writer.abort()
    return Bundle(final, manifest)


def _choose_quantized(plan, fp32_path, tmp, tok_json, spec, windows, prompts_ids, ref_greedy, n_tok, ref_ppl,
                      block, bound, threads, progress):
    """Quantize; keep lm_head (+ embedding) in float if over the bound; fp32 if still over (unless --force).
    int8: weight-only 8-bit and dynamic INT8 are both measured; the faster within the bound ships."""
    from edgecompile.compiler.decoder_int4 import lm_head_nodes

    sensitive = lm_head_nodes(fp32_path)
    fp32_tps = quick_decode_tps(frontend_for(fp32_path, tok_json, spec, threads))
    bits = 4 if plan.precision == "int4" else 8
    schemes = ["weight-only"] if bits == 4 else ["weight-only", "dynamic"]
    tried, ok = [], []
    for scheme in schemes:
        for exclude in ([], sensitive):
            name = f"{scheme}-{bits}{'-keep-lm-head' if exclude else ''}"
            path = tmp / f"{name}.onnx"
            with progress.step("quantize", f"{name} (block {block})" if scheme == "weight-only" else name):
                info = dec.quantize(fp32_path, path, scheme, bits, block, exclude,
                                    algorithm="minmax-float-zp" if bits == 4 else "rtn")
                fe = frontend_for(path, tok_json, spec, threads)
                ev = evaluate_candidate(fe, windows, prompts_ids, ref_greedy, n_tok)
                tps = quick_decode_tps(fe)
            delta_pct = 100.0 * (ev["perplexity"] - ref_ppl) / ref_ppl
            row = {"candidate": name, "perplexity": ev["perplexity"], "perplexity_delta_pct": delta_pct,
                   "greedy_agreement": ev["greedy_agreement"], "decode_tokens_per_s": tps,
                   "speed_vs_fp32": tps / fp32_tps, "within_bound": delta_pct <= bound,
                   "size_bytes": path.stat().st_size}
            tried.append(row)
            progress.debug(f"{name}: perplexity {ev['perplexity']:.4f} ({delta_pct:+.2f} %), agreement "
                           f"{ev['greedy_agreement']:.3f}")
            if delta_pct <= bound or plan.config.build.force:
                ok.append((tps or 0.0, path, ev, info, row))
                break
    # The contract: never ship a precision slower than FP32 unless --force asks for it (timing noise on a
    # shared CPU: "slower" means below SLOWER_THAN_FP32 of FP32's decode speed).
    for _, _, _, _, row in ok:
        row["slower_than_fp32"] = row["speed_vs_fp32"] < SLOWER_THAN_FP32
    fast = ok if plan.config.build.force else [c for c in ok if not c[4]["slower_than_fp32"]]
    if not fast:
        return "fp32", fp32_path, None, None, tried
    best = max(fast, key=lambda c: c[0])
    _, path, ev, info, row = best
    achieved = "mixed" if info["float_nodes"] else plan.precision
    if row["slower_than_fp32"]:
        progress.warn(f"{row['candidate']} decodes at {row['speed_vs_fp32']:.2f}x the fp32 speed on this CPU "
                      f"({row['decode_tokens_per_s']:.1f} vs {fp32_tps:.1f} tokens/s): shipped because of --force")
        info = {**info, "slower_than_fp32": row["speed_vs_fp32"]}
    return achieved, path, ev, info, tried


def measure_runtime(bundle_dir: Path, threads: int | None, context: int) -> dict:
    """Latency and memory measured in a fresh process through edgecompile.runtime.load (no torch there)."""
    cmd = [sys.executable, "-m", "edgecompile.compiler.decoder_measure", str(bundle_dir), str(threads or 0)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if res.returncode != 0:
        from edgecompile.errors import CompileError

        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompileError(f"measuring the decoder bundle failed: {tail}", hint="run with --debug")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _manifest(plan, model_path, precision, spec, quant, parity) -> dict:
    import onnx

    from edgecompile import __version__
    from edgecompile.runtime.machine import machine_info, toolchain_versions

    proto = onnx.load(str(model_path), load_external_data=False)

    def specs(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append(
                {"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}
            )
        return out

    return {
        "bundle_id": plan.bundle_id(),
        "created_by": f"edgecompile {__version__}",
        "model": {"name": plan.source.name, "kind": "decoder", "fingerprint": plan.source.fingerprint,
                  "gguf": plan.source.gguf_file is not None,
                  "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)},
        "target": plan.profile.name, "backend": "ort",
        "profile": {"name": plan.profile.name, "description": plan.profile.description, "arch": plan.profile.arch},
        "precision": precision, "requested_precision": plan.precision,
        "quantization": quant,
        "float_nodes": (quant or {}).get("float_nodes") or [],
        "inputs": specs(proto.graph.input), "outputs": specs(proto.graph.output),
        "frontend": spec, "metric": "perplexity", "parity": parity,
        "backend_options": {"graph_optimization_level_at_load": "all", "providers": ["CPUExecutionProvider"]},
        "config": plan.config.to_dict(), "toolchain": toolchain_versions(), "measured_on": machine_info(),
        "runs_on_host": True,
    }


def _report(plan, manifest, achieved, quant, parity, ref_ppl, ev, fp32_eval, perf, tried, bound, staging,
            fp32_path, seconds, window, n_windows) -> dict:
    from datetime import datetime, timezone

    size = (staging / "model.onnx").stat().st_size
    fp32_size = fp32_path.stat().st_size
    ev = ev or fp32_eval
    reason = None
    slow = [r for r in tried if r["within_bound"] and r.get("slower_than_fp32")]
    if achieved == "fp32" and plan.precision != "fp32" and slow:
        best = max(slow, key=lambda r: r["speed_vs_fp32"])
        reason = (f"every {plan.precision} candidate within the {bound:g} % perplexity bound decodes slower than "
                  f"fp32 on this CPU (best {best['candidate']}: {best['speed_vs_fp32']:.2f}x fp32); "
                  "--force ships it anyway")
    elif achieved == "fp32" and plan.precision != "fp32":
        worst = min(tried, key=lambda r: r["perplexity_delta_pct"])
        reason = (f"every {plan.precision} candidate raised perplexity over the bound {bound:g} % "
                  f"(best {worst['candidate']}: {worst['perplexity_delta_pct']:+.2f} %)")
    elif achieved == "mixed":
        reason = f"lm_head/embedding kept in float to stay within {bound:g} % perplexity"
    cand_ppl = ev["perplexity"]
    return {
        "model": plan.source.name, "target": plan.profile.name, "backend": "ort", "precision": achieved,
        "requested_precision": plan.precision, "precision_reason": reason,
        "bundle_id": manifest["bundle_id"], "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": seconds, "quantization": quant, "parity": parity,
        "accuracy": None,
        "generation": {
            "metric": "perplexity",
            "perplexity": {"reference": ref_ppl, "candidate": cand_ppl, "delta": cand_ppl - ref_ppl,
                           "delta_pct": 100.0 * (cand_ppl - ref_ppl) / ref_ppl, "bound_pct": bound,
                           "reference_model": "transformers fp32", "text": "Python stdlib docstrings "
                           f"({', '.join(dec.EVAL_MODULES)}), {n_windows} windows x {window} tokens"},
            "greedy_agreement": {"value": ev["greedy_agreement"], "identical_prompts": ev["greedy_identical"],
                                 "prompts": parity["prompts"], "tokens": parity["tokens"],
                                 "definition": "mean fraction of the first N reference tokens matched before the "
                                               "first divergence; reference = transformers fp32 greedy"},
            "candidates": tried,
            **perf,
            "size_bytes": size, "size_ratio_vs_fp32": size / fp32_size,
        },
        "latency_ms": None,
        "latency_per_token_ms": {"p50": perf["per_token_ms"]["p50"], "p99": perf["per_token_ms"]["p99"],
                                 "tokens": perf["per_token_ms"]["n"], "context": perf["per_token_ms"]["context"],
                                 "threads": perf["threads"]},
        "peak_rss_mb": perf["peak_rss_mb"],
        "cold_start_ms": perf["cold_start_ms"],
        "warnings": [reason] if reason and achieved == "fp32" else [],
    }
