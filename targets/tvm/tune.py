"""MetaSchedule tuning databases for the TVM backend, kept in the cache and reused.

A database lives in `<cache>/tvm/db/<key>/` where key = sha256(graph hash, TVM target dict, TVM
version): MetaSchedule's JSON database files plus `edgecompile.json` (trials measured so far, time
spent, per-task status). A build asking for N trials tunes only what the database lacks
(N - trials already measured); a warm database is applied without re-tuning. Builds of the same
key are serialised with a file lock.

Tasks are tuned one at a time (largest FLOPs first, round-robin in chunks) rather than in one
MetaSchedule call, so that (a) progress and `--tune-timeout` are checked between chunks, and (b) a
task on which MetaSchedule itself fails (it happens, e.g. batch-1 matmuls on TVM 0.27) is recorded
and skipped instead of aborting the whole tuning run; an untuned task is compiled by TVM's
default schedule.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from edgecompile.cache import content_key, subdir
from edgecompile.errors import ConfigError, first_line

META_FILE = "edgecompile.json"
MIN_CHUNK, MAX_CHUNK = 4, 32
# MetaSchedule's builder/runner timeouts include starting their worker processes; on a loaded
# 2-core machine that alone can take tens of seconds, so be generous (TVM's default is 30 s).
BUILD_TIMEOUT_S, RUN_TIMEOUT_S = 120.0, 120.0
# A board session: upload, load and time one candidate; an emulated board needs minutes.
REMOTE_SESSION_TIMEOUT_S = 600


def database_key(graph_sha256: str, target: dict, tvm_version: str) -> str:
    return content_key("tvm-tuning-db/v1", graph_sha256, target, tvm_version)[:32]


def trials_in_cache(key: str) -> int:
    """Trials measured so far in the cached database `key` (0 when there is none); creates nothing."""
    from edgecompile.cache import cache_dir

    meta = cache_dir() / "tvm" / "db" / key / META_FILE
    try:
        return int(json.loads(meta.read_text()).get("trials", 0))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def open_database(key: str, *, cache: bool = True):
    """A TuningDatabase for `key`, locked for the duration of the block."""
    if cache:
        path = subdir("tvm", "db", key)
        with open(path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield TuningDatabase(key, path, persistent=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    else:
        with tempfile.TemporaryDirectory(prefix="edgecompile-tvm-db-") as tmp:
            yield TuningDatabase(key, Path(tmp), persistent=False)


class TuningDatabase:
    def __init__(self, key: str, path: Path, persistent: bool):
        from tvm.s_tir import meta_schedule as ms

        self.key = key
        self.path = path
        self.persistent = persistent
        self.database = ms.database.JSONDatabase(work_dir=str(path))
        meta_file = path / META_FILE
        self.meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {
            "key": key, "trials": 0, "tuning_seconds": 0.0, "tasks": {}, "sessions": []}

    def _save(self) -> None:
        tmp = self.path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        os.replace(tmp, self.path / META_FILE)

    def tune(self, mod, target, trials: int, timeout_min: float | None, progress, *, runs_on_host: bool,
             remote: dict | None = None, cross_cc: str | None = None) -> dict:
        """Tune up to `trials` total trials for `mod` on `target` (only what the database lacks).
        `remote` = {"tracker": "HOST:PORT", "key": KEY}: measure kernels on that board through TVM's RPC
        tracker (libraries linked with `cross_cc`) instead of on this host.
        Returns the manifest's `tuning` record."""
        trials = int(trials or 0)
        if trials < 0:
            raise ConfigError(f"--tune must be >= 0, got {trials}", hint="the number of MetaSchedule trials, e.g. 64")
        if timeout_min is not None and timeout_min <= 0:
            raise ConfigError(f"--tune-timeout must be > 0 minutes, got {timeout_min}")
        before = int(self.meta["trials"])
        todo = max(0, trials - before)
        session = {"trials_requested": trials, "trials_run": 0, "seconds": 0.0, "stopped": None}
        if todo and not runs_on_host and not remote:
            raise ConfigError(
                f"--tune {trials} needs to measure kernels on the device, and this host cannot run "
                f"{target.attrs.get('mtriple', 'this target')} code",
                hint="tune through a board: --remote HOST:PORT --key KEY (see `edgecompile device`), or build "
                "untuned (drop --tune); a database for this graph and target in the cache is applied automatically",
            )
        if todo:
            if remote:
                session["measured_on"] = _board(remote)
            session = self._tune(mod, target, todo, timeout_min, progress, session, remote, cross_cc)
            self.meta["sessions"].append({**session, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if self.persistent:
                self._save()
        elif before and progress is not None:
            progress.info(f"    tuning database {self.key[:12]} has {before} trials: reused, no re-tuning")
        total = int(self.meta["trials"])
        record = {
            "database_key": self.key,
            "database": "cache" if self.persistent else "temporary",   # where: the key names it in the cache
            "trials_requested": trials,
            "trials_in_database": total,
            "trials_run_now": session["trials_run"],
            "tuning_seconds_now": round(session["seconds"], 2),
            "tuning_seconds_total": round(float(self.meta["tuning_seconds"]), 2),
            "reused": session["trials_run"] == 0 and total > 0,
            "stopped": session["stopped"],
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

    # -- the tuning loop ----------------------------------------------------------------------------
    def _tune(self, mod, target, budget: int, timeout_min, progress, session: dict, remote: dict | None = None,
              cross_cc: str | None = None) -> dict:
        import tvm
        from tvm import relax
        from tvm.s_tir import meta_schedule as ms
        from tvm.s_tir.analysis import estimate_tir_flops

        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        t0 = time.perf_counter()
        deadline = None if timeout_min is None else t0 + 60.0 * timeout_min
        tasks = ms.relax_integration.extract_tasks(_fused(mod, target, tvm, relax), target)
        tasks = [t for t in tasks if not t.mod.attrs.get("tirx.is_scheduled", False)] if tasks else []
        if not tasks:
            session["stopped"] = "nothing to tune (no kernels)"
            return session
        flops = {t.task_name: _flops(estimate_tir_flops, t.dispatched[0]) for t in tasks}
        tasks.sort(key=lambda t: -flops[t.task_name] * t.weight)
        chunk = max(MIN_CHUNK, min(MAX_CHUNK, budget // len(tasks)))
        cores = max(1, min(os.cpu_count() or 1, int(target.attrs.get("num-cores", 0) or os.cpu_count() or 1)))
        done = 0
        hidden = _hide_torch_from_workers()
        if remote:
            builder, runner = _remote_builder_runner(ms, remote, cross_cc, cores)
        else:
            builder = ms.builder.LocalBuilder(max_workers=cores, timeout_sec=BUILD_TIMEOUT_S)
            runner = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S)
        if progress is not None:
            where = ""
            if remote:
                board = session.get("measured_on") or {}
                where = f", measured on board {remote['key']!r}" + (" (emulated)" if board.get("emulated") else "")
            progress.info(f"    tuning {len(tasks)} kernels, {budget} trials, database {self.key[:12]} "
                          f"(chunks of {chunk}){where}")
        try:
            while done < budget:
                progressed = False
                for i, task in enumerate(tasks):
                    if done >= budget:
                        break
                    if deadline is not None and time.perf_counter() >= deadline:
                        session["stopped"] = f"--tune-timeout {timeout_min} min reached after {done} trials"
                        return session
                    info = self.meta["tasks"].setdefault(task.task_name, {
                        "flops": flops[task.task_name], "weight": int(task.weight), "trials": 0,
                        "best_us": None, "error": None})
                    if info["error"]:
                        continue
                    n = min(chunk, budget - done)
                    before = len(self.database)
                    try:
                        _tidy_meta_schedule_logger()
                        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                            [task], str(self.path), num_threads=cores, seed=0)
                        ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(self.path),
                                      max_trials_global=n, num_trials_per_iter=n, builder=builder,
                                      runner=runner, database=self.database)
                    except Exception as exc:   # MetaSchedule failed on this kernel: keep it untuned
                        info["error"] = first_line(exc)
                    ran = len(self.database) - before
                    done += ran
                    info["trials"] += ran
                    info["best_us"] = self._best_us(task) or info["best_us"]
                    self.meta["trials"] += ran
                    progressed = progressed or ran > 0
                    elapsed = time.perf_counter() - t0
                    if progress is not None:
                        status = f"failed ({info['error'][:60]})" if info["error"] else (
                            f"best {info['best_us']:.1f} us" if info["best_us"] else "no valid candidate yet")
                        progress.info(f"    tune [{done:>4}/{budget}] {i + 1}/{len(tasks)} "
                                      f"{task.task_name[:48]}: +{ran} trials, {status} ({elapsed:.0f} s)")
                if not progressed:
                    session["stopped"] = "search space exhausted (no new candidates)"
                    break
        finally:
            seconds = time.perf_counter() - t0
            session["trials_run"] = done
            session["seconds"] = seconds
            self.meta["tuning_seconds"] = float(self.meta["tuning_seconds"]) + seconds
            del builder, runner
            hidden.close()
        return session

    def _best_us(self, task) -> float | None:
        try:
            wl = self.database.commit_workload(task.dispatched[0])
            top = self.database.get_top_k(wl, 1)
        except Exception:
            return None
        if not top or not top[0].run_secs:
            return None
        secs = [float(s) for s in top[0].run_secs]
        return 1e6 * sum(secs) / len(secs)


def _tidy_meta_schedule_logger() -> None:
    """MetaSchedule re-applies its logging config on every call, naming the logger's current handlers;
    an unnamed one (pytest's capture handlers, an app's own) makes that config fail for every task.
    Keep its per-trial chatter in the log files only: console level WARNING."""
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_logger.handlers):
        if handler.get_name() is None:
            ms_logger.removeHandler(handler)
    ms_logger.setLevel(logging.WARNING)


def _board(remote: dict) -> dict:
    """Check the board is on the tracker (one-line error if not) and return what it says about itself."""
    from edgecompile.targets.tvm.remote import board_info, request_board

    info = board_info(request_board(remote["tracker"], remote["key"], wait=remote.get("wait", 30.0)))
    return {"tracker": remote["tracker"], "key": remote["key"], "arch": info.get("arch"),
            "emulated": bool(info.get("emulated", False))}


def export_shared(cc: str | None, mod) -> str:
    """MetaSchedule builder export (runs in its worker processes): a shared library the board can
    load as is (TVM's default, a tar of object files, needs a compiler on the board)."""
    from tvm.support import cc as tvm_cc

    path = os.path.join(tempfile.mkdtemp(prefix="edgecompile-tune-"), "kernel.so")
    if cc:
        mod.export_library(path, fcompile=tvm_cc.cross_compiler(cc))
    else:
        mod.export_library(path)
    return path


def _remote_builder_runner(ms, remote: dict, cross_cc: str | None, cores: int):
    from edgecompile.targets.tvm.remote import parse_address

    host, port = parse_address(remote["tracker"])
    builder = ms.builder.LocalBuilder(max_workers=cores, timeout_sec=BUILD_TIMEOUT_S,
                                      f_export=functools.partial(export_shared, cross_cc))
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=remote["key"],
                                       session_priority=1, session_timeout_sec=REMOTE_SESSION_TIMEOUT_S),
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0,
                                                   enable_cpu_cache_flush=False),
        max_workers=1)
    return builder, runner


def _hide_torch_from_workers() -> contextlib.ExitStack:
    """MetaSchedule's builder/runner workers are fresh `python -m tvm.exec.popen_worker` processes, and
    tvm_ffi imports torch whenever it is installed (seconds per worker, for nothing). Put a `torch`
    that raises ImportError first on the workers' PYTHONPATH while tuning; undone on close()."""
    stack = contextlib.ExitStack()
    shim = subdir("tvm", "worker-path")
    pkg = shim / "torch"
    pkg.mkdir(exist_ok=True)
    init = pkg / "__init__.py"
    if not init.is_file():
        init.write_text('raise ImportError("torch is hidden from TVM tuning workers by edgecompile")\n')
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(shim) + (os.pathsep + old if old else "")

    def restore():
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old

    stack.callback(restore)
    return stack


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
