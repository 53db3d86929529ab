"""`--backend auto`: build every candidate backend x precision, measure each through the runtime's
Runner on this machine (same feeds, interleaved rounds), discard those over the accuracy bound,
ship the fastest. Nothing here guesses from CPU names: every decision comes from a measurement.

Pieces the precision-choice work can reuse:
  - `prepare(plan, model, ctx, pairs, progress)` -> [Candidate]   (graph per backend x precision)
  - `measure_candidates(plan, candidates, reference, progress)` -> [Row]   (build, accuracy, latency)
  - `choose(rows, requested, bound, force)` -> (chosen Row, notes)
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompile.compiler.autoboard import board_of, measure_on_board
from edgecompile.errors import EdgeCompileError
from edgecompile.targets.base import Availability, Backend

# Every installed backend of the profile is a candidate; `Backend.auto_candidate(model, plan)` is asked
# with each prepared graph (ok by default; TVM: ok only when its tuning database for that graph and
# target is warm, so auto never starts a long tuning).
BASELINE = ("ort", "fp32")
DEFAULT_MAX_ACCURACY_DROP = 1.0    # contract units (pt for top-1/agreement, relative % for errors)


class AutoBackend(Backend):
    """Stands in for a Backend in the plan while the backend is still to be chosen."""

    name = "auto"

    def __init__(self, profile):
        self.profile = profile

    def backends(self, plan=None) -> list[tuple[str, Any, str]]:
        """[(name, target, why excluded or '')] for every backend the profile lists."""
        from edgecompile.compiler import registry

        out = []
        for name in self.profile.backends:
            if name == "auto":
                continue
            if name not in registry.target_names():
                out.append((name, None, "not installed in this version"))
                continue
            target = registry.get_target(name)
            avail = target.check_available()
            if avail.ok and plan is not None:
                try:
                    target.check_config(plan.config)
                except EdgeCompileError as exc:
                    avail = Availability(False, exc.message)
            out.append((name, target if avail.ok else None, "" if avail.ok else avail.reason))
        return out

    def usable(self, plan=None) -> list[tuple[str, Any]]:
        return [(n, t) for n, t, why in self.backends(plan) if t is not None]

    def check_available(self) -> Availability:
        names = [n for n, _ in self.usable()]
        if not names:
            return Availability(False, "no cpu backend is installed", hint="pip install onnxruntime")
        return Availability(True, "measures " + ", ".join(names))

    @property
    def precisions(self) -> tuple[str, ...]:
        from edgecompile.compiler.precision import supported

        seen: list[str] = []
        for _, target in self.usable():
            seen += [p for p in supported(target) if p not in seen]
        return tuple(seen)


@dataclass
class Candidate:
    backend: str
    precision: str             # the precision the graph was prepared for
    target: Any
    model: Any                 # onnx_ir.Model
    plan: Any                  # the plan with this backend/precision filled in
    records: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)


@dataclass
class Row:
    backend: str
    precision: str
    candidate: Candidate | None = None
    staged: Path | None = None          # a complete staged bundle directory
    artifacts: Any = None
    accuracy: Any = None                # edgecompile.verify.evaluate.Evaluation
    samples: list = field(default_factory=list)   # latency samples, ms
    status: str = "measured"            # measured | chosen | discarded | failed
    reason: str = ""
    board: dict | None = None           # measured on this board (--remote/--key), not on the build host

    @property
    def p50(self) -> float | None:
        return float(np.percentile(self.samples, 50)) if self.samples else None

    @property
    def p99(self) -> float | None:
        return float(np.percentile(self.samples, 99)) if self.samples else None

    def drop(self) -> float | None:
        return None if self.accuracy is None else self.accuracy.drop()

    def to_dict(self, baseline_p50: float | None) -> dict:
        return {"backend": self.backend, "precision": self.precision,
                "p50_ms": self.p50, "p99_ms": self.p99, "runs": len(self.samples),
                "speedup_vs_ort_fp32": (baseline_p50 / self.p50) if baseline_p50 and self.p50 else None,
                "accuracy_delta": None if self.accuracy is None else self.accuracy.delta,
                "accuracy_drop": self.drop(),
                "status": self.status, "reason": self.reason}


# -- the pieces ------------------------------------------------------------------------------------

def pairs_for(plan, usable: list[tuple[str, Any]]) -> list[tuple[str, Any, str]]:
    """(backend, target, precision) to try: the requested precision on every backend (all the
    precisions each backend runs for `auto`), plus every backend at fp32 as baseline/fallback."""
    from edgecompile.compiler.precision import supported

    out = []
    for name, target in usable:
        precisions = supported(target) if plan.precision == "auto" else (plan.precision,)
        for p in dict.fromkeys(("fp32", *precisions)):
            if p == "fp32" or p in supported(target):
                out.append((name, target, p))
    return out


def prepare(plan, model, ctx, pairs, progress) -> tuple[list[Candidate], list[Row]]:
    """Run the precision stage per (backend, precision) on a fresh copy of the graph."""
    import onnx_ir as ir

    from edgecompile.compiler import precision as precision_stage

    candidates, skipped = [], []
    proto = ir.to_proto(model)
    for name, target, prec in pairs:
        sub = dataclasses.replace(plan, backend=name, target=target, precision=prec)
        sub_ctx = dataclasses.replace(ctx, backend=name)
        recs: list = []
        graph = ir.from_proto(copy.deepcopy(proto))
        if plan.source.kind == "hf":        # the backend's own graph passes (plan.graph_passes left them out)
            from edgecompile.compiler.hf import candidate_graph_passes

            graph = candidate_graph_passes(sub, graph, ctx.evaluator, recs)
        m, achieved, notes = precision_stage.apply(sub, graph, sub_ctx, recs, progress)
        if achieved != prec and not (prec == "int8" and achieved == "mixed"):   # mixed: int8 with float layers
            skipped.append(Row(name, prec, status="failed", reason=notes.get("reason", f"gave {achieved}")))
            continue
        worth = target.auto_candidate(m, sub)
        if not worth.ok:
            skipped.append(Row(name, prec, status="failed", reason=f"not measured: {worth.reason}"))
            continue
        candidates.append(Candidate(name, achieved, target, m, sub, recs, notes))
    return candidates, skipped


def measure_candidates(plan, candidates: list[Candidate], reference, progress, *, feeds=None,
                       rows: list[Row] | None = None) -> list[Row]:
    """Compile each candidate into a staged bundle, load it through its Runner, score it on the
    task metric against `reference`, then time all of them in interleaved rounds on the same feeds."""
    from edgecompile.verify.bench import synthetic_feeds
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.compiler.writer import BundleWriter
    from edgecompile.verify.evaluate import choose_metric, compare, run_outputs
    from edgecompile.compiler.manifest import manifest as _manifest
    from edgecompile.targets.base import BuildContext

    rows = rows if rows is not None else []
    runners = []
    root = Path(tempfile.mkdtemp(prefix="edgecompile-auto-"))
    threads = plan.config.build.threads
    for i, cand in enumerate(candidates):
        row = Row(cand.backend, cand.precision, candidate=cand)
        rows.append(row)
        writer = BundleWriter(root / f"{i}-{cand.backend}-{cand.precision}")
        try:
            bctx = BuildContext(
                writer=writer, profile=plan.profile, config=plan.config, precision=cand.precision,
                source=plan.source, calibration=plan.calibration, evaluation=plan.evaluation, threads=threads,
                progress=progress, options=plan.options
            )
            arts = cand.target.compile(cand.model, bctx)
            for rel, role in arts.files.items():
                writer.add_artifact(rel, role)
            manifest = writer.write_manifest(_manifest(cand.plan, cand.model, cand.precision, cand.records, arts, None))
            row.staged, row.artifacts = writer.staging, arts
            if board_of(plan):        # scored and timed on the board, one candidate at a time
                row.board = measure_on_board(plan, row, board_of(plan), reference, progress)
                continue
            runner = cand.target.load(Bundle(writer.staging, manifest), threads=threads)
        except EdgeCompileError as exc:
            row.status, row.reason = "failed", exc.message
            continue
        except Exception as exc:     # an engine refusing one candidate must not end the whole choice
            text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
            row.status, row.reason = "failed", f"{cand.backend} could not build or load it: {text}"
            continue
        try:           # a backend that loads the graph but cannot run it (e.g. a 0-d or string tensor) is dropped
            if plan.evaluation is not None and reference is not None:
                metric = choose_metric(plan.source.metric, plan.evaluation, plan.classifier)
                ref_name = "torch fp32" if plan.source.kind == "torch" else "source onnx (ORT fp32)"
                row.accuracy = compare(run_outputs(runner, plan.evaluation), reference, plan.evaluation, metric,
                                       ref_name)
            else:
                runner.run(feeds if feeds is not None else synthetic_feeds(runner.inputs, 1))
        except Exception as exc:
            runner.close()
            text = getattr(exc, "message", None) or " ".join(str(exc).split())[:200] or exc.__class__.__name__
            row.status, row.reason = "failed", f"{cand.backend} could not run it: {text}"
            continue
        runners.append((row, runner))
    if runners:
        if feeds is None:
            feeds = (plan.evaluation.first_feed() if plan.evaluation is not None
                     else synthetic_feeds(runners[0][1].inputs, 1))
        auto = plan.config.auto
        interleaved_latency([r for _, r in runners], feeds, rounds=auto.rounds, round_seconds=auto.round_seconds,
                            out=[row.samples for row, _ in runners])
    for _, runner in runners:
        runner.close()
    return rows


def interleaved_latency(runners, feeds, *, rounds: int = 7, round_seconds: float = 0.08, warmup: int = 10,
                        out: list[list] | None = None) -> list[list[float]]:
    """Per-run latencies (ms) of each runner, measured A/B/C, B/C/A, ... so that drifts in machine
    load hit every candidate alike."""
    out = out if out is not None else [[] for _ in runners]
    per_run = []
    for r in runners:
        for _ in range(warmup):
            r.run(feeds)
        t0 = time.perf_counter()
        for _ in range(3):
            r.run(feeds)
        per_run.append(max((time.perf_counter() - t0) / 3, 1e-6))
    counts = [int(min(500, max(3, round_seconds / t))) for t in per_run]
    n = len(runners)
    for rnd in range(rounds):
        for j in range(n):
            k = (j + rnd) % n
            r, samples = runners[k], out[k]
            for _ in range(2):           # unrecorded: let the previous engine's spinning threads settle
                r.run(feeds)
            for _ in range(counts[k]):
                t0 = time.perf_counter()
                r.run(feeds)
                samples.append((time.perf_counter() - t0) * 1e3)
    return out


def choose(rows: list[Row], requested: str, bound: float, force: bool = False) -> tuple[Row, dict]:
    """The fastest measured row at the requested precision within the accuracy bound and not slower
    than ORT fp32; else the fastest fp32 row within the bound (a loud fallback). `force` ships the
    fastest row at the requested precision regardless. Marks every row's status/reason."""
    measured = [r for r in rows if r.samples]
    if not measured:
        reasons = "; ".join(f"{r.backend} {r.precision}: {r.reason}" for r in rows)
        raise EdgeCompileError(f"no candidate backend could be built and measured ({reasons})",
                               hint="pin one with --backend ort")
    base = next((r for r in measured if (r.backend, r.precision) == BASELINE), None)
    for r in measured:
        d = r.drop()
        if d is not None and d > bound + 1e-9:
            r.status, r.reason = "discarded", f"over the accuracy bound (drop {d:.2f} > {bound:g})"
        elif base is not None and r is not base and r.p50 > base.p50:
            r.status, r.reason = "discarded", f"slower than ort fp32 ({r.p50 / base.p50:.2f}x its p50)"
    ok = [r for r in measured if r.status == "measured"]
    wanted = [r for r in ok if requested == "auto" or r.precision == requested
              or (requested == "int8" and r.precision == "mixed")]
    notes: dict = {}
    if wanted:
        chosen = min(wanted, key=lambda r: r.p50)
        why = "fastest within the accuracy bound"
    elif force and requested != "auto" and any(r.precision == requested for r in measured):
        chosen = min((r for r in measured if r.precision == requested), key=lambda r: r.p50)
        why = "forced (--force): fastest at the requested precision, bound and speed ignored"
    else:
        fallback = [r for r in ok if r.precision == "fp32"] or ([base] if base else measured)
        chosen = min(fallback, key=lambda r: r.p50)
        why = "fallback: fastest fp32 candidate within the bound"
        tried = [f"{r.backend} {r.precision}: {r.reason or r.status}" for r in rows if r.precision == requested]
        notes["reason"] = (f"no {requested} candidate met the bound and beat ort fp32 ("
                           + ("; ".join(tried) or "none could be built") + ")")
    for r in ok:
        if r is not chosen:
            r.status, r.reason = "discarded", r.reason or (
                f"slower than the chosen one ({r.p50 / chosen.p50:.2f}x)" if chosen.precision == r.precision
                or requested == "auto" else f"precision {r.precision} was not requested (fallback only)")
    chosen.status, chosen.reason = "chosen", why
    return chosen, notes


def fit_notes(rows: list[Row]) -> list[str]:
    """Where a quantized graph helps one runtime and hurts another (speed vs the same backend's fp32)."""
    by = {(r.backend, r.precision): r for r in rows if r.samples}
    gains = {}
    for (b, p), r in by.items():
        if p != "fp32" and (b, "fp32") in by:
            gains.setdefault(p, {})[b] = by[(b, "fp32")].p50 / r.p50
    notes = []
    for p, g in gains.items():
        helps = [b for b, x in g.items() if x > 1.05]
        hurts = [b for b, x in g.items() if x < 0.95]
        if helps and hurts:
            notes.append(f"{p} graph helps {', '.join(f'{b} ({g[b]:.2f}x)' for b in helps)} but hurts "
                         f"{', '.join(f'{b} ({g[b]:.2f}x)' for b in hurts)} vs the same backend at fp32")
    for r in rows:
        if r.accuracy is not None and r.precision != "fp32":
            cos = r.accuracy.similarity.get("cosine")
            if cos is not None and cos < 0.99:
                notes.append(f"{r.backend} {r.precision}: output cosine {cos:.4f} vs the fp32 reference "
                             f"(task-metric drop {r.drop():.2f})")
    return notes


def bound_for(plan) -> float:
    b = plan.config.passes.quantize.max_accuracy_drop
    return DEFAULT_MAX_ACCURACY_DROP if b is None else float(b)


def run(plan, model, ctx, records, progress, reference):
    """The whole choice for the pipeline: returns (chosen plan, graph, precision, precision notes,
    manifest["autochoice"], chosen Row). Call `cleanup(row)` when its files are copied."""
    from edgecompile.runtime.machine import cpu_info

    auto: AutoBackend = plan.target
    usable = auto.usable(plan)
    excluded = {n: why for n, t, why in auto.backends(plan) if t is None}
    pairs = pairs_for(plan, usable)
    with progress.step("auto: prepare", ", ".join(f"{b}/{p}" for b, _, p in pairs)):
        candidates, skipped = prepare(plan, model, ctx, pairs, progress)
    rows: list[Row] = []
    try:
        where = f"on board {board_of(plan)[1]!r}, one by one" if board_of(plan) else "interleaved"
        with progress.step("auto: measure", f"{len(candidates)} candidates, {where}"):
            rows = measure_candidates(plan, candidates, reference, progress, rows=rows)
        rows += skipped
        bound = bound_for(plan)
        chosen, notes = choose(rows, plan.precision, bound, plan.config.build.force)
    except BaseException:
        for r in rows:
            cleanup(r)
        raise
    base = next((r for r in rows if (r.backend, r.precision) == BASELINE and r.samples), None)
    metric_kind = next((r.accuracy.kind for r in rows if r.accuracy is not None), None)
    choice = {
        "requested": {"backend": "auto", "precision": plan.precision},
        "chosen": {"backend": chosen.backend, "precision": chosen.precision, "reason": chosen.reason},
        "bound": bound, "bound_units": "relative %" if metric_kind == "error" else "pt",
        "baseline": "ort fp32" if base else None,
        "candidates": [r.to_dict(base.p50 if base else None) for r in rows],
        "excluded_backends": excluded,
        "fit_notes": fit_notes(rows),
        "measured_on": next((r.board for r in rows if r.board), None) or cpu_info(),
        "rounds": plan.config.auto.rounds,
    }
    for r in rows:
        if r is not chosen:
            cleanup(r)
    records.extend(chosen.candidate.records)
    progress.info(f"auto: chose {chosen.backend} {chosen.precision} ({chosen.reason})")
    shipped = dataclasses.replace(chosen.candidate.plan, precision=plan.precision)   # keep the request
    notes = {**{k: v for k, v in chosen.candidate.notes.items() if k != "reason"}, **notes}  # e.g. quantization
    return shipped, chosen.candidate.model, chosen.precision, notes, choice, chosen


def copy_into(row: Row, writer) -> Any:
    """Copy the chosen candidate's measured artifacts (byte for byte) into the real bundle writer."""
    for rel in row.artifacts.files:
        shutil.copyfile(row.staged / rel, writer.path(rel))
    return row.artifacts


def cleanup(row: Row) -> None:
    """Remove a candidate's staged bundle (and the temporary root once it is empty)."""
    if row.staged is not None:
        root = row.staged.parent
        shutil.rmtree(row.staged, ignore_errors=True)
        row.staged = None
        try:
            root.rmdir()
        except OSError:
            pass

