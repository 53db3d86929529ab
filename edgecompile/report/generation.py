"""The report of decoder (text generation) bundles: perplexity, greedy agreement, TTFT and tokens/s."""
from __future__ import annotations


def render_generation_md(rep: dict) -> str:
    lines = [f"# EdgeCompile report: {rep['model']} -> {rep['target']} (ort, {rep['precision']})", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in generation_rows(rep)]
    return "\n".join(lines) + "\n"


def generation_rows(rep: dict) -> list[tuple[str, str]]:
    g = rep["generation"]
    p, a = g["perplexity"], g["greedy_agreement"]
    ttft = ", ".join(f"{k} tok {v:.1f} ms" for k, v in g["ttft_ms"].items())
    lat = rep["latency_per_token_ms"]
    q = rep.get("quantization") or {}
    return [
        ("perplexity", f"{p['candidate']:.4f} (transformers fp32 {p['reference']:.4f}, {p['delta_pct']:+.2f} %)"),
        (
            "greedy agreement",
            (
                f"{100 * a['value']:.1f} % ({a['identical_prompts']}/{a['prompts']} prompts "
                f"identical over {a['tokens']} tokens)"
            ),
        ),
        (
            "parity (onnx fp32)",
            f"{rep['parity']['greedy_identical']}/{rep['parity']['prompts']} prompts greedy-identical",
        ),
        (
            "quantization",
            f"{q['scheme']} {q['bits']}-bit" + (f", block {q['block_size']}" if q.get("block_size") else "")
            if q
            else "none (fp32)",
        ),
        ("TTFT (prefill)", ttft),
        (
            "decode",
            (
                f"{g['decode_tokens_per_s']:.1f} tokens/s (batch 1); per token p50 {lat['p50']:.2f} / "
                f"p99 {lat['p99']:.2f} ms, {lat['threads']} threads"
            ),
        ),
        ("size", f"{g['size_bytes'] / 1e6:.1f} MB ({g['size_ratio_vs_fp32']:.2f}x fp32)"),
        ("peak RSS", f"{rep['peak_rss_mb']:.1f} MB (runtime process)"),
    ]
