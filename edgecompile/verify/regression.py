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
from edgecompile.data import Dataset
from edgecompile.errors import ConfigError, DataError
from edgecompile.verify.gate_data import _check_data, _inputs, bound_dataset, bundle_dataset  # noqa: F401
from edgecompile.verify.agreement import gate_samples, is_classifier_output
from edgecompile.verify.latency_check import _check_latency, _latency

BASELINE_KIND = "edgecompile-baseline"
BASELINE_SCHEMA = 1
DEFAULT_MAX_DROP = 1.0


# -- per-sample results ----------------------------------------------------------------------

def _classifier(manifest: dict) -> bool:
    metric = manifest.get("metric", "top1")
    if metric in ("top1", "top1_agreement", "retrieval_agreement"):
        return True
    return metric not in ("mse", "mae", "map", "map50")


def _predictions(out: np.ndarray, metric_name: str) -> np.ndarray:
    """What agreement is scored on: the top-1 class, or for text embeddings (retrieval_agreement)
    each sentence's nearest neighbour in the evaluation corpus."""
    if metric_name == "retrieval_agreement":
        from edgecompile.verify.textmetrics import nearest_neighbours

        return nearest_neighbours(out)
    from edgecompile.verify.metrics import decisions

    return decisions(out)


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
        from edgecompile.verify.metrics import decisions

        fp["argmax_sha256"] = hashlib.sha256(decisions(a).astype(np.int64).tobytes()).hexdigest()
    return fp


def per_sample_results(out: np.ndarray, ds: Dataset, metric_name: str, classifier: bool,
                       predictions: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    """(metric actually used, per-sample scores). Without labels a classifier is scored on
    agreement with `predictions` (the baseline's), i.e. every changed prediction counts as a loss."""
    from edgecompile.verify.metrics import METRICS, get_metric

    if ds.labels is not None and metric_name != "retrieval_agreement":
        metric = get_metric(metric_name)
        if not metric.needs_labels:
            metric = METRICS["top1"] if classifier else METRICS["mse"]
        return metric.name, metric.per_sample(out, ds.labels)
    if not classifier:
        raise DataError(f"evaluation data {ds.identity!r} have no labels; an error metric needs them",
                        hint="add a `labels` array to the .npz")
    mine = _predictions(out, metric_name)
    preds = mine if predictions is None else np.asarray(predictions).reshape(-1)
    name = "retrieval_agreement" if metric_name == "retrieval_agreement" else "top1_agreement"
    return name, (mine == preds).astype(np.float64)


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
    return ds.first_feed()


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
    confident = why = None
    with load(bundle.path, threads=threads) as runner:
        out = outputs_of(runner, ds)
        lat = _latency(runner, _first(ds)) if measure_latency else None
    if _dataset_level(bundle.manifest.get("metric")):      # mAP: per-image detections (verify/detection_gate)
        from edgecompile.verify import detection_gate

        metric_name = bundle.manifest["metric"].removesuffix("_agreement")
        if ds.labels is None:          # no boxes: later candidates are scored against these detections
            metric_name += "_agreement"
        value, per_image, ci = detection_gate.baseline_results(out, ds, metric_name)
    else:
        metric_name, scores = per_sample_results(out, ds, bundle.manifest.get("metric", "top1"), classifier)
        if metric_name == "top1_agreement" and is_classifier_output(out):    # bound on confident samples
            metric_name, confident, why = gate_samples(out)                  # (verify/agreement.py)
        kept = scores if confident is None else scores[confident]
        value, per_image, ci = float(kept.mean()), None, bootstrap_ci(kept)
    metric = METRICS[metric_name]
    binary = per_image is None and bool(np.isin(scores, (0.0, 1.0)).all()) and metric.kind == "percentage"
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
                   "binary": binary, "classifier": classifier, "value": value, "ci95": ci,
                   "n": len(ds) if confident is None else len(confident),
                   **({"confident": confident.tolist()} if confident is not None else {}),
                   **({"bound_reason": why} if why else {})},
        "per_sample": per_image if per_image is not None else (
            [int(v) for v in scores] if binary else [float(v) for v in scores]),
        "predictions": _predictions(out, metric_name).tolist() if classifier else None,
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
    if _dataset_level(bm["name"]):
        return _check_dataset_level(bundle, base, ds, paired, notes, max_drop, max_latency_ratio, threads,
                                    latency_rounds, alpha, t0)
    with load(bundle.path, threads=threads) as runner:
        out = outputs_of(runner, ds)
        metric_name, scores = per_sample_results(out, ds, bm["name"], classifier, preds)
        if bm["name"] == "confident_agreement" and metric_name == "top1_agreement":
            metric_name = bm["name"]            # agreement restricted to the baseline's confident samples
        if metric_name != bm["name"]:
            raise DataError(f"the data give metric {metric_name}, the baseline used {bm['name']}",
                            hint="check on data of the same kind (with or without labels) as the baseline")
        latency = _check_latency(base, bundle, runner, _first(ds), max_latency_ratio, threads, latency_rounds, alpha)
    base_scores = np.asarray(base["per_sample"], np.float64)
    if bm.get("confident") is not None:     # confident_agreement: the samples the baseline was confident on
        idx = np.asarray(bm["confident"], np.int64)
        base_scores, scores = base_scores[idx], scores[idx]
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


def _dataset_level(metric: str | None) -> bool:
    from edgecompile.verify.metrics import METRICS

    return metric in METRICS and METRICS[metric].dataset_level


def _check_dataset_level(bundle, base, ds, paired, notes, max_drop, max_latency_ratio, threads, latency_rounds,
                         alpha, t0) -> CheckResult:
    """`check` for mAP (issue 25): a paired bootstrap over images on both sides' detections."""
    from edgecompile.runtime import load
    from edgecompile.verify import detection_gate

    bm = base["metric"]
    if not paired:
        raise DataError("a detection baseline is compared on the same images only",
                        hint="check on the baseline's data (omit --data or pass the same file)")
    with load(bundle.path, threads=threads) as runner:
        out = outputs_of(runner, ds)
        latency = _check_latency(base, bundle, runner, _first(ds), max_latency_ratio, threads, latency_rounds, alpha)
    vb, vc, test = detection_gate.paired_test(base["per_sample"], out, ds, bm["name"], max_drop / 100.0)
    fp_match = fingerprints(out, False).get("rounded_sha256") == base.get("fingerprints", {}).get("rounded_sha256")
    res = CheckResult(str(bundle.path), bundle.bundle_id, base, bm["name"], bm["kind"], True, vb, vc, len(ds), True,
                      max_drop, test, latency, fp_match, notes, alpha=alpha)
    if res.accuracy_failed:
        res.failures.append(_accuracy_reason(res))
    if res.latency_failed:
        res.failures.append(latency["reason"])
    res.seconds = time.perf_counter() - t0
    return res


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
