"""What MetaSchedule spends before its first measured trial, made cheap.

TVM's tensor intrinsics (`tvm.s_tir.tensor_intrin`: CUDA, x86, ARM, ... TVMScript functions) are imported by every
TuneContext and, in every builder worker process, by the default build function (TVM's LocalBuilder starts fresh
workers for every batch; ours, workers.pooled_builder, keeps them). Each `@T.prim_func` calls `inspect.stack()`,
which for every frame looks up its source file and module (walking all of sys.modules for frames of evaluated
code): measured 30 s per import on a loaded 2-core host, 160 s in a tuning process. `import_tensor_intrinsics()`
runs that import with an `inspect.stack` that builds the same FrameInfo records (frame, file, line, function, the
one line of context TVMScript reads) straight from the frames: ~4 s. It is also the builder workers' initializer,
so their default build function finds it imported.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import linecache
import sys
import threading

TENSOR_INTRIN = "tvm.s_tir.tensor_intrin"
_LOCK = threading.Lock()
_FIXED = False
_OURS = False


def frame_records(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack(context)` for context 0 or 1 (the caller's frame first), without resolving each frame's
    module: the file name is the code object's, the line of context comes from linecache (None without source)."""
    out = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno) if context else ""
        out.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                     [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return out


@contextlib.contextmanager
def cheap_frames():
    """TVMScript parsing (`@T.prim_func`) with `inspect.stack` answered by `frame_records`."""
    original = inspect.stack

    def stack(context: int = 1):
        return frame_records(context)[1:] if context in (0, 1) else original(context)

    inspect.stack = stack
    try:
        yield
    finally:
        inspect.stack = original


def register_intrinsics_named(names: set) -> None:
    """Register the tensor intrinsics `names` (as they appear in tuning records): ours alone when they are all
    ours (`register_our_intrinsics`, milliseconds), else TVM's import as well (`import_tensor_intrinsics`)."""
    from edgecompile.targets.tvm import fma

    if names and names <= {fma.INTRIN}:
        register_our_intrinsics()
    else:
        import_tensor_intrinsics()


def register_our_intrinsics() -> None:
    """Register our own tensor intrinsic (fma.py) alone, without TVM's: a no-op once done."""
    global _OURS
    if _OURS:
        return
    with _LOCK, cheap_frames():
        from edgecompile.targets.tvm import fma

        fma.register_intrinsic()    # ours: float convolutions' 16-lane FMA tile
        _OURS = True


def import_tensor_intrinsics() -> None:
    """Import TVM's tensor intrinsics (their registry) with the cheap frame records, and fix the VNNI one for
    this LLVM (vnni.register_intrinsic), register ours (fma.register_intrinsic); a no-op once done."""
    global _FIXED
    if _FIXED:
        return
    with _LOCK:
        if TENSOR_INTRIN not in sys.modules:
            with cheap_frames():
                importlib.import_module(TENSOR_INTRIN)
        from edgecompile.targets.tvm import vnni

        vnni.register_intrinsic()   # TVM's VNNI intrinsic with the operand types LLVM >= 22 takes
        _FIXED = True
    register_our_intrinsics()


# MetaSchedule's evolutionary search evolves a population of 512 schedules per kernel and batch (its default, sized
# for 64 candidates a batch): tens of seconds per kernel on a loaded 2-core host, and the gradient task scheduler
# visits every kernel once before it measures by expected gain. Our batches are 4-32 candidates: the population
# is 16 per candidate measured (64..512).
POPULATION_PER_CANDIDATE, MIN_POPULATION, MAX_POPULATION = 16, 64, 512


def search_strategy(ms, per_iter: int):
    """The evolutionary search, its population sized to the batch (cloned per kernel by MetaSchedule)."""
    population = max(MIN_POPULATION, min(MAX_POPULATION, POPULATION_PER_CANDIDATE * int(per_iter)))
    return ms.search_strategy.EvolutionarySearch(population_size=population)
