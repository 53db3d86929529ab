"""`--data` as texts for text models (edgecompile/runtime/textfile.py): .txt, .jsonl (pairs, labels),
.tsv/.csv with a header; labelled texts make a classifier's task metric accuracy on the labels, in the
build and in `baseline`/`check`; malformed files are one-line errors. Tiny random BERTs as in test_hf.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from test_hf import _tiny_dir

REVIEWS = [("An absolute joy from start to finish.", "pos"), ("Dull, slow and far too long.", "neg"),
           ("The cast is wonderful and the script is sharp.", "pos"), ("I walked out after an hour.", "neg"),
           ("A clumsy, forgettable sequel.", "neg"), ("Funny, warm and beautifully shot.", "pos")]


def test_formats_read_texts_pairs_and_labels(tmp_path):
    from edgecompile.runtime.textfile import read_text_file

    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n")
    assert read_text_file(tmp_path / "a.txt") == (["first line", "second line"], None)
    (tmp_path / "b.jsonl").write_text('{"text": "q", "text_pair": "p", "label": 1}\n\n{"text": "r", "label": "pos"}\n')
    assert read_text_file(tmp_path / "b.jsonl") == ([("q", "p"), "r"], [1, "pos"])
    (tmp_path / "c.tsv").write_text("label\ttext\npos\tgood, really\nneg\tbad\n")
    assert read_text_file(tmp_path / "c.tsv") == (["good, really", "bad"], ["pos", "neg"])
    (tmp_path / "d.csv").write_text('text,text_pair\n"a, quoted",b\n')
    assert read_text_file(tmp_path / "d.csv") == ([("a, quoted", "b")], None)


@pytest.mark.parametrize("name, content, message", [
    ("e.tsv", "sentence\tlabel\nx\tpos\n", "the header row has no 'text' column"),
    ("f.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b"}\n', "row 2 has no label, others have one"),
    ("g.jsonl", '{"text": "a"}\nnot json\n', "g.jsonl:2: not a JSON object"),
    ("h.jsonl", '{"text": 5}\n', "row 1 has no text"),
    ("i.txt", "\n\n", "contains no texts"),
])
def test_malformed_text_files_are_one_line_errors(tmp_path, name, content, message):
    from edgecompile.errors import DataError
    from edgecompile.runtime.textfile import read_text_file

    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_text_file(tmp_path / name)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("textdata")
    directory = _tiny_dir(root / "cls", classifier=True)
    data = root / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in REVIEWS))
    return directory, data


def test_labelled_texts_make_the_metric_accuracy(classifier, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import edgecompile

    directory, data = classifier
    b = edgecompile.build(directory, target="cpu", backend="ort", precision="fp32", data=str(data),
                          output=tmp_path / "b")
    acc = b.report()["accuracy"]
    assert acc["metric"] == "top1" and acc["n"] == len(REVIEWS)
    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        pred = model(**tok([t for t, _ in REVIEWS], padding=True, return_tensors="pt")).logits.argmax(1).numpy()
    want = np.mean([["neg", "pos"][p] == y for p, (_, y) in zip(pred, REVIEWS)])
    assert acc["candidate"] == pytest.approx(want) and acc["reference"] == pytest.approx(want)


def test_baseline_and_check_on_a_text_file(classifier, tmp_path):
    import edgecompile

    directory, data = classifier
    bundle = edgecompile.build(directory, target="cpu", backend="ort", precision="fp32", output=tmp_path / "b").path
    base = tmp_path / "base.json"
    rc, out, err = run_cli("baseline", bundle, "--data", data, "-o", base, "--no-latency")
    assert rc == 0, err
    assert json.loads(base.read_text())["metric"]["name"] == "top1" and "on file:reviews.jsonl (n = 6)" in out
    rc, out, err = run_cli("check", bundle, "--baseline", base)
    assert rc == 0 and "PASS" in out, err
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nfine\tmaybe\n")
    rc, out, err = run_cli("baseline", bundle, "--data", bad, "-o", tmp_path / "x.json")
    assert rc == 2 and "label 'maybe' is not one of the model's classes" in err and "Traceback" not in err
