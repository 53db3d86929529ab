"""Accuracy on the task metric: a candidate against the FP32 reference, with a bootstrap CI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from edgecompile.data import Dataset
from edgecompile.verify.metrics import (METRICS, Metric, bootstrap_ci, closeness, get_metric, label_free,
                                       raw_similarity)


@dataclass
class Evaluation:
    metric: str
    higher_is_better: bool
    kind: str
    reference: float
    candidate: float
    n: int
    ci95: list[float]
    similarity: dict
    reference_name: str
    per_sample: np.ndarray = field(repr=False, default=None)
    beside: dict | None = None          # other task metrics reported (not gated), e.g. MAE and R²
    scatter: dict | None = None         # regression: (true, predicted) pairs for the report
    detection: dict | None = None       # detection: per-class AP, reference numbers, example images
    agreement: dict | None = None        # classifiers: edgecompile.verify.agreement (the four numbers)

    @property
    def delta(self) -> float:
        return self.candidate - self.reference

    def to_dict(self) -> dict:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "kind": self.kind,
                "reference": self.reference, "reference_model": self.reference_name,
                "candidate": self.candidate, "delta": self.delta, "ci95": self.ci95, "n": self.n,
                "similarity": self.similarity,
                **({"beside": self.beside} if self.beside else {}),
                **({"scatter": self.scatter} if self.scatter else {}),
                **({"detection": self.detection} if self.detection else {}),
                **({"agreement": self.agreement} if self.agreement else {})}

    def drop(self) -> float:
        """The accuracy loss in the contract's bound units (pt for percentage metrics, % for errors)."""
        if self.kind == "error":
            return 100.0 * (self.candidate - self.reference) / max(abs(self.reference), 1e-12)
        loss = self.reference - self.candidate if self.higher_is_better else self.candidate - self.reference
        return 100.0 * loss


def run_outputs(fn: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]] | object, ds: Dataset,
                batch_size: int = 64, progress=None) -> np.ndarray:
    """First output of `fn` (a Runner or a feeds->outputs callable) over the dataset."""
    outs = []
    batches = ds.batches(batch_size)
    if progress is not None:
        batches = progress.iterate(batches, -(-len(ds) // batch_size), "evaluate")
    for feeds in batches:
        if hasattr(fn, "run"):
            res = fn.run(feeds)
            outs.append(next(iter(res.values())))
        else:
            outs.append(fn(feeds)[0])
    return ds.stack_outputs(outs)


def choose_metric(name: str, ds: Dataset, classifier: bool) -> Metric:
    metric = get_metric(name)
    if ds.labels is not None:       # labelled data: agreement with the reference becomes accuracy on the labels
        return get_metric("top1") if name == "top1_agreement" else metric
    return label_free(metric, classifier, "detection" in (ds.meta or {}))


def compare(candidate_out: np.ndarray, reference_out: np.ndarray, ds: Dataset, metric: Metric,
            reference_name: str) -> Evaluation:
    """Score candidate and reference outputs on `metric` (labels, or the reference for label-free).
    `confident_agreement` falls back to `top1_agreement` when too few reference samples are confident
    (verify/agreement.py); `metric` of the result names the metric actually scored."""
    choice = None
    if metric.name == "confident_agreement":         # which agreement metric is bound here, and why
        from edgecompile.verify.agreement import bound_choice

        choice = bound_choice(reference_out)
        metric = METRICS[choice["bound_metric"]]
    if metric.dataset_level:
        from edgecompile.verify.detection import detection_evaluation

        return detection_evaluation(candidate_out, reference_out, ds, metric, reference_name, Evaluation)
    if metric.needs_labels:
        ref_scores = metric.per_sample(reference_out, ds.labels)
        cand_scores = metric.per_sample(candidate_out, ds.labels)
    else:
        ref_scores = metric.per_sample(reference_out, reference_out)
        cand_scores = metric.per_sample(candidate_out, reference_out)
    from edgecompile.verify.agreement import agreement, is_classifier_output

    similarity = raw_similarity(candidate_out, reference_out)
    if metric.name == "output_closeness":
        similarity = {**similarity, "closeness": closeness(candidate_out, reference_out)}
    ev = Evaluation(metric.name, metric.higher_is_better, metric.kind, float(ref_scores.mean()),
                    float(cand_scores.mean()), len(cand_scores), bootstrap_ci(cand_scores),
                    similarity, reference_name, cand_scores)
    if metric.kind == "error" and metric.needs_labels:
        from edgecompile.verify.task_metrics import regression_beside, regression_scatter

        ev.beside = regression_beside(candidate_out, reference_out, ds.labels)
        ev.scatter = regression_scatter(candidate_out, ds.labels)
    if metric.name in ("top1", "top1_agreement", "confident_agreement") and is_classifier_output(reference_out) \
            and np.shape(candidate_out) == np.shape(reference_out):
        ev.agreement = agreement(candidate_out, reference_out)
        if choice is not None:
            ev.agreement.update(bound_metric=choice["bound_metric"], bound_reason=choice["bound_reason"])
    return ev


def evaluate(runner, ds: Dataset, *, metric: str = "top1", reference: np.ndarray | None = None,
             reference_name: str = "reference", classifier: bool = True) -> Evaluation:
    """Python API: evaluate a Runner on a dataset against reference outputs (or itself)."""
    out = run_outputs(runner, ds)
    ref = out if reference is None else reference
    return compare(out, ref, ds, choose_metric(metric, ds, classifier), reference_name)
