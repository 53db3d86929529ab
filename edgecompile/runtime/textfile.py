"""Text data files for text models: `--data` (build, `baseline`, `check`) given as texts instead of token arrays.

* `.txt`   one text per line (blank lines skipped), no labels;
* `.jsonl` one object per line: `{"text": ..., "text_pair": ... (optional), "label": ... (optional)}`;
* `.tsv` / `.csv`  a header row naming the columns `text`, optionally `text_pair` and `label`.

Texts are tokenized with the model's (or bundle's) own tokenizer, truncated to its max length (reported)
and padded to its length buckets, as the runtime does. Labels (classification models only) are class
names from the model's `id2label`, or class indices; with labels the task metric is accuracy.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np

from edgecompile.data import Dataset
from edgecompile.errors import DataError

FORMATS = (".txt", ".jsonl", ".tsv", ".csv")
_HINT = ".txt: a text per line; .jsonl: {\"text\", \"text_pair\"?, \"label\"?} per line; .tsv/.csv: a header row " \
        "with text[, text_pair][, label]"


def is_text_file(path) -> bool:
    return Path(str(path)).suffix.lower() in FORMATS


def read_text_file(path: str | Path) -> tuple[list, list | None]:
    """(texts -- str, or (first, second) pairs --, labels or None) of a text data file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist", hint="pass an existing file")
    try:
        content = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: not a readable UTF-8 text file ({exc.__class__.__name__})", hint=_HINT) from None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        rows = [{"text": line.strip()} for line in content.splitlines() if line.strip()]
    elif suffix == ".jsonl":
        rows = []
        for i, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{i}: not a JSON object", hint=_HINT) from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i}: not a JSON object", hint=_HINT)
            rows.append(row)
    else:
        reader = csv.DictReader(content.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        if "text" not in (reader.fieldnames or []):
            raise DataError(f"{path}: the header row has no 'text' column (found: {reader.fieldnames})", hint=_HINT)
        rows = [dict(r) for r in reader]
    return _columns(path, rows)


def _columns(path: Path, rows: list[dict]) -> tuple[list, list | None]:
    if not rows:
        raise DataError(f"{path}: contains no texts", hint=_HINT)
    texts, labels = [], []
    for i, row in enumerate(rows, 1):
        text, pair = row.get("text"), row.get("text_pair")
        if not isinstance(text, str) or not text.strip() or (pair is not None and not isinstance(pair, str)):
            raise DataError(f"{path}: row {i} has no text (or a text_pair that is not a string)", hint=_HINT)
        texts.append((text, pair) if pair else text)
        labels.append(row.get("label"))
    given = [lab is not None and lab != "" for lab in labels]
    if any(given) and not all(given):
        raise DataError(f"{path}: row {given.index(False) + 1} has no label, others have one",
                        hint="label every row, or none")
    return texts, labels if all(given) else None


def label_indices(path, labels: list, frontend: dict) -> np.ndarray:
    """Class indices of `labels` (names from id2label, or indices) for a model with this frontend record."""
    task, class_labels = frontend.get("task", "feature-extraction"), frontend.get("labels")
    if task != "text-classification":
        raise DataError(f"{path}: labels are for classification models, this one is {task}",
                        hint="drop the label column")
    if frontend.get("scoring") == "none" or not class_labels:
        raise DataError(f"{path}: labels are for classification heads, this model's is a regression head",
                        hint="drop the label column (the build then bounds the outputs' closeness to FP32)")
    out = []
    for i, lab in enumerate(labels, 1):
        if isinstance(lab, str) and lab in class_labels:
            out.append(class_labels.index(lab))
            continue
        try:
            k = int(lab)
        except (TypeError, ValueError):
            k = -1
        if not (0 <= k < len(class_labels)) or isinstance(lab, float | bool):
            raise DataError(f"{path}: row {i}: label {lab!r} is not one of the model's classes",
                            hint=f"use a name of {class_labels} or an index 0..{len(class_labels) - 1}")
        out.append(k)
    return np.asarray(out, np.int64)


def text_file_dataset(path, tokenizer, frontend: dict) -> Dataset:
    """A Dataset of token arrays (and labels) from a text data file, tokenized by the rules of a text
    `frontend` record (the manifest's, or the source's frontend_spec): input names, max length, buckets."""
    from edgecompile.runtime.text import tokenize_for

    texts, labels = read_text_file(path)
    feeds, truncated = tokenize_for(tokenizer, texts, frontend)
    if truncated:
        warnings.warn(f"{Path(path).name}: {len(truncated)} text(s) truncated to {frontend['max_length']} tokens",
                      RuntimeWarning, stacklevel=2)
    y = None if labels is None else label_indices(path, labels, frontend)
    return Dataset(f"file:{Path(path).name}", feeds, y, meta={"text_file": True})
