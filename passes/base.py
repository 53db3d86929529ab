"""The pass framework.

Graph passes are onnx_ir passes: a class that declares itself in place (`InPlacePass`) or functional
(`FunctionalPass`), takes what it needs in `__init__`, and implements only `call(model) -> PassResult`.
`GraphPass` adds the two things the report needs: a `name` and `options()`.

Measurement is not the manager's business: instruments plug into `PassManager` from outside, the way
TVM's PassInstrument does (`run_before_pass` / `run_after_pass`), and each fills in its part of the
pass's `PassRecord` (wall time, node count and serialized size, task metric).

Module passes (prune, distill, QAT) work on the torch module before export: `edgecompile.passes.module`.
Passes never print; they return notes, which the report shows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import onnx_ir as ir

from edgecompile.errors import EdgeCompileError, PassError


@dataclass
class PassResult(ir.passes.PassResult):
    """onnx_ir's result (model, modified) plus notes for the report."""

    notes: dict = field(default_factory=dict)


class GraphPass:
    """Mixin for our graph passes: a report name and the options it ran with."""

    name = ""

    def options(self) -> dict:
        return {}


class FunctionalGraphPass(GraphPass, ir.passes.FunctionalPass):
    """A graph pass that returns a new model and leaves its input untouched."""


class InPlaceGraphPass(GraphPass, ir.passes.InPlacePass):
    """A graph pass that changes the model it is given."""


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


def add_initializer(graph: ir.Graph, name: str, array) -> ir.Value:
    """Register the numpy `array` as a new initializer of `graph` named `name` (`name_1`, `name_2`, ...
    when that is taken) and return its value."""
    i, base = 1, name
    while name in graph.initializers:
        name, i = f"{base}_{i}", i + 1
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def for_quantizers(model: ir.Model) -> ir.Model:
    """A copy of `model` as ONNX Runtime's quantizers need it: at opset 13 or later (per-channel
    Q/DQ's `axis` came with 13; older exports are converted by onnx's version converter), tensor-valued
    Constant nodes as initializers (a quantizer takes a Constant node's output for an activation with no
    calibrated range, an initializer for a weight), and every node named (nodes are excluded by name)."""
    from onnx_ir.passes.common import LiftConstantsToInitializersPass, NameFixPass

    if model.opset_imports.get("", 13) < 13:
        import onnx.version_converter

        try:
            model = ir.from_proto(onnx.version_converter.convert_version(ir.to_proto(model), 13))
        except Exception as exc:      # the converter has no adapter for one of the graph's ops
            from edgecompile.errors import PassError, first_line

            raise PassError(f"INT8 needs opset 13 or later and converting this opset-{model.opset_imports['']} "
                            f"graph failed: {first_line(exc, 200)}",
                            hint="re-export the model at opset 13 or later (torch.onnx.export(..., opset_version=17))"
                            ) from None
    else:
        model = model.clone()
    model = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model).model
    return NameFixPass()(model).model


def graph_stats(model) -> tuple[int, int]:
    """(node count, serialized size in bytes) of an onnx_ir model."""
    proto = ir.to_proto(model)
    return len(proto.graph.node), proto.ByteSize()


# -- instruments ------------------------------------------------------------------------------------

class PassInstrument:
    """Hooks around every pass the manager runs; each fills in fields of the pass's record."""

    def run_before_pass(self, p: GraphPass, model) -> None:
        pass

    def run_after_pass(self, p: GraphPass, result: PassResult, record: PassRecord) -> None:
        pass


class Timing(PassInstrument):
    def run_before_pass(self, p, model):
        self._t0 = time.perf_counter()

    def run_after_pass(self, p, result, record):
        record.seconds = time.perf_counter() - self._t0


class GraphSize(PassInstrument):
    """Node count and serialized size before and after (recomputed only when the pass changed the graph)."""

    def __init__(self):
        self._last: tuple[int, int] | None = None

    def run_before_pass(self, p, model):
        if self._last is None:
            self._last = graph_stats(model)

    def run_after_pass(self, p, result, record):
        before = self._last
        after = graph_stats(result.model) if result.modified else before
        record.nodes_before, record.size_before = before
        record.nodes_after, record.size_after = after
        self._last = after


class TaskMetric(PassInstrument):
    """The task metric (an `onnx_ir.Model -> float` evaluator) before and after each pass that changed the graph."""

    def __init__(self, evaluator: Callable[[Any], float]):
        self.evaluator = evaluator
        self._last: float | None = None
        self._measured = False

    def run_before_pass(self, p, model):
        if not self._measured:
            self._last = self.evaluator(model)
            self._measured = True

    def run_after_pass(self, p, result, record):
        record.metric_before = self._last
        if result.modified:
            self._last = self.evaluator(result.model)
        record.metric_after = self._last


def default_instruments(evaluator: Callable[[Any], float] | None = None) -> list[PassInstrument]:
    return [Timing(), GraphSize(), *([TaskMetric(evaluator)] if evaluator is not None else [])]


class PassManager(ir.passes.PassManager):
    """onnx_ir's manager with instruments: runs the passes in order, one record per pass in `records`.
    An unexpected exception in a pass becomes a PassError naming it."""

    def __init__(self, passes: Sequence[GraphPass], instruments: Sequence[PassInstrument] | None = None):
        super().__init__(list(passes))
        self.instruments = list(default_instruments() if instruments is None else instruments)
        self.records: list[PassRecord] = []

    def call(self, model) -> PassResult:
        modified = False
        for p in self.passes:
            for inst in self.instruments:
                inst.run_before_pass(p, model)
            result = _invoke(p, model, "pass")
            record = PassRecord(p.name, "graph", 0.0, result.modified, p.options(),
                                notes=dict(getattr(result, "notes", {}) or {}))
            for inst in self.instruments:
                inst.run_after_pass(p, result, record)
            self.records.append(record)
            model = result.model
            modified = modified or result.modified
        return PassResult(model, modified)

    def run(self, model):
        """The model after every pass (records in `self.records`)."""
        return self(model).model


def _invoke(p, subject, what: str, *args):
    """Run one pass; an unexpected exception becomes a PassError naming the pass."""
    try:
        return p(subject, *args)
    except EdgeCompileError:
        raise
    except Exception as exc:
        raise PassError(f"{what} {p.name!r} failed: {exc.__class__.__name__}: {exc}",
                        hint="rerun with --debug for the traceback, or disable the pass") from exc


# -- module passes (torch) -----------------------------------------------------------------------------

@dataclass
class ModuleResult:
    module: Any                # torch.nn.Module
    modified: bool
    notes: dict = field(default_factory=dict)


@dataclass
class PassContext:
    """What a module pass may use (built once per build by the pipeline)."""

    config: Any                                 # edgecompile.compiler.config.Config
    profile: Any                                # targets.profiles.DeviceProfile
    backend: str
    source: Any                                 # edgecompile.source.ModelSource
    calibration: Any = None                     # edgecompile.data.Dataset | None
    evaluation: Any = None                      # edgecompile.data.Dataset | None
    train: Any = None                           # edgecompile.data.Dataset | None (module passes)
    evaluator: Callable[[Any], float] | None = None   # onnx_ir.Model -> task metric value
    cache: Any = None                           # pathlib.Path | None
    progress: Any = None                        # edgecompile.progress.Progress
    options: dict = field(default_factory=dict)  # Python-API-only extras (e.g. finetune=callable)
    module_records: list = field(default_factory=list)   # records of the module passes that ran


class ModulePass:
    """Base of prune / distill / QAT: `__call__(module, ctx) -> ModuleResult` on the torch module."""

    name = ""

    def options(self) -> dict:
        return {}

    def __call__(self, module, ctx: PassContext) -> ModuleResult:
        raise NotImplementedError


def run_module_passes(passes: Sequence[ModulePass], module, ctx: PassContext, records: list[PassRecord]):
    for p in passes:
        t0 = time.perf_counter()
        result = _invoke(p, module, "module pass", ctx)
        module = result.module
        records.append(PassRecord(p.name, "module", time.perf_counter() - t0, result.modified,
                                  p.options(), notes=result.notes))
    return module
