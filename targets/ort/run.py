"""ONNX Runtime, run side: sessions and the Runner (imported by the runtime; numpy + onnxruntime only)."""
from __future__ import annotations

from edgecompile.runtime.runner import Availability, Runner

MODEL_FILE = "model.onnx"


def _ort():
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


def session_options(threads: int | None, level: str = "all"):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 4      # fatal only: a failed run raises, and its one-line error says it all
    return so


def create_session(model: str | bytes, threads: int | None = None, level: str = "all"):
    ort = _ort()
    return ort.InferenceSession(model, sess_options=session_options(threads, level),
                                providers=["CPUExecutionProvider"])


def availability() -> Availability:
    try:
        ort = _ort()
    except ImportError as exc:
        return Availability(False, f"onnxruntime is not installed ({exc})",
                            hint="pip install 'edgecompile[runtime]' (ONNX Runtime)")
    return Availability(True, f"onnxruntime {ort.__version__}")


class OrtRunner(Runner):
    thread_safe = True   # InferenceSession.run is thread-safe

    def __init__(self, session, inputs, outputs, **kw):
        super().__init__(inputs, outputs, **kw)
        self.session = session

    def _run(self, feeds):
        return self.session.run(self._out_names, feeds)

    def _close(self):
        self.session = None



def load(bundle, *, threads: int | None = None, validate: bool = True, progress=None) -> OrtRunner:
    session = create_session(str(bundle.artifact("model")), threads=threads)
    inputs, outputs = bundle.io_specs()
    return OrtRunner(session, inputs, outputs, bundle=bundle, validate=validate)
