"""Accuracy regression baselines and the `check` gate (Python API behind `edgecompile baseline|check`).

    baseline = make_baseline("build/digits-cpu")           # per-sample results, data sha256, latency
    save_baseline(baseline, "baseline.json")
    result = check("build/digits-cpu", "baseline.json", max_drop=1.0)
    result.ok, result.failures

Torch-free: the evaluation data come from a `.npz` (`data=`) or from a built-in model's bound
dataset (scikit-learn for digits), and the bundle runs through `edgecompile.runtime.load`.
The statistics live in `edgecompile.verify.gate`; rendering (table, JUnit, annotations) in `edgecompile.verify.verdict`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from edgecompile.verify import gate
from edgecompile.runtime.bundle import Bundle, read_json
from edgecompile.data import Dataset, TensorSpec, load_npz, parse_spec, validate_dataset
from edgecompile.errors import ConfigError, DataError
from edgecompile.verify.latency_check import _check_latency, _latency

BASELINE_KIND = "edgecompile-baseline"
BASELINE_SCHEMA = 1
DEFAULT_MAX_DROP = 1.0


# -- evaluation data -------------------------------------------------------------------------

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


def bundle_dataset(bundle: Bundle, data: str | Path | None = None) -> Dataset:
    """The data a bundle was evaluated on (its manifest), or `data` (a `.npz`) when given."""
    inputs = _inputs(bundle)
    if data is not None:
        return load_npz(data, inputs)
    desc = (bundle.manifest.get("data") or {}).get("evaluation")
    if not desc:
        raise DataError(f"{bundle.path}: the bundle records no evaluation data", hint="pass --data FILE.npz")
    identity = desc["identity"]
    if identity.startswith("file:"):
        raise DataError(f"{bundle.path}: the bundle was evaluated on {identity[5:]!r}, a file not kept in the bundle",
                        hint=f"pass it again with --data {identity[5:]}")
    ds = bound_dataset(identity, inputs)
    if desc.get("sha256") and ds.sha256() != desc["sha256"]:
        raise DataError(f"evaluation data {identity!r} changed since the bundle was built (sha256 differs)",
                        hint="pass the original data with --data FILE.npz")
    return ds


# -- per-sample results ----------------------------------------------------------------------

def _classifier(manifest: dict) -> bool:
    metric = manifest.get("metric", "top1")
    if metric in ("top1", "top1_agreement"):
        return True
    return metric not in ("mse", "mae")


def outputs_of(runner, ds: Dataset, batch_size: int = 64) -> np.ndarray:
    from edgecompile.verify.evaluate import run_outputs

    return run_outputs(runner, ds, batch_size)


def fingerprints(out: np.ndarray, classifier: bool) -> dict:
    """Small, comparable summaries of the raw outputs (exact match after rounding, statistics)."""
    a = np.asarray(out)
    fp = {
        "shape": list(a.shape),
        "rounded_sha256": hashlib.sha256(np.round(a.astype(np.float64), 3).astype(np.float32).tobytes()).hexdigest(),
        "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
    }
    if classifier:
        fp["argmax_sha256"] = hashlib.sha256(a.reshape(len(a), -1).argmax(1).astype(np.int64).tobytes()).hexdigest()
    return fp


def per_sample_results(out: np.ndarray, ds: Dataset, metric_name: str, classifier: bool,
                       predictions: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    """(metric actually used, per-sample scores). Without labels a classifier is scored on
    agreement with `predictions` (the baseline's), i.e. every changed prediction counts as a loss."""
    from edgecompile.verify.metrics import METRICS, get_metric

    if ds.labels is not None:
        metric = get_metric(metric_name)
        if not metric.needs_labels:
            metric = METRICS["top1"] if classifier else METRICS["mse"]
        return metric.name, metric.per_sample(out, ds.labels)
    if not classifier:
        raise DataError(f"evaluation data {ds.identity!r} have no labels; an error metric needs them",
                        hint="add a `labels` array to the .npz")
    mine = out.reshape(len(out), -1).argmax(1)
    preds = mine if predictions is None else np.asarray(predictions).reshape(-1)
    return "top1_agreement", (mine == preds).astype(np.float64)


def task_accuracy(runner, bundle: Bundle, data: str | Path | None = None) -> dict:
    """The task metric of `runner` (local or on a board) on the bundle's evaluation data, or `data`."""
    from edgecompile.verify.metrics import METRICS

    ds = bundle_dataset(bundle, data)
    out = outputs_of(runner, ds)
    name, scores = per_sample_results(out, ds, bundle.manifest.get("metric", "top1"), _classifier(bundle.manifest))
    return {"metric": name, "value": float(scores.mean()), "n": int(len(scores)),
            "higher_is_better": METRICS[name].higher_is_better, "data": ds.identity,
            "predictions_sha256": fingerprints(out, _classifier(bundle.manifest)).get("argmax_sha256")}


def _first(ds: Dataset) -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in ds.inputs.items()}


# -- baseline ---------------------------------------------------------------------------------

def make_baseline(bundle_dir: str | Path, *, data: str | Path | None = None, measure_latency: bool = True,
                  threads: int | None = None) -> dict:
    """Evaluate a bundle and record what a later `check` compares against."""
    from edgecompile import __version__
    from edgecompile.runtime.machine import machine_info
    from edgecompile.verify.metrics import METRICS, bootstrap_ci
    from edgecompile.runtime import load

    bundle = Bundle.open(bundle_dir)
    ds = bundle_dataset(bundle, data)
    classifier = _classifier(bundle.manifest)
    with load(bundle.path, threads=threads) as runner:
        out = outputs_of(runner, ds)
        lat = _latency(runner, _first(ds)) if measure_latency else None
    metric_name, scores = per_sample_results(out, ds, bundle.manifest.get("metric", "top1"), classifier)
    metric = METRICS[metric_name]
    binary = bool(np.isin(scores, (0.0, 1.0)).all()) and metric.kind == "percentage"
    return {
        "kind": BASELINE_KIND,
        "schema_version": BASELINE_SCHEMA,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "created_by": f"edgecompile {__version__}",
        "bundle": {"path": str(bundle.path.resolve()), "bundle_id": bundle.bundle_id,
                   "model": bundle.manifest.get("model", {}).get("name"), "target": bundle.manifest.get("target"),
                   "backend": bundle.backend, "precision": bundle.manifest.get("precision")},
        "data": {**ds.describe(), "path": str(Path(data).resolve()) if data is not None else None},
        "metric": {"name": metric.name, "kind": metric.kind, "higher_is_better": metric.higher_is_better,
                   "binary": binary, "classifier": classifier, "value": float(scores.mean()), "n": len(scores),
                   "ci95": bootstrap_ci(scores)},
        "per_sample": [int(v) for v in scores] if binary else [float(v) for v in scores],
        "predictions": out.reshape(len(out), -1).argmax(1).tolist() if classifier else None,
        "fingerprints": fingerprints(out, classifier),
        "latency_ms": lat,
        "machine": machine_info().get("cpu", {}).get("model"),
    }


def save_baseline(baseline: dict, path: str | Path) -> Path:
    from edgecompile.compiler.writer import write_json

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, baseline)
    except OSError as exc:
        raise ConfigError(
            f"cannot write baseline {str(path)!r}: {exc.strerror}", hint="choose a writable -o path"
        ) from None
    return path


def load_baseline(path: str | Path | dict) -> dict:
    """Read and validate a baseline file (malformed -> ConfigError, exit 2)."""
    if isinstance(path, dict):
        b, where = path, "baseline"
    else:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"baseline {where!r} does not exist",
                              hint="record one with `edgecompile baseline DIR -o baseline.json`")
        b = read_json(p, "baseline", ConfigError, hint="record it again with `edgecompile baseline`")
    if not isinstance(b, dict) or b.get("kind") != BASELINE_KIND:
        raise ConfigError(
            f"{where}: not an edgecompile baseline", hint="record one with `edgecompile baseline DIR -o FILE`"
        )
    if b.get("schema_version") != BASELINE_SCHEMA:
        raise ConfigError(f"{where}: baseline schema_version {b.get('schema_version')!r} is not supported "
                          f"(this version reads {BASELINE_SCHEMA})", hint="record the baseline again")
    for key in ("bundle", "data", "metric", "per_sample"):
        if key not in b:
            raise ConfigError(f"{where}: baseline lacks {key!r}", hint="record the baseline again")
    if len(b["per_sample"]) != b["data"].get("n"):
        raise ConfigError(f"{where}: baseline has {len(b['per_sample'])} per-sample results for "
                          f"{b['data'].get('n')} samples", hint="record the baseline again")
    return b


# -- check --------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    """The verdict of `check`: accuracy test, optional latency test, reasons for every failure."""

    bundle: str
    bundle_id: str
    baseline: dict
    metric: str
    kind: str
    higher_is_better: bool
    baseline_value: float
    candidate_value: float
    n: int
    paired: bool
    max_drop: float
    accuracy: gate.TestResult
    latency: dict | None = None
    fingerprints_match: bool | None = None
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    alpha: float = gate.ALPHA

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def delta(self) -> float:
        return self.candidate_value - self.baseline_value

    @property
    def accuracy_failed(self) -> bool:
        return self.accuracy.rejects(self.alpha)

    @property
    def latency_failed(self) -> bool:
        return bool(self.latency and self.latency.get("gated") and self.latency["failed"])

    def to_dict(self) -> dict:
        a = self.accuracy
        return {
            "ok": self.ok, "bundle": self.bundle, "bundle_id": self.bundle_id,
            "baseline": {"bundle_id": self.baseline["bundle"].get("bundle_id"),
                         "bundle": self.baseline["bundle"].get("path"), "created_at": self.baseline.get("created_at")},
            "accuracy": {"metric": self.metric, "kind": self.kind, "higher_is_better": self.higher_is_better,
                         "baseline": self.baseline_value, "candidate": self.candidate_value, "delta": self.delta,
                         "drop": a.drop, "max_drop": self.max_drop, "margin": a.margin,
                         "ci95_drop": list(a.ci), "p_value": a.p_value, "alpha": self.alpha, "test": a.method,
                         "n": self.n, "paired": self.paired, "failed": self.accuracy_failed, **a.details},
            "latency": self.latency, "fingerprints_match": self.fingerprints_match,
            "notes": self.notes, "failures": self.failures, "seconds": self.seconds,
        }


def check(bundle_dir: str | Path, baseline: str | Path | dict, *, max_drop: float = DEFAULT_MAX_DROP,
          max_latency_ratio: float | None = None, data: str | Path | None = None, alpha: float = gate.ALPHA,
          threads: int | None = None, latency_rounds: int = 15, allow_other_machine: bool = False) -> CheckResult:
    """Re-evaluate a bundle on the baseline's data and test for a regression (see edgecompile.verify.gate).

    Raises DataError (exit 2) when the data differ from the baseline's and `data` was not given;
    returns a CheckResult whose `failures` are non-empty when a gate failed (the CLI exits 3)."""
    from edgecompile.runtime import load

    t0 = time.perf_counter()
    if max_drop < 0:
        raise ConfigError(f"--max-drop must be >= 0, got {max_drop}", hint="e.g. --max-drop 1.0 (points)")
    if max_latency_ratio is not None and max_latency_ratio <= 0:
        raise ConfigError(f"--max-latency-ratio must be > 0, got {max_latency_ratio}", hint="e.g. 1.2")
    from edgecompile.runtime.machine import machine_info

    base = load_baseline(baseline)
    here = machine_info().get("cpu", {}).get("model")
    if max_latency_ratio is not None and base.get("machine") != here and not allow_other_machine:
        raise ConfigError(f"the baseline's latency was measured on {base.get('machine') or 'an unrecorded CPU'!r}, "
                          f"this machine is {here!r}: p50s from different CPUs are not comparable",
                          hint="record the baseline on this machine, or pass --allow-other-machine to compare anyway")
    bundle = Bundle.open(bundle_dir)
    ds, paired, notes = _check_data(base, bundle, data)
    bm = base["metric"]
    classifier = bool(bm.get("classifier", True))
    preds = np.asarray(base["predictions"], np.int64) if base.get("predictions") is not None and paired else None
    with load(bundle.path, threads=threads) as runner:
        out = outputs_of(runner, ds)
        metric_name, scores = per_sample_results(out, ds, bm["name"], classifier, preds)
        if metric_name != bm["name"]:
            raise DataError(f"the data give metric {metric_name}, the baseline used {bm['name']}",
                            hint="check on data of the same kind (with or without labels) as the baseline")
        latency = _check_latency(base, bundle, runner, _first(ds), max_latency_ratio, threads, latency_rounds, alpha)
    base_scores = np.asarray(base["per_sample"], np.float64)
    margin = max_drop / 100.0          # pt -> fraction; relative % -> fraction of the baseline mean
    relative = bm["kind"] == "error"
    binary = bool(bm.get("binary"))
    if paired:
        if binary:
            test = gate.paired_binary(base_scores, scores, margin)
        else:
            test = gate.paired_continuous(base_scores, scores, higher_is_better=bm["higher_is_better"],
                                          margin=margin, relative=relative)
    else:
        test = gate.unpaired(base_scores, scores, binary=binary, higher_is_better=bm["higher_is_better"],
                             margin=margin, relative=relative)
    fp_match = None
    if paired:
        fp_match = fingerprints(out, classifier).get("rounded_sha256") == base.get("fingerprints", {}).get(
            "rounded_sha256"
        )
    res = CheckResult(str(bundle.path), bundle.bundle_id, base, bm["name"], bm["kind"], bm["higher_is_better"],
                      float(base_scores.mean()), float(scores.mean()), len(scores), paired, max_drop, test,
                      latency, fp_match, notes, alpha=alpha)
    if res.accuracy_failed:
        res.failures.append(_accuracy_reason(res))
    if res.latency_failed:
        res.failures.append(latency["reason"])
    res.seconds = time.perf_counter() - t0
    return res


def _check_data(base: dict, bundle: Bundle, data) -> tuple[Dataset, bool, list[str]]:
    inputs = _inputs(bundle)
    want = base["data"]
    notes: list[str] = []
    if data is not None:
        ds = load_npz(data, inputs)
        if ds.sha256() != want["sha256"]:
            notes.append(f"--data {Path(data).name} differs from the baseline's data ({want['identity']}); "
                         "baseline and candidate are compared unpaired (weaker test)")
            if base["metric"]["name"] == "top1_agreement":
                raise DataError("the baseline scored agreement with its own predictions, which needs the same data",
                                hint="check on the baseline's data, or record a baseline on labelled data")
            return ds, False, notes
        return ds, True, notes
    stored = want.get("path")
    if stored and Path(stored).is_file():
        ds = load_npz(stored, inputs)
    elif want["identity"].startswith("file:"):
        raise DataError(f"the baseline was recorded on {want['identity'][5:]!r}, which is not at {stored!r} any more",
                        hint="pass the same data with --data FILE.npz")
    else:
        ds = bound_dataset(want["identity"], inputs)
    if ds.sha256() != want["sha256"]:
        raise DataError(f"evaluation data {want['identity']!r} differ from the baseline's "
                        f"(sha256 {ds.sha256()[:12]} != {want['sha256'][:12]})",
                        hint="pass --data FILE.npz to check on other data (unpaired), or record a new baseline")
    return ds, True, notes


def _accuracy_reason(res: CheckResult) -> str:
    a = res.accuracy
    unit = "% (relative)" if res.kind == "error" else " pt"
    drop = _drop_units(res)
    return (f"accuracy regression: {res.metric} dropped by {drop:.2f}{unit} "
            f"({_fmt_value(res.baseline_value, res.kind)} -> {_fmt_value(res.candidate_value, res.kind)}), "
            f"more than the allowed {res.max_drop:g}{unit}: p = {a.p_value:.2g} < {res.alpha:g} ({a.method})")


def _drop_units(res: CheckResult) -> float:
    """The observed drop in the contract's bound units (pt, or relative % for error metrics)."""
    if res.kind == "error":
        return 100.0 * res.accuracy.drop / max(abs(res.baseline_value), 1e-12)
    return 100.0 * res.accuracy.drop


def _fmt_value(v: float, kind: str) -> str:
    return f"{100 * v:.2f} %" if kind != "error" else f"{v:.4g}"


def dataset_for(baseline: str | Path | dict, bundle_dir: str | Path, data: str | Path | None = None) -> Dataset:
    """The data `check` would evaluate `bundle_dir` on for this baseline (for fixtures and tools)."""
    base = load_baseline(baseline)
    return _check_data(base, Bundle.open(bundle_dir), data)[0]


__all__ = ["make_baseline", "save_baseline", "load_baseline", "check", "CheckResult", "bundle_dataset",
           "bound_dataset", "dataset_for", "DEFAULT_MAX_DROP"]
