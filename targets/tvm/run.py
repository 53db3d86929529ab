"""TVM, run side: a compiled library loaded with TVM's runtime library only (no compiler, no torch)
into a Relax VirtualMachine. Batches larger than the compiled batch run sample by sample."""
from __future__ import annotations

import contextlib
import os
import threading
import sys
from pathlib import Path

import numpy as np

from edgecompile.errors import BundleError, CompileError
from edgecompile.runtime.runner import Availability, Runner
from edgecompile.runtime.specs import TensorSpec

LIB_FILE = "model.so"
COMPILED_BATCH = 1


@contextlib.contextmanager
def _torch_hidden():
    """tvm_ffi imports torch whenever it is installed; the runtime must not. Hide it while TVM loads
    (only when torch is not imported already), so a deployed runtime stays torch-free."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None          # makes `import torch` raise ImportError
    try:
        yield
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def tvm_module(runtime_only: bool = True):
    """`tvm` for loading and running libraries. With `runtime_only` (what `edgecompile.runtime.load` asks)
    in a fresh process this loads libtvm_runtime only (about half the import time of the full compiler);
    the compiler asks for the full TVM (`runtime_only=False`), and so does EDGECOMPILE_TVM_FULL=1."""
    with _IMPORT_LOCK:        # concurrent first loads: one import, and the saved env/sys.modules state is the real one
        if "tvm" not in sys.modules:
            _import_tvm(runtime_only)
    import tvm

    return tvm


_IMPORT_LOCK = threading.Lock()


def _import_tvm(runtime_only: bool) -> None:
    """Import TVM (runtime library only when asked), torch hidden; env and sys.modules restored after."""
    old = os.environ.get("TVM_USE_RUNTIME_LIB")
    if runtime_only and os.environ.get("EDGECOMPILE_TVM_FULL") != "1":
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    try:
        with _torch_hidden():
            import tvm  # noqa: F401
    finally:
        if old is None:
            os.environ.pop("TVM_USE_RUNTIME_LIB", None)
        else:
            os.environ["TVM_USE_RUNTIME_LIB"] = old


def _host_arch() -> str:
    import platform

    return platform.machine()


def availability() -> Availability:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("apache-tvm")
    except PackageNotFoundError:
        return Availability(False, "apache-tvm is not installed",
                            hint="pip install 'edgecompile[runtime-tvm]' to run bundles, 'edgecompile[tvm]' to build")
    return Availability(True, f"apache-tvm {ver}")


class TvmRunner(Runner):
    thread_safe = False   # a VirtualMachine keeps per-call state (registers, workspace): not re-entrant

    def __init__(self, vm, inputs, outputs, *, compiled_batch: int | None = COMPILED_BATCH, device=None, **kw):
        super().__init__(inputs, outputs, **kw)
        self.vm = vm
        self.device = device
        self.compiled_batch = compiled_batch
        self._tvm = tvm_module()
        self._main = vm["main"]

    def _call(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        tvm = self._tvm
        arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]   # keeps 0-d arrays 0-d
        res = self._main(*[tvm.runtime.tensor(a, self.device) for a in arrays])
        if hasattr(res, "numpy"):
            return [res.numpy()]
        return [r.numpy() for r in res]

    def _run(self, feeds):
        arrays = [feeds[s.name] for s in self.inputs]
        n = arrays[0].shape[0] if arrays and arrays[0].ndim else None
        b = self.compiled_batch
        if b is None or n == b or not self._batched():
            return self._call(arrays)
        if n == 0:
            raise CompileError("empty batch", hint="pass at least one sample")
        chunks = [self._call([a[i:i + b] for a in arrays]) for i in range(0, n, b)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    def _batched(self) -> bool:
        return all(s.shape and not isinstance(s.shape[0], int) for s in self.inputs)

    def _close(self):
        self.vm = self._main = None


def _read_meta(meta_path: Path) -> dict:
    """The library's JSON sidecar (arch, compiled batch), size/depth-limited and type-checked."""
    from edgecompile.runtime.schema import parse_limited

    if not meta_path.is_file():
        return {}
    meta = parse_limited(meta_path.read_bytes()[:1 << 20], meta_path, what="library metadata")
    batch = meta.get("compiled_batch") if isinstance(meta, dict) else None
    if (not isinstance(meta, dict) or not isinstance(meta.get("arch", ""), str)
            or not (batch is None or (type(batch) is int and batch > 0))):
        raise BundleError(f"{meta_path}: library metadata must be an object with a string 'arch' and a positive "
                          "integer 'compiled_batch'", hint="rebuild the bundle")
    return meta


def load_library(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], threads: int | None = None,
                 runtime_only: bool = True, **runner_kw) -> TvmRunner:
    """Load a library written by compile_library (TVM runtime only, no torch) as a Runner.

    `inputs`/`outputs` are the model's specs (a leading symbolic dimension = any batch size; batches
    other than the compiled one run in chunks of it). `threads` sets TVM's CPU thread pool size."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    meta = _read_meta(meta_path)
    if meta.get("arch") and meta["arch"] != _host_arch():
        raise BundleError(f"{path.name} is a {meta['arch']} library; this host is {_host_arch()}",
                          hint="copy the bundle to the device and load it there")
    tvm = tvm_module(runtime_only)
    if threads:
        tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
    from tvm.runtime import vm as tvm_vm

    dev = tvm.cpu(0)
    lib = tvm.runtime.load_module(str(path))
    vm = tvm_vm.VirtualMachine(lib, dev)
    return TvmRunner(vm, list(inputs), list(outputs), compiled_batch=meta.get("compiled_batch", COMPILED_BATCH),
                     device=dev, **runner_kw)


def load(bundle, *, threads: int | None = None, validate: bool = True, progress=None,
         runtime_only: bool = True) -> TvmRunner:
    inputs, outputs = bundle.io_specs()
    return load_library(bundle.artifact("library"), inputs, outputs, threads=threads, bundle=bundle,
                        validate=validate, runtime_only=runtime_only)
