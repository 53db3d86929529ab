"""The processes MetaSchedule builds and measures kernels in: this host's workers, or a cross-linking
builder with a board's RPC runner; a `torch` hidden from those workers; and their (and TVM's C++) stderr
kept out of the terminal while tuning."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
from pathlib import Path

from edgecompile.cache import subdir
from edgecompile.targets.tvm.startup import import_tensor_intrinsics

# MetaSchedule's builder/runner timeouts include starting their worker processes; on a loaded
# 2-core machine that alone can take tens of seconds, so be generous (TVM's default is 30 s).
BUILD_TIMEOUT_S, RUN_TIMEOUT_S = 120.0, 120.0
# A candidate whose machine code takes longer than this to generate is failed, not measured: it would be paid
# again by every rebuild from the records. LLVM spent 22 s on one ResNet-18 matmul candidate (a 50-wide vector
# loop, explicitly unrolled 512 steps) that the search then kept as that kernel's best, so the warm rebuild took
# 28 s (bench/results/tvm_vs_ort_20min_fma.txt); the other kernels' code takes 0.03-0.3 s each.
EXPORT_LIMIT_S = 4.0
# TVM's LocalBuilder starts fresh worker processes for every batch (it cites a memory leak in long-lived ones).
# Each pays importing TVM and the tensor intrinsics, 3.3 s on a 2-core Xeon (by hand), and with the 4-12
# candidates a batch of a 20-minute ResNet-18 run, building was 41 % of the run (505 of 1236 s in MetaSchedule's
# log). `pooled_builder` keeps its workers across batches and replaces each after WORKER_USES builds.
WORKER_USES = 32
# How a candidate is timed on this host. TVM's default runs it back to back for 3 x 100 ms, so its weights stay
# in the cache; in a network each kernel's weights are read once per inference. ResNet-18's kernels' best times
# added up to 19.8 ms of a 24.0 ms run (bench/results/tvm_vs_ort_20min_negligible_kernels.txt). Here each of 10
# runs starts with the weights and output flushed from the cache (the input, the previous kernel's output,
# stays), and the search prefers what is fast that way.
COLD_CACHE = {"number": 1, "repeat": 10, "min_repeat_ms": 0, "enable_cpu_cache_flush": True}
# A board session: upload, load and time one candidate; an emulated board needs minutes.
REMOTE_SESSION_TIMEOUT_S = 600
# TVM's C++ warnings while it searches (a VNNI tensorization that does not fit a candidate, an unknown custom
# rule), hundreds per session, and its worker processes' output: into this file of the graph's database
NATIVE_LOG = "tuning.log"


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


class SlowCodegen(RuntimeError):
    pass


def export_within(limit_s: float, shared: bool, cc: str | None, mod) -> str:
    """MetaSchedule builder export (in its worker processes): `export_shared` for a board (`shared`), else the
    host's default (a tar of object files), failed when generating the code took more than `limit_s`."""
    import shutil
    import time

    t0 = time.perf_counter()
    if shared:
        path = export_shared(cc, mod)
    else:
        from tvm.s_tir.meta_schedule.builder.local_builder import default_export

        path = default_export(mod)
    took = time.perf_counter() - t0
    if took > limit_s:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        raise SlowCodegen(f"generating this candidate's code took {took:.1f} s (limit {limit_s:g} s): every "
                          "rebuild would pay it again")
    return path


def pooled_builder(ms, cores: int, f_export):
    """TVM's LocalBuilder (`cores` workers, `f_export`), its worker processes kept across batches (see
    WORKER_USES); each imports TVM's tensor intrinsics the cheap way when it starts. `close()` ends them."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import local_builder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(ms.builder.LocalBuilder._cls):
        pool = None

        def _sanity_check(self) -> None:    # TVM's starts a worker only to look the functions up: ours, the pool's
            self.pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec,
                                          initializer=self.initializer, maximum_process_uses=WORKER_USES)
            self.pool.submit(_look_up_on_worker, self.f_build, self.f_export).result()

        def build(self, build_inputs):
            jobs = [(self.f_build, self.f_export, b.mod, b.target, local_builder._serialize_params(b.params))
                    for b in build_inputs]
            results = []
            for done in self.pool.map_with_error_catching(lambda job: local_builder._worker_func(*job), jobs):
                if done.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(done.value, None))
                elif done.status == StatusKind.TIMEOUT:
                    results.append(ms.builder.BuilderResult(None, f"building took over {self.timeout_sec:g} s"))
                else:
                    results.append(ms.builder.BuilderResult(None, f"building failed: {done.value}"))
            return results

        def close(self) -> None:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None

    return PooledBuilder(max_workers=cores, timeout_sec=BUILD_TIMEOUT_S, initializer=import_tensor_intrinsics,
                         f_export=f_export)


def _look_up_on_worker(f_build, f_export) -> None:
    """The builder's functions exist in a worker (raises there otherwise)."""
    from tvm.s_tir.meta_schedule.utils import get_global_func_with_default_on_worker

    get_global_func_with_default_on_worker(name=f_build, default=None)
    get_global_func_with_default_on_worker(name=f_export, default=None)


def builder_runner(ms, remote: dict | None, cross_cc: str | None, cores: int):
    """MetaSchedule's builder (`pooled_builder`; close() it when done) and runner: this host's, or a
    cross-linking builder and the board's RPC runner."""
    if not remote:
        return (pooled_builder(ms, cores, functools.partial(export_within, EXPORT_LIMIT_S, False, None)),
                ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S,
                                      evaluator_config=ms.runner.EvaluatorConfig(**COLD_CACHE)))
    from edgecompile.targets.tvm.remote import parse_address

    host, port = parse_address(remote["tracker"])
    builder = pooled_builder(ms, cores, functools.partial(export_within, EXPORT_LIMIT_S, True, cross_cc))
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=remote["key"],
                                       session_priority=1, session_timeout_sec=REMOTE_SESSION_TIMEOUT_S),
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0,
                                                   enable_cpu_cache_flush=False),
        max_workers=1)
    return builder, runner


def hide_torch_from_workers() -> contextlib.ExitStack:
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


@contextlib.contextmanager
def native_stderr_to(path: Path, progress):
    """File descriptor 2 (TVM's C++ log, MetaSchedule's worker processes) appended to `path` for the block;
    Python's sys.stderr, and `progress` where it writes to it, keep writing to the terminal. A process without
    a file descriptor 2 (or without sys.stderr) is left as it is."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    old_stderr, old_stream = sys.stderr, getattr(progress, "stream", None)
    sys.stderr = terminal
    if progress is not None and old_stream is old_stderr:
        progress.stream = terminal
    try:
        yield
    finally:
        terminal.flush()
        sys.stderr = old_stderr
        if progress is not None and old_stream is old_stderr:
            progress.stream = old_stream
        terminal.close()
        os.dup2(saved, 2)
        os.close(saved)


def tidy_meta_schedule_logger() -> None:
    """MetaSchedule re-applies its logging config on every call, naming the logger's current handlers;
    an unnamed one (pytest's capture handlers, an app's own) makes that config fail for every task.
    Keep its per-trial chatter in the log files only: console level WARNING."""
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_logger.handlers):
        if handler.get_name() is None:
            ms_logger.removeHandler(handler)
    ms_logger.setLevel(logging.WARNING)
