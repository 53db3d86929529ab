"""`edgecompile run DIR --text ...`: embeddings or classes of texts through a text bundle's front-end."""
from __future__ import annotations

import warnings

import click

from edgecompile.cli.common import echo_warnings, emit_json, save_npz
from edgecompile.errors import BundleError


def run_texts(runner, texts: list, output: str | None, json_mode: bool) -> None:
    import numpy as np

    with runner:
        front = runner.frontend
        if front is None or not hasattr(front, "encode"):
            raise BundleError(
                f"{runner.bundle.path if runner.bundle else 'bundle'}: not a text bundle, --text needs one",
                hint="use --input FILE.npz, or build a Hugging Face text model",
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            if front.task == "text-classification":
                res = runner.classify(texts)
                arrays = {k: res[k] for k in ("probabilities", "values") if k in res}
            else:
                emb = runner.encode(texts)
                res = None
                arrays = {"embeddings": emb}
        manifest = runner.bundle.manifest if runner.bundle is not None else {}
    notes = echo_warnings(caught)
    output = save_npz(output, arrays)
    result = {"bundle": str(runner.bundle.path) if runner.bundle else None, "bundle_id": manifest.get("bundle_id"),
              "task": front.task, "texts": texts, "warnings": notes, "output_file": output}
    if res is not None:
        result["labels"] = res["labels"]
        result["scores"] = [float(s) for s in res["scores"]]
        result.update({k: res[k].tolist() for k in ("probabilities", "values") if k in res})
        if "active" in res:
            result["active"] = res["active"]
    else:
        result["embeddings"] = emb.tolist()
        result["dim"] = int(emb.shape[1])
    if json_mode:
        emit_json(result)
        return
    for i, text in enumerate(texts):
        text = " | ".join(text) if isinstance(text, tuple) else text
        short = text if len(text) <= 60 else text[:57] + "..."
        if res is not None:
            active = f"  [{', '.join(res['active'][i])}]" if "active" in res else ""
            click.echo(f"{res['labels'][i]}  {res['scores'][i]:.4f}{active}  {short}")
        else:
            v = emb[i]
            head = " ".join(f"{x:+.4f}" for x in v[:4])
            click.echo(f"[{head} ...] dim {v.shape[0]} norm {np.linalg.norm(v):.4f}  {short}")
    if res is None and len(texts) > 1:
        sim = emb @ emb.T / np.maximum(np.outer(np.linalg.norm(emb, axis=1), np.linalg.norm(emb, axis=1)), 1e-30)
        click.echo("cosine similarity:")
        for i in range(len(texts)):
            click.echo("  " + " ".join(f"{sim[i, j]:.3f}" for j in range(len(texts))))
    if output:
        click.echo(f"outputs written to {output}")
