"""MetaSchedule tuning for the TVM backend: one run over all kernels, records and cost model kept in the cache.

Per graph, `<cache>/tvm/db/<key>/edgecompile.json` (key = sha256(graph hash, TVM target, TVM version)) records
what was asked and done (trials, time, kernels, sessions; builds of one key take turns with a file lock). The
records live in the target's shared database (records.py), keyed by kernel workload: a graph whose kernels
were tuned for another network (same conv shapes) finds their records and does not tune them again.

A graph's trials are the valid records its kernels have in the shared database. A build asking for N trials
tunes only what is missing (N - trials), in one MetaSchedule run over all kernels that have no records yet
(all kernels, when every one has some) with the gradient task scheduler: after one round over the kernels it
gives the next trials to the kernel with the largest expected gain (latency slope x weight). The XGBoost cost
model is loaded from the previous session and saved after this one. `--tune-timeout` is checked after every
measured batch (and stops the builder from building more); a warm database is applied without tuning.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from edgecompile.cache import content_key, subdir
from edgecompile.errors import ConfigError, first_line
from edgecompile.targets.tvm.records import (NEGLIGIBLE_SHARE, SEED_RECORDS, SharedRecords, applicable,
                                             compile_database, copy_record, load_best, save_best, valid_records,
                                             worth_tuning)
from edgecompile.targets.tvm.deadline import (STOPPED_BY_TIMEOUT, cost_model, deadline_builder, deadline_search,
                                              stopped_by_failure, timeout_reached)
from edgecompile.targets.tvm.remote import session_board
from edgecompile.targets.tvm.startup import import_tensor_intrinsics, search_strategy
from edgecompile.targets.tvm.forms import target_forms
from edgecompile.targets.tvm.packed import space_generator
from edgecompile.targets.tvm.workers import (NATIVE_LOG, builder_runner, hide_torch_from_workers, native_stderr_to,
                                             tidy_meta_schedule_logger)

META_FILE = "edgecompile.json"
MIN_PER_ITER, MAX_PER_ITER = 4, 32


# A kernel without records (new to the cache, or all of its candidates failed) counts this many times its
# occurrences in the gradient task scheduler's share: tuned first, without taking the others' whole budget.
FRESH_WEIGHT = 4


def database_key(graph_sha256: str, target: dict, tvm_version: str) -> str:
    # v4: float convolutions packed for AVX-512 FMA (fma.py); v3: integer convolutions packed for VNNI (vnni.py);
    # v2: NHWC convolutions and integer QDQ kernels (build.to_relax); v1 databases described NCHW float kernels
    return content_key("tvm-tuning-db/v4", graph_sha256, target, tvm_version)[:32]


def trials_per_batch(budget: int, kernels: int) -> int:
    """Candidates per batch: about half the budget for the scheduler's first round over the kernels, the rest by
    expected gain. A budget too small for MIN_PER_ITER each, but not for one each, still gives every kernel a
    candidate in the first round (an untuned kernel is ~100x slower: leaving one out costs more than it saves)."""
    per_iter = min(budget, max(MIN_PER_ITER, min(MAX_PER_ITER, budget // (2 * kernels))))
    if kernels <= budget < per_iter * kernels:
        per_iter = budget // kernels
    return per_iter


def trials_in_cache(key: str) -> int:
    """Trials measured so far for the graph `key` (0 when there is none); creates nothing."""
    from edgecompile.cache import cache_dir

    meta = cache_dir() / "tvm" / "db" / key / META_FILE
    try:
        return int(json.loads(meta.read_text()).get("trials", 0))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def open_database(key: str, target: dict, tvm_version: str, *, cache: bool = True):
    """A TuningDatabase for the graph `key` on `target`, locked for the duration of the block. Without the
    cache, a throwaway directory holds both the graph's metadata and its records."""
    if cache:
        path = subdir("tvm", "db", key)
        with open(path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield TuningDatabase(key, path, SharedRecords.in_cache(target, tvm_version), persistent=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    else:
        with tempfile.TemporaryDirectory(prefix="edgecompile-tvm-db-") as tmp:
            (Path(tmp) / "records").mkdir()
            yield TuningDatabase(key, Path(tmp), SharedRecords(Path(tmp) / "records"), persistent=False)


class TuningDatabase:
    def __init__(self, key: str, path: Path, shared: SharedRecords, persistent: bool):
        self.key, self.path, self.shared, self.persistent = key, path, shared, persistent
        self.database = None      # what compile_relax looks kernels up in (set by tune)
        self.best = {}            # kernel name -> its best record whose trace applies (None: untuned)
        meta_file = path / META_FILE
        self.meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.meta.setdefault("key", key)
        self.meta.setdefault("tuning_seconds", 0.0)
        self.meta.setdefault("sessions", [])
        self.meta["tasks"] = {}        # recounted from the shared records on every build
        self.meta["trials"] = 0

    def _save(self) -> None:
        tmp = self.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        os.replace(tmp, self.path / META_FILE)

    def tune(self, mod, target, trials: int, timeout_min: float | None, progress, *, runs_on_host: bool,
             remote: dict | None = None, cross_cc: str | None = None) -> dict:
        """Tune up to `trials` total trials for `mod` on `target` (only what the records lack).
        `remote` = {"tracker": "HOST:PORT", "key": KEY}: measure kernels on that board through TVM's RPC
        tracker (libraries linked with `cross_cc`) instead of on this host.
        Returns the manifest's `tuning` record; `self.database` is then the database to compile with."""
        trials = int(trials or 0)
        if trials < 0:
            raise ConfigError(f"--tune must be >= 0, got {trials}", hint="the number of MetaSchedule trials, e.g. 64")
        if timeout_min is not None and timeout_min <= 0:
            raise ConfigError(f"--tune-timeout must be > 0 minutes, got {timeout_min}")
        import tvm
        from tvm import relax
        from tvm.s_tir import meta_schedule as ms
        from tvm.s_tir.analysis import estimate_tir_flops

        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        tasks = ms.relax_integration.extract_tasks(_fused(mod, target, tvm, relax), target)
        tasks = [t for t in tasks or () if not _scheduled(t.mod)]
        stamp = self.shared.stamp()
        best = load_best(ms, self.path, stamp, tasks) if self.persistent else None
        if best is not None:        # the shared records did not change since this graph's best were taken
            self.best.update(best[0])
            self.meta["tasks"] = best[1]
            found = None
        else:
            found = self._found(ms, tasks, estimate_tir_flops)
        before = self._count()
        # trials asked before for this graph count as done even where a candidate failed to build or run
        attempted = sum(int(x.get("trials_run", 0)) for x in self.meta["sessions"])
        todo = max(0, trials - max(before, attempted))
        session = {"trials_requested": trials, "trials_run": 0, "seconds": 0.0, "stopped": None}
        if todo and not runs_on_host and not remote:
            raise ConfigError(
                f"--tune {trials} needs to measure kernels on the device, and this host cannot run "
                f"{target.attrs.get('mtriple', 'this target')} code",
                hint="tune through a board: --remote HOST:PORT --key KEY (see `edgecompile device`), or build "
                "untuned (drop --tune); a database for this graph and target in the cache is applied automatically",
            )
        if todo and not tasks:
            session["stopped"] = "nothing to tune (no kernels)"
        elif todo:
            if remote:
                session["measured_on"] = session_board(remote)
            if found is None:      # the graph's best records were enough to count; tuning needs them all
                found = self._found(ms, tasks, estimate_tir_flops)
            worth = worth_tuning(tasks, found, self.meta["tasks"])
            if len(worth) < len(tasks) and progress is not None:
                progress.info(f"    {len(tasks) - len(worth)} kernels under {NEGLIGIBLE_SHARE:.0%} of the graph's time "
                              "(their records are applied) are not tuned again")
            session = self._tune(ms, worth, found, target, todo, timeout_min, progress, session, remote, cross_cc)
            self.meta["sessions"].append({**session, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        elif before and progress is not None:
            reused = sum(1 for t in self.meta["tasks"].values() if t["trials"])
            progress.info(f"    tuning records for {reused}/{len(tasks)} kernels ({before} trials) in the cache: "
                          "reused, no re-tuning")
        self.database = compile_database(ms, tasks, self.best)
        if self.persistent and found is not None:
            save_best(ms, self.path, self.shared.stamp(), tasks, self.best, self.meta["tasks"])
        if self.persistent:
            self._save()
        total = self._count()
        record = {
            "database_key": self.key,
            "database": "cache" if self.persistent else "temporary",   # where: the key names it in the cache
            "records": self.shared.path.name if self.persistent else None,   # the target's shared records
            "trials_requested": trials,
            "trials_in_database": total,
            "trials_run_now": session["trials_run"],
            "tuning_seconds_now": round(session["seconds"], 2),
            "tuning_seconds_total": round(float(self.meta["tuning_seconds"]), 2),
            "reused": session["trials_run"] == 0 and total > 0,
            "stopped": session["stopped"],
            "cost_model_warm_start": session.get("cost_model_samples", 0),
            # the board of the latest session that measured on one (this one's is appended above)
            "measured_on": next((s["measured_on"] for s in reversed(self.meta["sessions"]) if s.get("measured_on")),
                                None),
            "tasks": [{"name": name, **info} for name, info in sorted(self.meta["tasks"].items())],
        }
        if total == 0:
            record["untuned_warning"] = (
                "TVM code is untuned (typically ~100x slower than ONNX Runtime on CPU); "
                "build with --tune TRIALS (e.g. 200) where the device can run kernels, or through a board: "
                "--tune TRIALS --remote HOST:PORT --key KEY"
            )
        return record

    def _found(self, ms, tasks, estimate_tir_flops) -> dict:
        """{kernel name: its applicable records in the shared records, best first}, noted in the meta."""
        shared = self.shared.snapshot()
        found = {t.task_name: applicable(t.dispatched[0], valid_records(shared, t.dispatched[0])) for t in tasks}
        for t in tasks:
            self._note_task(t, found[t.task_name], _flops(estimate_tir_flops, t.dispatched[0]))
        return found

    def _note_task(self, task, records, flops) -> None:
        info = self.meta["tasks"].setdefault(task.task_name, {
            "flops": flops, "weight": int(task.weight), "trials": 0, "best_us": None, "error": None})
        info["trials"] = len(records)
        info["best_us"] = _mean_us(records[0]) if records else None
        self.best[task.task_name] = records[0] if records else None

    def _count(self) -> int:
        self.meta["trials"] = sum(int(t["trials"]) for t in self.meta["tasks"].values())
        return self.meta["trials"]

    # -- the tuning run -----------------------------------------------------------------------------------
    def _tune(self, ms, tasks, found, target, budget: int, timeout_min, progress, session: dict,
              remote: dict | None = None, cross_cc: str | None = None) -> dict:
        t0 = time.perf_counter()
        deadline = None if timeout_min is None else t0 + 60.0 * timeout_min
        fresh = {t.task_name for t in tasks if not found[t.task_name]}
        cores = max(1, min(os.cpu_count() or 1, int(target.attrs.get("num-cores", 0) or os.cpu_count() or 1)))
        per_iter = trials_per_batch(budget, len(tasks))
        # the session's database: the records of these kernels (the search starts from their best)
        db = ms.database.MemoryDatabase()
        for t in tasks:
            wl = db.commit_workload(t.dispatched[0])
            for rec in found[t.task_name][:SEED_RECORDS]:
                db.commit_tuning_record(copy_record(ms, rec, wl))
        seeded = len(db.get_all_tuning_records())
        model = cost_model(ms, cores)
        session["cost_model_samples"] = self.shared.load_cost_model(model)
        state = _Progress(progress, [t.task_name for t in tasks], budget, t0, deadline, timeout_min)
        workers_env = hide_torch_from_workers()      # undone, with the stderr redirect below, at the end
        builder, runner = builder_runner(ms, remote, cross_cc, cores)
        if progress is not None:
            where = ""
            if remote:
                board = session.get("measured_on") or {}
                where = f", measured on board {remote['key']!r}" + (" (emulated)" if board.get("emulated") else "")
            known = len(tasks) - len(fresh)
            progress.info(
                f"    tuning {len(tasks)} kernels" + (f" ({known} start from the cache's records; {len(fresh)} "
                                                       f"without records count x{FRESH_WEIGHT})" if known and fresh
                                                       else "")
                + f", {budget} trials, {per_iter} per batch, gradient task scheduler, cost model "
                + (f"warm ({session['cost_model_samples']} samples)" if session["cost_model_samples"] else "cold")
                + f"{where}")
        try:
            if deadline is not None and time.perf_counter() >= deadline:
                state.stopped = timeout_reached(timeout_min, 0)
            else:
                tidy_meta_schedule_logger()
                import_tensor_intrinsics()
                workers_env.enter_context(native_stderr_to(self.path / NATIVE_LOG, progress))
                intrins = [f.intrin for f in target_forms(target)]
                ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    tasks, str(self.path), space=space_generator(ms, intrins) if intrins else "post-order-apply",
                    strategy=deadline_search(ms, search_strategy(ms, per_iter), state), num_threads=cores, seed=0)
                weights = [w * (FRESH_WEIGHT if t.task_name in fresh else 1) for t, w in zip(tasks, weights)]
                callbacks = [*ms.measure_callback.MeasureCallback.create("default"), state.callback(ms)]
                ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(self.path),
                              max_trials_global=budget, num_trials_per_iter=per_iter,
                              builder=deadline_builder(ms, builder, state), runner=runner, database=db,
                              cost_model=model, measure_callbacks=callbacks, task_scheduler="gradient")
        except Exception as exc:     # MetaSchedule failed: keep what it measured, compile the rest untuned
            state.stopped = stopped_by_failure(state, exc)
        finally:
            seconds = time.perf_counter() - t0
            new = db.get_all_tuning_records()[seeded:]
            self.shared.commit(r for r in new if _mean_us(r) is not None and _mean_us(r) < 1e15)   # measured ones
            if state.done:
                self.shared.save_cost_model(model)
            for t in tasks:
                self._note_task(t, valid_records(db, t.dispatched[0]) + found[t.task_name][SEED_RECORDS:], 0)
                info = self.meta["tasks"][t.task_name]
                info["error"] = state.errors.get(t.task_name) if not info["trials"] else None
            session["trials_run"] = state.done
            session["seconds"] = seconds
            session["stopped"] = state.stopped
            self.meta["tuning_seconds"] = float(self.meta["tuning_seconds"]) + seconds
            builder.close()
            del builder, runner
            workers_env.close()
        if session["stopped"] is None and state.done < budget:
            session["stopped"] = f"search space exhausted after {state.done} trials (no new candidates)"
        return session


class _Progress:
    """Counts measured trials, prints a line per batch, ends the run at the deadline."""

    def __init__(self, progress, names, budget, t0, deadline, timeout_min):
        self.progress, self.names, self.budget = progress, names, budget
        self.t0, self.deadline, self.timeout_min = t0, deadline, timeout_min
        self.done, self.sent, self.stopped, self.scheduler, self.end_next = 0, 0, None, None, None
        self.best = [None] * len(names)
        self.errors = {}        # kernel -> the latest build/run error of one of its candidates

    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def before_build(self, n: int) -> None:
        self.sent += n
        if self.progress is not None and not self.done:
            self.progress.info(f"    tune: building {n} candidates ({self.sent}/{self.budget} sent in the first round, "
                               f"{time.perf_counter() - self.t0:.0f} s)")

    def after_batch(self, scheduler, task_id, builder_results, runner_results) -> None:
        built = [b.error_msg != STOPPED_BY_TIMEOUT for b in builder_results]
        n = sum(built)
        self.done += n
        for ok, res in zip(built, runner_results):
            if ok and res.error_msg is not None:
                self.errors[self.names[task_id]] = first_line(res.error_msg)[:200]
            if ok and res.error_msg is None and res.run_secs:
                us = 1e6 * sorted(float(s) for s in res.run_secs)[len(res.run_secs) // 2]
                self.best[task_id] = us if self.best[task_id] is None else min(us, self.best[task_id])
        if self.progress is not None and n:
            best = self.best[task_id]
            status = f"best {best:.1f} us" if best is not None else (
                "no valid candidate yet" + (f" (last error: {self.errors[self.names[task_id]][:80]})"
                                            if self.names[task_id] in self.errors else ""))
            self.progress.info(f"    tune [{self.done:>4}/{self.budget}] {task_id + 1}/{len(self.names)} "
                               f"{self.names[task_id][:48]}: +{n} trials, {status} "
                               f"({time.perf_counter() - self.t0:.0f} s)")
        if self.expired():
            if self.stopped is None:
                self.stopped = timeout_reached(self.timeout_min, self.done)
            # End the other kernels. The one joined stays alive here: the scheduler's clean-up terminates it
            # after this join (twice fails a check), or its main loop hands it out again: the builder ends it.
            for i, task in enumerate(scheduler.tasks_):
                if i != task_id and not task.is_terminated:
                    scheduler.terminate_task(i)
            self.scheduler, self.end_next = scheduler, task_id

    def end_pending(self) -> None:     # called by the builder past the deadline
        if self.end_next is not None and not self.scheduler.tasks_[self.end_next].is_terminated:
            self.scheduler.terminate_task(self.end_next)
        self.end_next = None

    def callback(self, ms):
        from tvm.ir.utils import derived_object

        state = self

        @derived_object
        class ProgressCallback(ms.measure_callback.PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                state.after_batch(task_scheduler, task_id, builder_results, runner_results)

        return ProgressCallback()


def _mean_us(rec) -> float | None:
    secs = [float(s) for s in (rec.run_secs or [])]
    return 1e6 * sum(secs) / len(secs) if secs else None


def _scheduled(mod) -> bool:
    """Whether a task's module is scheduled already (e.g. winograd.py's transforms): nothing to tune."""
    return bool((mod.attrs or {}).get("tirx.is_scheduled", False)) or any(
        bool((f.attrs or {}).get("tirx.is_scheduled", False)) for f in mod.functions.values())


def _fused(mod, target, tvm, relax):
    """The same lowering `compile_relax` applies before it looks kernels up in the database, so the
    extracted tasks' workloads match what the compile step queries."""
    from tvm.relax import pipeline as rp

    try:
        dispatch = rp.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    seq = [*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
           relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(seq)(mod)


def _flops(estimate, mod) -> int:
    try:
        return int(estimate(mod))
    except Exception:
        return 0
