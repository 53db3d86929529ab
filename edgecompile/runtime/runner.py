"""The Runner base class every engine's run side extends: validation, locking, calling conventions,
and the task front-ends (text, generation, detection) a bundle's manifest declares."""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from edgecompile.errors import BundleError, DataError
from edgecompile.runtime.specs import TensorSpec, dtype_matches, np_dtype


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str                 # version when ok, else why not (missing package, no GPU ...)
    hint: str | None = None


class Runner:
    """Base class: validation, locking and the calling conventions. Backends implement `_run`."""

    thread_safe = True         # backends whose engine is not re-entrant set False (a lock is used)

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], *, bundle=None,
                 validate: bool = True):
        self.inputs = inputs
        self.outputs = outputs
        self.bundle = bundle
        self.validate = validate
        self._names = [s.name for s in inputs]
        self._dtypes = {s.name: np_dtype(s.dtype) for s in inputs}
        # Precomputed per input: (name, dtype, rank, [(axis, size) of fixed dims], is_float) for a cheap hot path.
        self._checks = [(s.name, s.dtype, len(s.shape),
                         [(i, d) for i, d in enumerate(s.shape) if isinstance(d, int) and d > 0],
                         self._dtypes[s.name].kind == "f") for s in inputs]
        self._out_names = [s.name for s in outputs]
        self._lock = None if self.thread_safe else threading.Lock()
        self._state = threading.Condition()     # guards `closed` and `_active` (runs in flight)
        self._active = 0
        self._warned_nonfinite = False
        self.closed = False

    # -- backend hooks ---------------------------------------------------------------------
    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # -- public API --------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.validate:
            self._check(feeds)
        feeds = feeds if type(feeds) is dict else dict(feeds)
        with self._state:
            if self.closed:
                raise BundleError("runner is closed", hint="load the bundle again")
            self._active += 1
        try:
            if self._lock is None:
                outs = self._run(feeds)
            else:
                with self._lock:
                    outs = self._run(feeds)
        finally:
            with self._state:
                self._active -= 1
                if not self._active:
                    self._state.notify_all()
        return dict(zip(self._out_names, outs))

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        if len(arrays) != len(self.inputs):
            raise DataError(f"model takes {len(self.inputs)} input(s) ({', '.join(self._names)}), got {len(arrays)}",
                            hint="use runner.run({name: array}) for several inputs")
        outs = self.run(dict(zip(self._names, arrays)))
        values = tuple(outs.values())
        return values[0] if len(values) == 1 else values

    # -- task front-ends (text, generation, detection): set by `load` from the manifest's "frontend" ---
    frontend = None

    def _front(self, what: str):
        if self.frontend is None:
            raise BundleError(f"this bundle has no {what} front-end", hint="the bundle's manifest declares no "
                              "'frontend'; use runner.run({name: array}) with arrays")
        return self.frontend

    def encode(self, texts, **kw):
        """Text embedding bundles: list[str] -> float32 [N, dim]."""
        return self._front("text").encode(texts, **kw)

    def classify(self, texts, **kw):
        """Text classification bundles: list[str] -> labels and scores."""
        return self._front("text").classify(texts, **kw)

    def generate(self, prompt, **kw):
        """Decoder bundles: the continuation of a prompt (or chat messages) as a str."""
        return self._front("generation").generate(prompt, **kw)

    def stream(self, prompt, **kw):
        """Decoder bundles: yield the continuation's text piece by piece."""
        return self._front("generation").stream(prompt, **kw)

    def detect(self, image, **kw):
        """Detection bundles: HWC uint8 RGB image -> boxes [x1, y1, x2, y2] (original pixels), classes, scores."""
        return self._front("detection").detect(image, **kw)

    def close(self) -> None:
        """Refuse new runs (BundleError), wait for the runs in flight to finish, then free the engine."""
        with self._state:
            if self.closed:
                return
            self.closed = True
            while self._active:
                self._state.wait()
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- validation ----------------------------------------------------------------------------
    def _check(self, feeds: Mapping[str, np.ndarray]) -> None:
        if len(feeds) != len(self._checks):
            self._names_error(feeds)
        for name, dtype, rank, fixed, is_float in self._checks:
            arr = feeds.get(name)
            if arr is None:
                self._names_error(feeds)
            if type(arr) is not np.ndarray and not isinstance(arr, np.ndarray):
                raise DataError(f"input {name!r} must be a numpy array, got {type(arr).__name__}",
                                hint="wrap it with numpy.asarray(..., dtype=...)")
            if not dtype_matches(arr.dtype, dtype):
                if arr.dtype.kind == "O":
                    raise DataError(f"input {name!r} is an object array, the model expects {dtype}",
                                    hint="give strings as numpy unicode arrays (numpy.array(list_of_str))")
                raise DataError(f"input {name!r} has dtype {arr.dtype}, the model expects {dtype}",
                                hint=f"convert with array.astype('{dtype}')")
            shape = arr.shape
            if len(shape) != rank or any(shape[i] != d for i, d in fixed):
                spec = next(s for s in self.inputs if s.name == name)
                raise DataError(f"input {name!r} has shape {list(shape)}, the model expects {list(spec.shape)}",
                                hint="named dimensions (e.g. 'batch') may take any size; the others must match")
            if is_float and not self._warned_nonfinite and not np.isfinite(arr.astype(np.float32)).all():
                self._warned_nonfinite = True
                warnings.warn(f"input {name!r} contains NaN or infinite values; outputs will be meaningless",
                              RuntimeWarning, stacklevel=4)

    def _names_error(self, feeds) -> None:
        missing = [n for n in self._names if n not in feeds]
        extra = [n for n in feeds if n not in self._dtypes]
        raise DataError(
            "wrong input names: " + "; ".join(filter(None, [
                f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""])),
            hint=f"the model's inputs are {self._names}")
