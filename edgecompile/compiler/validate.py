"""Up-front validation of an ONNX source, before any pass or backend sees it, and library log silencing.

`validate_onnx(path, proto)` refuses, with one line naming what is wrong:
  * a model `onnx.checker.check_model(full_check=True)` rejects (structure, types, shape inference),
  * an opset import whose domain ONNX Runtime does not register, or whose version is newer than ONNX
    Runtime's newest schema for that domain (model-local function domains are fine),
unless ONNX Runtime itself loads the model: a model ORT loads is never refused by this check.

`quiet_library_logs(show)`: onnx, onnxslim, onnxscript, onnx_ir, ONNX Runtime, OpenVINO and TVM log
through `logging` (some with tracebacks). Unless `show` (-v/--debug), their records stop at their own
loggers; the project's one-line errors say what failed.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from edgecompile.errors import ModelLoadError, first_line

LIBRARY_LOGGERS = ("onnx", "onnxslim", "onnxscript", "onnx_ir", "onnxruntime", "openvino", "tvm", "torch.onnx",
                   "torch.export", "optimum", "transformers")
HINT = "fix or re-export the model (e.g. with a released opset); --debug shows the checker's full report"


@lru_cache(maxsize=1)
def ort_domains() -> dict[str, int]:
    """domain -> newest opset version ONNX Runtime has an operator schema for ("" = ai.onnx)."""
    from onnxruntime.capi import _pybind_state as C

    newest: dict[str, int] = {}
    for schema in C.get_all_operator_schema():
        newest[schema.domain] = max(newest.get(schema.domain, 0), schema.since_version)
    return newest


def opset_problem(proto) -> str | None:
    """Why the model's opset imports are not ones ONNX Runtime registers, or None."""
    known = ort_domains()
    local = {f.domain for f in proto.functions}
    for imp in proto.opset_import:
        domain = "" if imp.domain in ("", "ai.onnx") else imp.domain
        if domain in local:
            continue
        if domain not in known:
            return f"opset domain {imp.domain!r} is not one ONNX Runtime knows ({', '.join(sorted(known))})"
        if imp.version < 1 or imp.version > known[domain]:
            return (f"opset {imp.domain or 'ai.onnx'} version {imp.version} does not exist in the installed "
                    f"ONNX Runtime (newest: {known[domain]})")
    return None


def checker_problem(path: Path) -> str | None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:     # ValidationError, InferenceError, OSError from external data ...
        return first_line(exc, 200)
    return None


def ort_loads(path: Path) -> bool:
    """Whether ONNX Runtime creates a session for the model (the final word for this check)."""
    import contextlib
    import io

    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # ORT's Python wrapper print()s an "EP Error" banner before its provider fallback: keep it off the terminal
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def validate_onnx(path: str | Path, proto) -> None:
    path = Path(path)
    problem = opset_problem(proto) or checker_problem(path)
    if problem is None:
        return
    if ort_loads(path):
        logging.getLogger("edgecompile").debug("ONNX checker: %s (ONNX Runtime loads the model: accepted)", problem)
        return
    raise ModelLoadError(f"{path}: invalid ONNX model: {problem}", hint=HINT)


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_QUIET = _Quiet()
_SINK = logging.NullHandler()


def quiet_library_logs(show: bool) -> None:
    """Keep libraries' log records (and their tracebacks) off the terminal unless `show`.

    Each library's top logger stops propagation into a NullHandler (so Python's last-resort stderr handler
    never fires), and handlers the library installed itself on it or its children get a dropping filter."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        family = [logger] + [lg for key, lg in logging.root.manager.loggerDict.items()
                             if key.startswith(name + ".") and isinstance(lg, logging.Logger)]
        if show:
            logger.propagate = True
            logger.removeHandler(_SINK)
        else:
            logger.propagate = False
            if _SINK not in logger.handlers:
                logger.addHandler(_SINK)
        for lg in family:
            for handler in lg.handlers:
                if handler is _SINK:
                    continue
                if show:
                    handler.removeFilter(_QUIET)
                elif _QUIET not in handler.filters:
                    handler.addFilter(_QUIET)
