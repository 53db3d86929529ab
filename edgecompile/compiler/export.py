"""torch -> ONNX with the dynamo exporter (dynamic batch), then a parity check against torch on
real inputs: task-metric agreement, max-abs and cosine. A mismatch is an ExportError."""
from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stdout

import numpy as np

from edgecompile.data import Dataset
from edgecompile.errors import ExportError

DEFAULT_OPSET = 20
# Parity bounds for an FP32 export: outputs must agree on the task and be numerically the same model.
MIN_AGREEMENT = 0.99
MIN_COSINE = 0.9999


def export_torch(module, source, example: Dataset, opset: int = DEFAULT_OPSET):
    """Export `module` to an onnx_ir Model named after the source's inputs/outputs, batch dynamic."""
    import torch

    names = [s.name for s in source.inputs]
    args = tuple(torch.from_numpy(np.ascontiguousarray(example.inputs[n][:2])) for n in names)
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} for _ in names)
    module = module.eval()
    for logger in ("torch.onnx", "torch._export", "torch.export", "onnxscript"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=names,
                                        output_names=list(source.outputs), dynamic_shapes=dynamic,
                                        verbose=False, optimize=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise ExportError(f"torch.onnx export (dynamo) failed: {msg}",
                          hint="check that the model is traceable with torch.export; rerun with --debug") from exc
    model = program.model
    model.producer_name = "edgecompile"
    return model


def check_parity(model, module, ds: Dataset, output_names: list[str], classifier: bool,
                 max_samples: int = 256) -> dict:
    """Compare ONNX (ORT, FP32) against torch on up to `max_samples` real inputs."""
    import onnx_ir as ir
    import torch

    from edgecompile.verify.metrics import raw_similarity
    from edgecompile.targets.ort.build import ort_outputs

    ds = ds.take(max_samples)
    onnx_outs = ort_outputs(ir.to_proto(model).SerializeToString(), ds.batches(64))
    with torch.no_grad():
        torch_outs = None
        for feeds in ds.batches(64):
            y = module(*[torch.from_numpy(v) for v in feeds.values()])
            y = y if isinstance(y, (tuple, list)) else (y,)
            torch_outs = (
                [[t.numpy()] for t in y] if torch_outs is None else [a + [t.numpy()] for a, t in zip(torch_outs, y)]
            )
    torch_outs = [np.concatenate(t) for t in torch_outs]
    per_output = {}
    worst = None
    for name, o, t in zip(output_names, onnx_outs, torch_outs):
        sim = raw_similarity(o, t)
        if classifier and o.ndim == 2 and o.shape[1] > 1:
            sim["agreement"] = float(np.mean(o.argmax(1) == t.argmax(1)))
        per_output[name] = sim
        bad = sim["cosine"] < MIN_COSINE or sim.get("agreement", 1.0) < MIN_AGREEMENT
        if bad and (worst is None or sim["cosine"] < per_output[worst]["cosine"]):
            worst = name
    if worst is not None:
        s = per_output[worst]
        raise ExportError(
            f"exported ONNX disagrees with torch on output {worst!r}: cosine {s['cosine']:.6f}, "
            f"max-abs {s['max_abs']:.3g}" + (f", agreement {s['agreement']:.3f}" if "agreement" in s else ""),
            hint="the export is not faithful; try another opset or check for data-dependent control flow")
    return {"n": len(ds), "outputs": per_output}
