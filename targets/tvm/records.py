"""Tuning records shared by every graph compiled for one TVM target, and the cost model that learnt from them.

`<cache>/tvm/records/<key>/`, key = sha256(TVM target dict, TVM version):

- `database_workload.json`, `database_tuning_record.json`: MetaSchedule's JSONDatabase. Records are keyed
  by the structural hash of each kernel's TIR (its workload), so a conv shape tuned in one network is found
  when another network with the same shape is built.
- `cost_model.npz` + `cost_model.json`: the XGBoost cost model's training data (features and costs per
  workload, plain arrays: no pickle) and its booster after the latest tuning session; loaded before the
  next session so that it starts with an informed model instead of random guesses.
- `.lock`: a flock held while a snapshot is read and while a session commits its records, so two builds
  that tune at once never interleave their lines.

A tuning session works on an in-memory copy of the records of its own kernels and commits what it
measured at the end (`commit`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from edgecompile.cache import content_key, subdir
from edgecompile.errors import CompileError, first_line
from edgecompile.targets.tvm.startup import register_intrinsics_named

COST_DATA, COST_BOOSTER = "cost_model.npz", "cost_model.json"
COST_MODEL_MAX_SAMPLES = 20_000     # the newest workloads' samples kept for the next session
SEED_RECORDS = 256                  # per workload, copied into a session (its search starts from the best)
ALL = 1 << 30
RECORDS_FILE = "database_tuning_record.json"
TENSORIZE = b'["Tensorize"'
BEST_DIR, BEST_STAMP = "best", "stamp.json"        # in a graph's database directory


def records_key(target: dict, tvm_version: str) -> str:
    return content_key("tvm-records/v1", target, tvm_version)[:32]


class SharedRecords:
    """The records and cost model of one TVM target (a directory; see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def in_cache(cls, target: dict, tvm_version: str) -> SharedRecords:
        return cls(subdir("tvm", "records", records_key(target, tvm_version)))

    @contextlib.contextmanager
    def locked(self):
        with open(self.path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def snapshot(self):
        """A JSONDatabase over the records on disk now (read under the lock)."""
        from tvm.s_tir import meta_schedule as ms

        with self.locked():
            return self._read(ms)

    def stamp(self) -> list | None:
        """[size, mtime] of the records file (None: no records yet): what a graph's best records were taken from."""
        try:
            st = (self.path / RECORDS_FILE).stat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def _read(self, ms):
        intrinsics_for(self.path)
        try:
            return ms.database.JSONDatabase(work_dir=str(self.path))
        except Exception as exc:
            raise CompileError(f"the shared TVM tuning records in {self.path} cannot be read ({first_line(exc)})",
                               hint=f"delete {self.path} (records written by edgecompile before its workload fix "
                                    "can be unreadable) and tune again") from None

    def commit(self, records) -> int:
        """Append tuning records (from a session's database) to the shared one; returns how many were kept (a
        record whose trace does not replay on the kernel it would be filed under is left out)."""
        from tvm.s_tir import meta_schedule as ms

        records = list(records)
        if not records:
            return 0
        kept = 0
        with self.locked():
            db = self._read(ms)                     # re-read: another build may have committed
            for rec in records:
                # commit_workload finds the kernel by structural equality (a Python id() of the FFI wrapper is
                # not a key: each `rec.workload` is a new wrapper and ids are reused once one is freed)
                workload = db.commit_workload(rec.workload.mod)
                # the same computation filed under other block names (see `applies` below): TVM replays every
                # trace when it reads the records, so one filed there would make the whole file unreadable
                if applies(workload.mod, rec):
                    db.commit_tuning_record(copy_record(ms, rec, workload))
                    kept += 1
        return kept

    # -- the cost model -----------------------------------------------------------------------------------
    def load_cost_model(self, model) -> int:
        """Fill an XGBModel with the saved training data and booster; returns the samples loaded (0: none)."""
        data_path, booster_path = self.path / COST_DATA, self.path / COST_BOOSTER
        if not (data_path.is_file() and booster_path.is_file()):
            return 0
        import xgboost as xgb
        from tvm.s_tir.meta_schedule.cost_model.xgb_model import FeatureGroup

        with self.locked():
            try:
                with np.load(data_path, allow_pickle=False) as npz:
                    hashes = [str(h) for h in npz["hashes"]]
                    groups = OrderedDict()
                    for i, group_hash in enumerate(hashes):
                        rows = npz[f"rows{i}"]
                        feats = np.split(npz[f"feat{i}"], np.cumsum(rows)[:-1]) if len(rows) else []
                        groups[group_hash] = FeatureGroup(group_hash=group_hash, features=list(feats),
                                                          costs=npz[f"cost{i}"])
                booster = xgb.Booster()
                booster.load_model(str(booster_path))
            except (OSError, ValueError, KeyError, xgb.core.XGBoostError):
                return 0      # a damaged file: start cold; the next session's save replaces it
        model.data = groups
        model.data_size = sum(len(g.costs) for g in groups.values())
        model.booster = booster
        return model.data_size

    def save_cost_model(self, model) -> int:
        """Save an XGBModel's data (newest workloads first, at most COST_MODEL_MAX_SAMPLES) and booster."""
        if model.booster is None or not model.data:
            return 0
        kept, total = [], 0
        for group in reversed(list(model.data.values())):
            if kept and total + len(group.costs) > COST_MODEL_MAX_SAMPLES:
                break
            kept.append(group)
            total += len(group.costs)
        kept.reverse()
        arrays = {"hashes": np.array([g.group_hash for g in kept])}
        for i, group in enumerate(kept):
            feats = [np.asarray(f, np.float32) for f in group.features]
            arrays[f"rows{i}"] = np.array([f.shape[0] for f in feats], np.int64)
            arrays[f"feat{i}"] = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
            arrays[f"cost{i}"] = np.asarray(group.costs, np.float32)
        with self.locked():
            fd, tmp = tempfile.mkstemp(dir=self.path, suffix=".npz")
            os.close(fd)
            np.savez(tmp, **arrays)
            tmp_booster = self.path / f".{os.getpid()}-{COST_BOOSTER}"
            model.booster.save_model(str(tmp_booster))
            os.replace(tmp, self.path / COST_DATA)
            os.replace(tmp_booster, self.path / COST_BOOSTER)
        return total


# TVM's gradient scheduler gives every kernel of a session a batch before it allocates trials by expected gain. In
# the later steps of a 20-minute ResNet-18 run that first round was most of a session (12 candidates for each of 20
# kernels), though 8 of them (the transposes, pooling, the mean, the matmul, three 1x1 convs) were together 2.3 %
# of the latency (MetaSchedule's task table). A kernel with records whose best time x weight is under this share
# of the graph's is not tuned again.
NEGLIGIBLE_SHARE = 0.01


def worth_tuning(tasks, found: dict, info: dict) -> list:
    """`tasks` less the negligible ones (above): kept are those without records, the costliest, and those whose
    best x weight (`info`: kernel name -> the meta's record) is at least NEGLIGIBLE_SHARE of the sum."""
    cost = {t.task_name: info[t.task_name]["best_us"] * info[t.task_name]["weight"] for t in tasks
            if found.get(t.task_name) and info.get(t.task_name, {}).get("best_us")}
    if not cost:
        return list(tasks)
    total, top = sum(cost.values()), max(cost, key=cost.get)
    return [t for t in tasks if t.task_name not in cost or t.task_name == top
            or cost[t.task_name] >= NEGLIGIBLE_SHARE * total]


def copy_record(ms, rec, workload):
    return ms.database.TuningRecord(rec.trace, workload, run_secs=rec.run_secs, target=rec.target,
                                    args_info=rec.args_info)


def valid_records(db, mod) -> list:
    """The measured (valid) records of the kernel `mod` in `db`, best first; [] when it has none."""
    if not db.has_workload(mod):
        return []
    return list(db.get_top_k(db.commit_workload(mod), ALL))


# Records are found by structural equality of a kernel's TIR, which ignores block names, but a record's trace
# names the blocks it schedules. A kernel tuned in another graph can be the same computation under other names
# (a global mean over a dequantized tensor instead of a ReLU's output): its trace then fails to apply and TVM's
# compile fails the whole build. Such records are not counted as this kernel's (`applicable`), and the compile
# step gets, per kernel, the best record whose trace does apply (`compile_database`).
APPLY_CHECK_LIMIT = 32


def applies(mod, rec) -> bool:
    """Whether `rec`'s trace replays on the kernel `mod` (its own block names)."""
    from tvm.s_tir import Schedule

    try:
        rec.trace.apply_to_schedule(Schedule(mod), remove_postproc=False)
        return True
    except Exception:
        return False


def applicable(mod, records: list) -> list:
    """The records (best first) whose trace applies to `mod`. The usual case, the best one applies, costs one
    replay: the rest come from the same kernel. Otherwise the first APPLY_CHECK_LIMIT are checked one by one."""
    if not records or applies(mod, records[0]):
        return records
    return [r for r in records[:APPLY_CHECK_LIMIT] if applies(mod, r)]


def intrinsics_for(records_dir: Path) -> None:
    """TVM replays every trace as it reads a records directory; tensorized ones need their tensor intrinsics
    registered first. TVM's own are an import of seconds, so only when the records name one of them: ours
    (fma.py) are registered alone (every tuned FP32 kernel on AVX-512 is tensorized with it)."""
    try:
        data = (Path(records_dir) / RECORDS_FILE).read_bytes()
    except OSError:            # no records file: nothing to replay
        return
    if TENSORIZE not in data:
        return
    register_intrinsics_named({n.decode() for n in re.findall(rb'\["Tensorize",\s*\[[^\]]*\],\s*\["([^"]+)"', data)})


def commit_best(ms, db, tasks, best: dict):
    """`db` with each kernel's record from `best` (kernel name -> its best record whose trace applies, as
    `applicable` found it; None: none, compiled untuned) filed under the kernel's own workload."""
    for task in tasks:
        if best.get(task.task_name) is not None:
            db.commit_tuning_record(copy_record(ms, best[task.task_name], db.commit_workload(task.dispatched[0])))
    return db


def compile_database(ms, tasks, best: dict):
    """A MemoryDatabase with each kernel's record from `best` (see commit_best): what the compile step uses."""
    return commit_best(ms, ms.database.MemoryDatabase(), tasks, best)


# A warm rebuild needs one record per kernel, but reading the target's shared records means parsing and replaying
# every trace of every graph ever tuned for it (seconds for a few tuned networks). The best applicable record per
# kernel is therefore also kept with the graph, stamped with the shared file it came from, and used while that file
# is unchanged.

def load_best(ms, graph_dir: Path, stamp: list | None, tasks) -> tuple[dict, dict] | None:
    """({kernel name: best record or None}, the kernels' counts as the graph's meta records them) saved by
    `save_best` from the shared records `stamp`; None when missing or stale."""
    best_dir = Path(graph_dir) / BEST_DIR
    try:
        saved = json.loads((best_dir / BEST_STAMP).read_text())
        if stamp is None or saved["records"] != stamp or any(t.task_name not in saved["tasks"] for t in tasks):
            return None
        intrinsics_for(best_dir)
        db = ms.database.JSONDatabase(work_dir=str(best_dir), allow_missing=False)
        return ({t.task_name: next(iter(valid_records(db, t.dispatched[0])), None) for t in tasks},
                {t.task_name: saved["tasks"][t.task_name] for t in tasks})
    except Exception:            # missing, damaged, or unreadable by this TVM: read the shared records
        return None


def save_best(ms, graph_dir: Path, stamp: list | None, tasks, best: dict, counts: dict) -> None:
    """Keep each kernel's best record (`best`: kernel name -> record or None) and `counts` (the meta's record
    of each kernel) with the graph (see above)."""
    graph_dir = Path(graph_dir)
    tmp = Path(tempfile.mkdtemp(dir=graph_dir, prefix=".best-"))
    try:
        commit_best(ms, ms.database.JSONDatabase(work_dir=str(tmp)), tasks, best)
        (tmp / BEST_STAMP).write_text(json.dumps({"records": stamp, "tasks": counts}))
        shutil.rmtree(graph_dir / BEST_DIR, ignore_errors=True)
        os.replace(tmp, graph_dir / BEST_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
