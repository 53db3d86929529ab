"""Teacher vs student text bundles side by side: size, batch-1 `runner.encode` (or `classify`) latency
measured interleaved in one process, and the task metrics on real text: for encoders mean cosine to the
teacher, nearest-neighbour retrieval agreement with the teacher over the 256 evaluation sentences, Spearman
correlation with the human judgements of the 50 Lee documents for each; for classifiers agreement with the
teacher's decisions and the mean score difference on the polarity evaluation sentences."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
    from edgecompile.runtime import load
    from edgecompile.verify.bench import interleaved

    text = speed_text()
    out: dict = {}
    with load(teacher, threads=threads) as t_run, load(student, threads=threads) as s_run:
        if t_run.frontend.task == "text-classification":
            run = _compare_classifiers(t_run, s_run, out)
        else:
            run = _compare_encoders(t_run, s_run, out)
        feeds, _ = t_run.frontend.tokenize([text])
        out["latency_tokens"] = int(feeds["attention_mask"].sum())
        lat = interleaved({"teacher": lambda: run(t_run, [text]), "student": lambda: run(s_run, [text])},
                          rounds=rounds, seconds=seconds)
        sizes = [sum(int(a["size"]) for a in r.bundle.manifest["artifacts"].values()) for r in (t_run, s_run)]
    out["latency_ms"] = {"teacher": lat["teacher"]["ms"], "student": lat["student"]["ms"]}
    out["latency_rounds"] = rounds
    out["speedup"] = lat["teacher"]["ms"] / lat["student"]["ms"]
    out["size_bytes"] = {"teacher": sizes[0], "student": sizes[1]}
    return out


def _compare_classifiers(t_run, s_run, out: dict):
    """Classification bundles: agreement of the student's decisions with the teacher's on the polarity
    evaluation sentences, and the mean absolute difference of their scores (probabilities, or a regression
    head's values)."""
    from edgecompile.compiler.textdata import corpus_split

    texts = corpus_split("polarity", "eval")
    t, s = t_run.classify(texts), s_run.classify(texts)
    key = "probabilities" if "probabilities" in t else "values"
    out.update(task="text-classification", eval_texts=len(texts), scores=key,
               mean_abs_score_diff=float(np.abs(t[key] - s[key]).mean()))
    if key == "probabilities":
        decide = lambda p: (p[:, 0] >= 0.5).astype(int) if p.shape[1] == 1 else p.argmax(1)  # noqa: E731
        out["label_agreement"] = float((decide(t[key]) == decide(s[key])).mean())
    return lambda runner, batch: runner.classify(batch)


def _compare_encoders(t_run, s_run, out: dict):
    from edgecompile.compiler.textdata import lee_similarity, split_sentences

    texts = split_sentences("eval")
    docs, human = lee_similarity()
    out.update(task="feature-extraction", eval_sentences=len(texts), human_documents=len(docs))
    t_emb, s_emb = t_run.encode(texts), s_run.encode(texts)
    cos = row_cosines(s_emb, t_emb)
    out["mean_cosine_to_teacher"] = float(cos.mean())
    out["min_cosine_to_teacher"] = float(cos.min())
    out["retrieval_agreement"] = float(retrieval_agreement(s_emb, t_emb).mean())
    out["spearman_teacher"] = spearman_vs_human(t_run.encode(list(docs)), human)
    out["spearman_student"] = spearman_vs_human(s_run.encode(list(docs)), human)
    return lambda runner, batch: runner.encode(batch)


def comparison_rows(cmp: dict, params: dict | None = None) -> list[dict]:
    """Flat table rows (teacher, student) for the report and the CLI."""
    rows = []
    for who in ("teacher", "student"):
        row = {"model": who}
        if params:
            row["params"] = f"{params[who]:,}"
        row["bundle size (MiB)"] = f"{cmp['size_bytes'][who] / 2**20:.1f}"
        verb = "classify" if cmp.get("task") == "text-classification" else "encode"
        row[f"{verb} latency (ms, batch 1, {cmp['latency_tokens']} tokens)"] = f"{cmp['latency_ms'][who]:.2f}"
        row["speed vs teacher"] = f"{cmp['latency_ms']['teacher'] / cmp['latency_ms'][who]:.2f}x"
        teacher = who == "teacher"
        if verb == "classify":
            if "label_agreement" in cmp:
                row["label agreement with teacher"] = "100.0 %" if teacher else f"{100 * cmp['label_agreement']:.1f} %"
            row[f"mean |score - teacher's| ({cmp['scores']})"] = \
                "0" if teacher else f"{cmp['mean_abs_score_diff']:.4f}"
        else:
            row["mean cosine to teacher"] = "1.0000" if teacher else f"{cmp['mean_cosine_to_teacher']:.4f}"
            row["retrieval agreement"] = "100.0 %" if teacher else f"{100 * cmp['retrieval_agreement']:.1f} %"
            row["Spearman vs human"] = f"{cmp['spearman_' + who]:.4f}"
        rows.append(row)
    return rows
