"""Which data `baseline` and `check` evaluate on: the bundle's recorded evaluation data (a built-in model's
bound split, re-loaded by name without torch and checked by sha256) or a `.npz` given with --data."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgecompile.data import Dataset, TensorSpec, load_npz, parse_spec, validate_dataset
from edgecompile.errors import DataError
from edgecompile.runtime.bundle import Bundle


def _inputs(bundle: Bundle) -> list[TensorSpec]:
    return bundle.io_specs()[0]


def bound_dataset(identity: str, inputs: list[TensorSpec]) -> Dataset:
    """A built-in model's bound split (`digits:test`, `digits:test[:100]`), loaded without torch."""
    parsed = parse_spec(identity)
    if parsed is None:
        raise DataError(f"evaluation data {identity!r} cannot be re-loaded by name",
                        hint="pass the same data with --data FILE.npz")
    import importlib

    from edgecompile.source import BUILTIN_MODELS

    name, split, start, stop = parsed
    if name not in BUILTIN_MODELS:
        raise DataError(f"evaluation data {identity!r} belongs to model {name!r}, which is not built in",
                        hint="pass the same data with --data FILE.npz")
    module = importlib.import_module(f"edgecompile.models.{name}")
    ds = module.source().dataset(split)
    if start is not None or stop is not None:
        ds = ds.subset(start, stop, f"[{'' if start is None else start}:{'' if stop is None else stop}]")
    validate_dataset(ds, inputs, what=identity)
    return ds


def with_detection_spec(ds: Dataset | None, frontend: dict | None) -> Dataset | None:
    """A detector's data given as a file: its decoding spec (the model's or bundle's front-end) for the mAP
    metrics (with labels, or without them scored against the reference's detections)."""
    frontend = frontend or {}
    if ds is None or frontend.get("kind") != "detection" or "detection" in ds.meta:
        return ds
    return replace(ds, meta={**ds.meta, "detection": frontend}, _sha=None)


def text_dataset(spec: str, identity: str, bundle: Bundle) -> Dataset:
    """A text bundle's evaluation texts (`corpus:split`, see compiler.textdata) tokenized again with the
    bundle's own tokenizer and length buckets, as the build did."""
    from edgecompile.compiler.textdata import corpus_split
    from edgecompile.runtime.text import tokenize_for

    fe = bundle.manifest.get("frontend") or {}
    if fe.get("kind") != "text":
        raise DataError(f"evaluation data {identity!r} are texts, but {bundle.path} is not a text bundle",
                        hint="pass the data with --data FILE.npz")
    corpus, _, split = spec.partition(":")
    feeds, _ = tokenize_for(_bundle_tokenizer(bundle, fe), corpus_split(corpus, split), fe)
    return Dataset(identity, feeds, meta={"texts": spec})


def _bundle_tokenizer(bundle: Bundle, fe: dict):
    from edgecompile.runtime.tokenizer import read_tokenizer_json

    return read_tokenizer_json(bundle.artifact("tokenizer"), int(fe["max_length"]))


def load_file(data, bundle: Bundle, inputs) -> Dataset:
    """`--data` of `baseline`/`check`: a .npz of input arrays, or for a text bundle a text data file
    (edgecompile.runtime.textfile) tokenized with the bundle's own tokenizer and length buckets."""
    from edgecompile.runtime.textfile import is_text_file, text_file_dataset

    fe = bundle.manifest.get("frontend") or {}
    if not is_text_file(data):
        return with_detection_spec(load_npz(data, inputs), fe)
    if fe.get("kind") != "text":
        raise DataError(f"{data}: a text file, but {bundle.path} is not a text bundle",
                        hint="pass the data as a .npz of input arrays")
    return text_file_dataset(data, _bundle_tokenizer(bundle, fe), fe)


def bundle_dataset(bundle: Bundle, data: str | Path | None = None) -> Dataset:
    """The data a bundle was evaluated on (its manifest), or `data` (a `.npz`) when given."""
    inputs = _inputs(bundle)
    if data is not None:
        return load_file(data, bundle, inputs)
    desc = (bundle.manifest.get("data") or {}).get("evaluation")
    if not desc:
        raise DataError(f"{bundle.path}: the bundle records no evaluation data", hint="pass --data FILE.npz")
    identity = desc["identity"]
    if identity.startswith("file:"):
        raise DataError(f"{bundle.path}: the bundle was evaluated on {identity[5:]!r}, a file not kept in the bundle",
                        hint=f"pass it again with --data {identity[5:]}")
    ds = text_dataset(desc["texts"], identity, bundle) if desc.get("texts") else bound_dataset(identity, inputs)
    if desc.get("sha256") and ds.sha256() != desc["sha256"]:
        raise DataError(f"evaluation data {identity!r} changed since the bundle was built (sha256 differs)",
                        hint="pass the original data with --data FILE.npz")
    return ds


def _check_data(base: dict, bundle: Bundle, data) -> tuple[Dataset, bool, list[str]]:
    inputs = _inputs(bundle)
    want = base["data"]
    notes: list[str] = []
    if data is not None:
        ds = load_file(data, bundle, inputs)
        if ds.sha256() != want["sha256"]:
            notes.append(f"--data {Path(data).name} differs from the baseline's data ({want['identity']}); "
                         "baseline and candidate are compared unpaired (weaker test)")
            if base["metric"]["name"] in ("top1_agreement", "confident_agreement", "retrieval_agreement"):
                raise DataError("the baseline scored agreement with its own predictions, which needs the same data",
                                hint="check on the baseline's data, or record a baseline on labelled data")
            return ds, False, notes
        return ds, True, notes
    stored = want.get("path")
    if stored and Path(stored).is_file():
        ds = load_file(stored, bundle, inputs)
    elif want["identity"].startswith("file:"):
        raise DataError(f"the baseline was recorded on {want['identity'][5:]!r}, which is not at {stored!r} any more",
                        hint="pass the same data with --data FILE.npz")
    elif want.get("texts"):
        ds = text_dataset(want["texts"], want["identity"], bundle)
    else:
        ds = bound_dataset(want["identity"], inputs)
    if ds.sha256() != want["sha256"]:
        raise DataError(f"evaluation data {want['identity']!r} differ from the baseline's "
                        f"(sha256 {ds.sha256()[:12]} != {want['sha256'][:12]})",
                        hint="pass --data FILE.npz to check on other data (unpaired), or record a new baseline")
    return ds, True, notes
