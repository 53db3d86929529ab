"""The pass framework: graph passes on onnx_ir models, module passes on torch modules.

A pass is a small object with a `name` and `__call__(model, ctx) -> PassResult`. Passes never
print; they return notes, which the PassManager records together with its instruments
(wall time, node count and serialized size before/after, and the task-metric delta where an
evaluator is available). The report shows these records.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from edgecompile.errors import EdgeCompileError, PassError


@dataclass
class PassResult:
    model: Any                 # onnx_ir.Model
    modified: bool
    notes: dict = field(default_factory=dict)


@dataclass
class ModuleResult:
    module: Any                # torch.nn.Module
    modified: bool
    notes: dict = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass may use. Built once per build by the pipeline."""

    config: Any                                 # edgecompile.compiler.config.Config
    profile: Any                                # targets.profiles.DeviceProfile
    backend: str
    source: Any                                 # edgecompile.source.ModelSource
    calibration: Any = None                     # edgecompile.data.Dataset | None
    evaluation: Any = None                      # edgecompile.data.Dataset | None
    train: Any = None                           # edgecompile.data.Dataset | None (module passes)
    evaluator: Callable[[Any], float] | None = None   # onnx_ir.Model -> task metric value
    cache: Path | None = None
    progress: Any = None                        # edgecompile.progress.Progress
    options: dict = field(default_factory=dict) # Python-API-only extras (e.g. finetune=callable)
    module_records: list = field(default_factory=list)   # records of the module passes that ran (graph stages read them)


class Pass(Protocol):
    name: str

    def __call__(self, model, ctx: PassContext) -> PassResult: ...


class ModulePass(Protocol):
    name: str

    def __call__(self, module, ctx: PassContext) -> ModuleResult: ...


@dataclass
class PassRecord:
    name: str
    kind: str                  # "graph" | "module"
    seconds: float
    modified: bool
    options: dict
    nodes_before: int | None = None
    nodes_after: int | None = None
    size_before: int | None = None
    size_after: int | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        if self.metric_before is not None and self.metric_after is not None:
            d["metric_delta"] = self.metric_after - self.metric_before
        return d


def graph_stats(model) -> tuple[int, int]:
    """(node count, serialized size in bytes) of an onnx_ir model."""
    import onnx_ir as ir

    proto = ir.to_proto(model)
    return len(proto.graph.node), proto.ByteSize()


def pass_options(p) -> dict:
    opts = getattr(p, "options", None)
    if callable(opts):
        return opts()
    return dict(opts) if isinstance(opts, dict) else {}


def _invoke(p, subject, ctx: PassContext, what: str):
    """Run one pass; an unexpected exception becomes a PassError naming the pass."""
    try:
        return p(subject, ctx)
    except EdgeCompileError:
        raise
    except Exception as exc:
        raise PassError(f"{what} {p.name!r} failed: {exc.__class__.__name__}: {exc}",
                        hint="rerun with --debug for the traceback, or disable the pass") from exc


class PassManager:
    """Runs graph passes in order with instruments; a failing pass becomes a PassError naming it."""

    def __init__(self, passes: Sequence[Pass], measure_accuracy: bool = True):
        self.passes = list(passes)
        self.measure_accuracy = measure_accuracy
        self.records: list[PassRecord] = []

    def run(self, model, ctx: PassContext):
        evaluator = ctx.evaluator if self.measure_accuracy else None
        metric = evaluator(model) if (evaluator and self.passes) else None
        nodes, size = graph_stats(model)
        for p in self.passes:
            t0 = time.perf_counter()
            result = _invoke(p, model, ctx, "pass")
            seconds = time.perf_counter() - t0
            model = result.model
            n2, s2 = graph_stats(model) if result.modified else (nodes, size)
            m2 = evaluator(model) if (evaluator and result.modified) else metric
            self.records.append(PassRecord(p.name, "graph", seconds, result.modified, pass_options(p),
                                           nodes, n2, size, s2, metric, m2, result.notes))
            nodes, size, metric = n2, s2, m2
        return model


def run_module_passes(passes: Sequence[ModulePass], module, ctx: PassContext, records: list[PassRecord]):
    for p in passes:
        t0 = time.perf_counter()
        result = _invoke(p, module, ctx, "module pass")
        module = result.module
        records.append(PassRecord(p.name, "module", time.perf_counter() - t0, result.modified,
                                  pass_options(p), notes=result.notes))
    return module
