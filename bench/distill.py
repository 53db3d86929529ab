"""all-MiniLM-L6-v2 (models/minilm, 6 layers) distilled into a 3-layer student, teacher vs student side by side.

    .venv/bin/python bench/distill.py [--steps 100] [--layers 3] [--rounds 15] [--threads 2]

(about 4 minutes on a quiet 2-core machine with the default 100 steps; the CLI's default is 300 steps)

1. Initialisation choice, before any training (torch, on the 256 held-out Lee evaluation sentences and
   the 50 Lee documents): students made of teacher layers 2,4,6 (the uniform TinyBERT map that
   `edgecompile distill` uses), 1,3,5 and 1,2,3 (the bottom layers).
2. `edgecompile distill --teacher models/minilm --student-layers 3 --steps N` (the same code path): TinyBERT
   losses on the Lee background sentences (the evaluation ones held out), student saved as a Hugging Face
   directory and built (ORT, fp32).
3. Teacher bundle (same options) vs student bundle: bundle size, batch-1 `runner.encode` latency of one
   ~130-token text (tokenization included) measured interleaved (A B, B A, ...) in one process, mean cosine
   to the teacher and nearest-neighbour retrieval agreement with it over the evaluation sentences,
   Spearman correlation with the human judgements of the 50 Lee documents.
Writes bench/results/distill.txt (CPU model and load average included).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import write_results  # noqa: E402  (bench/ is the script's directory on sys.path)

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def embed(model, tok, texts, names, max_length=256):
    import torch

    from edgecompile.compiler.hf import tokenize

    out = []
    for i in range(0, len(texts), 32):
        feeds, _ = tokenize(tok, texts[i:i + 32], names, max_length)
        with torch.no_grad():
            hidden = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
        m = torch.from_numpy(feeds["attention_mask"]).unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=12.0, help="latency budget of the interleaved rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill.txt")
    args = ap.parse_args()

    import edgecompile
    from edgecompile.compiler.hf import load_tokenizer
    from edgecompile.compiler.hf_distill import distill_and_build, init_student, layer_map, load_encoder
    from edgecompile.compiler.textdata import lee_similarity, split_sentences
    from edgecompile.models.minilm import model_dir
    from edgecompile.progress import Progress
    from edgecompile.runtime.machine import cpu_info
    from edgecompile.verify.textcompare import compare_text_bundles, comparison_rows
    from edgecompile.verify.textmetrics import nearest_neighbours, spearman_vs_human

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    tdir = model_dir()
    teacher = load_encoder(tdir)
    tok = load_tokenizer(tdir / "tokenizer.json", 256)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    texts = split_sentences("eval")
    docs, human = lee_similarity()
    t_emb, t_docs = embed(teacher, tok, texts, names), embed(teacher, tok, list(docs), names)
    n = teacher.config.num_hidden_layers
    inits = {"uniform (ours)": layer_map(n, args.layers), "odd": list(range(0, n, n // args.layers))[:args.layers],
             "bottom": list(range(args.layers))}
    init_rows = []
    for name, layers in inits.items():
        s = init_student(teacher, layers).eval()
        s_emb = embed(s, tok, texts, names)
        init_rows.append((name, layers, float(np.sum(s_emb * t_emb, 1).mean()),
                          float(np.mean(nearest_neighbours(s_emb) == nearest_neighbours(t_emb))),
                          spearman_vs_human(embed(s, tok, list(docs), names), human)))
    rho_teacher = spearman_vs_human(t_docs, human)
    del teacher

    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    t_distill = time.perf_counter()
    bundle, section = distill_and_build("models/minilm", args.layers, student_dir=work / "student",
                                        output=work / "student-bundle", steps=args.steps, backend="ort",
                                        precision="fp32", progress=Progress())
    distill_seconds = time.perf_counter() - t_distill
    teacher_bundle = edgecompile.build("models/minilm", target="cpu", backend="ort", precision="fp32",
                                       output=work / "teacher-bundle")
    cmp = compare_text_bundles(teacher_bundle.path, bundle.path, threads=args.threads, rounds=args.rounds,
                               seconds=args.seconds)
    rows = comparison_rows(cmp, section["training"]["params"])
    tr = section["training"]

    cpu = cpu_info()
    lines = [f"# bench/distill.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{time.perf_counter() - t_start:.0f} s)",
             f"CPU: {cpu.get('model')} ({cpu.get('cores')} cores), threads {args.threads}; load average "
             f"{load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end (other processes share the cores)",
             f"teacher: all-MiniLM-L6-v2 (models/minilm, {n} layers); student: {args.layers} layers "
             f"({', '.join(tr['layer_map'].values())}), {tr['steps']} steps x {tr['batch_size']} texts of "
             f"{tr['data']}, lr {tr['lr']}, {tr['train_seconds']:.0f} s training "
             f"({distill_seconds:.0f} s with both builds and the in-command comparison)",
             "losses first -> mean of last 10 steps: " + ", ".join(
                 f"{k} {tr['loss_first'][k]:.5f} -> {tr['loss_last10'][k]:.5f}" for k in tr["loss_first"]),
             "", "Initialisation before training (torch; 256 held-out Lee sentences; teacher Spearman "
             f"{rho_teacher:.4f}):",
             f"  {'init':<16} {'teacher layers':<15} {'cos to teacher':>14} {'retrieval':>10} {'Spearman':>9}"]
    for name, layers, cos, agree, rho in init_rows:
        lines.append(f"  {name:<16} {', '.join(str(i + 1) for i in layers):<15} {cos:14.4f} {100 * agree:9.1f}% "
                     f"{rho:9.4f}")
    lines += ["", f"Bundles (ORT fp32): latency batch 1, one {cmp['latency_tokens']}-token text, tokenization "
              f"included, {args.rounds} interleaved rounds; metrics vs the teacher bundle on "
              f"{cmp['eval_sentences']} held-out sentences; Spearman on the {cmp['human_documents']} Lee documents"]
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    lines.append("  " + "  ".join(k.ljust(w) for k, w in widths.items()))
    lines += ["  " + "  ".join(str(r[k]).ljust(w) for k, w in widths.items()) for r in rows]
    lines += ["", f"student vs teacher: {cmp['speedup']:.2f}x faster, size "
              f"{cmp['size_bytes']['student'] / cmp['size_bytes']['teacher']:.2f}x, mean cosine "
              f"{cmp['mean_cosine_to_teacher']:.4f} (min {cmp['min_cosine_to_teacher']:.4f}), retrieval agreement "
              f"{100 * cmp['retrieval_agreement']:.1f} %, Spearman {cmp['spearman_student']:.4f} vs teacher "
              f"{cmp['spearman_teacher']:.4f} ({cmp['spearman_student'] - cmp['spearman_teacher']:+.4f})"]
    write_results(args.out, lines, echo=True)


if __name__ == "__main__":
    main()
