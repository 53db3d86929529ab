"""Teacher vs student text bundles side by side: size, batch-1 `runner.encode` latency measured
interleaved in one process, and the task metrics on real text (mean cosine to the teacher, nearest-neighbour
retrieval agreement with the teacher over the 256 evaluation sentences, Spearman correlation with the
human judgements of the 50 Lee documents for each)."""
from __future__ import annotations

from pathlib import Path


from edgecompile.verify.textmetrics import retrieval_agreement, row_cosines, spearman_vs_human


def speed_text(min_tokens: int = 100) -> str:
    """Lee background sentences joined (ones the evaluation split does not use) to about `min_tokens` words."""
    from edgecompile.compiler.textdata import lee_sentences

    words: list[str] = []
    for sent in lee_sentences()[1000:]:
        words.append(sent)
        if len(" ".join(words).split()) >= min_tokens:
            break
    return " ".join(words)


def compare_text_bundles(teacher: str | Path, student: str | Path, *, threads: int | None = None, rounds: int = 8,
                         seconds: float = 4.0) -> dict:
    from edgecompile.compiler.textdata import lee_similarity, split_sentences
    from edgecompile.runtime import load
    from edgecompile.verify.bench import interleaved

    texts = split_sentences("eval")
    docs, human = lee_similarity()
    text = speed_text()
    out: dict = {"eval_sentences": len(texts), "human_documents": len(docs)}
    with load(teacher, threads=threads) as t_run, load(student, threads=threads) as s_run:
        t_emb, s_emb = t_run.encode(texts), s_run.encode(texts)
        cos = row_cosines(s_emb, t_emb)
        out["mean_cosine_to_teacher"] = float(cos.mean())
        out["min_cosine_to_teacher"] = float(cos.min())
        out["retrieval_agreement"] = float(retrieval_agreement(s_emb, t_emb).mean())
        out["spearman_teacher"] = spearman_vs_human(t_run.encode(list(docs)), human)
        out["spearman_student"] = spearman_vs_human(s_run.encode(list(docs)), human)
        feeds, _ = t_run.frontend.tokenize([text])
        out["latency_tokens"] = int(feeds["attention_mask"].sum())
        lat = interleaved({"teacher": lambda: t_run.encode([text]), "student": lambda: s_run.encode([text])},
                          rounds=rounds, seconds=seconds)
        sizes = [sum(int(a["size"]) for a in r.bundle.manifest["artifacts"].values()) for r in (t_run, s_run)]
    out["latency_ms"] = {"teacher": lat["teacher"]["ms"], "student": lat["student"]["ms"]}
    out["latency_rounds"] = rounds
    out["speedup"] = lat["teacher"]["ms"] / lat["student"]["ms"]
    out["size_bytes"] = {"teacher": sizes[0], "student": sizes[1]}
    return out


def comparison_rows(cmp: dict, params: dict | None = None) -> list[dict]:
    """Flat table rows (teacher, student) for the report and the CLI."""
    rows = []
    for who in ("teacher", "student"):
        row = {"model": who}
        if params:
            row["params"] = f"{params[who]:,}"
        row["bundle size (MiB)"] = f"{cmp['size_bytes'][who] / 2**20:.1f}"
        row[f"encode latency (ms, batch 1, {cmp['latency_tokens']} tokens)"] = f"{cmp['latency_ms'][who]:.2f}"
        row["speed vs teacher"] = f"{cmp['latency_ms']['teacher'] / cmp['latency_ms'][who]:.2f}x"
        row["mean cosine to teacher"] = "1.0000" if who == "teacher" else f"{cmp['mean_cosine_to_teacher']:.4f}"
        row["retrieval agreement"] = "100.0 %" if who == "teacher" else f"{100 * cmp['retrieval_agreement']:.1f} %"
        row["Spearman vs human"] = f"{cmp['spearman_' + who]:.4f}"
        rows.append(row)
    return rows
