"""ORT bundles on a board of the device farm (issue 27): `edgecompile device serve` answers three functions
besides TVM's, so a board runs and times an ONNX Runtime bundle as it does a TVM library.

    edgecompile.ort_load(model bytes, threads) -> handle     (the session stays on the board, keyed by its hash)
    edgecompile.ort_run(handle, feeds .npz bytes) -> outputs .npz bytes
    edgecompile.ort_time(handle, feeds .npz bytes, runs, warmup) -> JSON {"samples_ms": [...]}

Timing runs on the board (perf_counter around session.run), so RPC round trips are not counted.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from edgecompile.errors import RemoteError, first_line
from edgecompile.runtime.runner import Runner

LOAD_FUNC, RUN_FUNC, TIME_FUNC = "edgecompile.ort_load", "edgecompile.ort_run", "edgecompile.ort_time"


def _npz(arrays: dict) -> bytearray:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return bytearray(buf.getvalue())


def _unnpz(data) -> dict:
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# -- the board side (runs in the RPC server process) -------------------------------------------------

def register_board_funcs() -> None:
    """Register the ORT functions in this process (called from `device serve`'s server init)."""
    import tvm

    sessions: dict[str, object] = {}

    def ort_load(model, threads) -> str:
        from edgecompile.targets.ort.run import create_session

        data = bytes(model)
        handle = hashlib.sha256(data).hexdigest()
        if handle not in sessions:
            sessions[handle] = create_session(data, threads=int(threads) or None)
        return handle

    def ort_run(handle, feeds):
        sess = sessions[str(handle)]
        names = [o.name for o in sess.get_outputs()]
        return _npz(dict(zip(names, sess.run(names, _unnpz(feeds)))))

    def ort_time(handle, feeds, runs, warmup) -> str:
        sess = sessions[str(handle)]
        x = _unnpz(feeds)
        for _ in range(int(warmup)):
            sess.run(None, x)
        samples = []
        for _ in range(int(runs)):
            t = time.perf_counter()
            sess.run(None, x)
            samples.append((time.perf_counter() - t) * 1e3)
        return json.dumps({"samples_ms": samples})

    for name, fn in ((LOAD_FUNC, ort_load), (RUN_FUNC, ort_run), (TIME_FUNC, ort_time)):
        tvm.register_global_func(name, fn, override=True)


# -- the host side -----------------------------------------------------------------------------------

class RemoteOrtRunner(Runner):
    """A Runner whose ONNX Runtime session lives on a board; `board` is what the board says about itself."""

    def __init__(self, sess, handle: str, inputs, outputs, *, board: dict, **kw):
        super().__init__(inputs, outputs, **kw)
        self.session, self.handle, self.board = sess, handle, board

    def _remote(self, name, *args):
        try:
            return self.session.get_function(name)(*args)
        except Exception as exc:
            raise RemoteError(f"running on board {self.board.get('key')!r} failed: {first_line(exc)}") from None

    def _run(self, feeds):
        out = _unnpz(self._remote(RUN_FUNC, self.handle, _npz(dict(feeds))))
        return [out[n] for n in self._out_names]

    def _close(self):
        self.session = None

    def latency(self, feeds, *, runs: int = 50, warmup: int = 10) -> dict:
        """Time session.run on the board. Same fields as RemoteTvmRunner.latency."""
        if self.validate:
            self._check(feeds)
        res = json.loads(str(self._remote(TIME_FUNC, self.handle, _npz(dict(feeds)), runs, warmup)))
        costs = np.asarray(res["samples_ms"], dtype=float)
        first = next(iter(feeds.values()), None)
        return {
            "p50": float(np.percentile(costs, 50)), "p90": float(np.percentile(costs, 90)),
            "p99": float(np.percentile(costs, 99)), "mean": float(costs.mean()), "min": float(costs.min()),
            "runs": int(costs.size), "warmup": warmup, "batch": int(first.shape[0]) if first is not None else 1,
            "threads": self.board.get("threads"), "samples": [round(float(v), 4) for v in costs[:1000]],
            "remote": True, "key": self.board.get("key"), "tracker": self.board.get("tracker"),
            "emulated": bool(self.board.get("emulated", False)), "board": self.board,
        }


def load(bundle, sess, info: dict, *, threads: int | None = None, validate: bool = True) -> RemoteOrtRunner:
    """Upload the bundle's ONNX graph to the board session `sess` and return a Runner for it."""
    model = Path(bundle.artifact("model")).read_bytes()
    key = info.get("key")
    try:
        loader = sess.get_function(LOAD_FUNC)
    except Exception:
        raise RemoteError(f"board {key!r} cannot run ONNX Runtime bundles (a plain TVM RPC server, or an older "
                          "edgecompile)", hint="serve it with `edgecompile device serve` from this version, with "
                                               "pip install 'edgecompile[runtime,runtime-tvm]'") from None
    try:
        handle = str(loader(bytearray(model), threads or 0))
    except Exception as exc:
        raise RemoteError(f"loading the ONNX graph on board {key!r} failed: {first_line(exc)}",
                          hint="is onnxruntime installed there? pip install 'edgecompile[runtime]'") from None
    inputs, outputs = bundle.io_specs()
    return RemoteOrtRunner(sess, handle, inputs, outputs, board=info, bundle=bundle, validate=validate)
