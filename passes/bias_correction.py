"""Bias correction (Nagel et al., 2019, section 4.2) with data, an ONNX graph pass.

Quantizing a layer's weights shifts the mean of its output: E[W_q x] - E[W x] = (W_q - W) E[x],
largest for layers with few weights per output (depthwise convolutions), and the shifts compound
through the network. The pass quantizes the model (the `quantize` callable, e.g. QDQ insertion
with fixed ranges), measures on calibration data the per-channel mean of every Conv/Gemm input
*as the quantized model computes it* (upstream quantization included), takes each layer's
dequantized weights from the quantized graph, and subtracts (W_q - W) E[x] from the float bias.

Each layer is corrected for its own error only, against inputs that already carry the upstream
layers' errors: one pass over the data, no double counting. (Correcting every layer at once by
the total output-mean difference between the two models counts an upstream shift once in the
upstream layer and again in every layer after it; on MobileNetV2 that collapsed agreement to
21 %: measured, hence this form.) Zero-padding makes E[x] at borders smaller than the channel mean;
the correction ignores that.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

OPS = ("Conv", "Gemm")


def _layers(graph) -> list:
    """Conv/Gemm nodes with a constant weight and a constant 1-D bias used by them only."""
    out = []
    for node in graph:
        if node.op_type not in OPS or len(node.inputs) < 3 or node.inputs[2] is None:
            continue
        w, b = node.inputs[1], node.inputs[2]
        if w is None or w.const_value is None or b.const_value is None or len(list(b.uses())) != 1:
            continue
        if node.op_type == "Gemm":
            if node.attributes.get("transA") is not None and node.attributes["transA"].value:
                continue
            beta = node.attributes.get("beta")
            if beta is not None and beta.value != 1.0:
                continue
        if b.const_value.numpy().ndim != 1 or not node.name:
            continue
        out.append(node)
    return out


def channel_means(model: ir.Model, names: list[str], feeds, batch_size: int = 32) -> tuple[dict, dict]:
    """({tensor: per-channel mean (axis 1)}, {tensor: values per channel}) over the feeds."""
    from edgecompile.compiler.calibration import _augmented, model_batches
    from edgecompile.targets.ort.run import create_session

    proto = ir.to_proto(model)
    sess = create_session(_augmented(proto, names), level="disable")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in model_batches(proto, feeds, batch_size):
        for name, arr in zip(names, sess.run(names, batch)):
            flat = np.moveaxis(arr, 1, 0).reshape(arr.shape[1], -1).astype(np.float64)
            sums[name] = sums.get(name, 0.0) + flat.sum(axis=1)
            counts[name] = counts.get(name, 0) + flat.shape[1]
    return {k: sums[k] / counts[k] for k in sums}, counts


def dequantized_weight(value) -> np.ndarray | None:
    """The weight a quantized graph's layer really uses: DequantizeLinear(q, scale, zero point) of
    constants, or the constant itself; None when it is computed at run time."""
    if value.const_value is not None:
        return value.const_value.numpy().astype(np.float64)
    dq = value.producer()
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    ins = [v.const_value.numpy() if v is not None and v.const_value is not None else None for v in dq.inputs]
    if ins[0] is None or ins[1] is None:
        return None
    q = ins[0].astype(np.float64)
    scale = ins[1].astype(np.float64)
    zp = ins[2].astype(np.float64) if len(ins) > 2 and ins[2] is not None else np.zeros_like(scale)
    if scale.ndim == 1 and q.ndim > 1:
        axis = dq.attributes["axis"].value if dq.attributes.get("axis") is not None else 1
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def output_shift(node, dw: np.ndarray, xmean: np.ndarray) -> np.ndarray:
    """(W_q - W) E[x] per output channel of a Conv or Gemm."""
    if node.op_type == "Conv":
        o, ig = dw.shape[0], dw.shape[1]
        g = len(xmean) // ig
        dsum = dw.reshape(o, ig, -1).sum(axis=2).reshape(g, o // g, ig)
        return (dsum * xmean.reshape(g, 1, ig)).sum(axis=2).reshape(o)
    trans_b = node.attributes.get("transB") is not None and node.attributes["transB"].value
    alpha = node.attributes["alpha"].value if node.attributes.get("alpha") is not None else 1.0
    return alpha * (dw @ xmean if trans_b else xmean @ dw)


class BiasCorrection(ir.passes.InPlacePass):
    """Subtract from each Conv/Gemm bias its quantized weights' mean output error on data."""

    def __init__(self, *, feeds, quantize: Callable[[ir.Model], ir.Model], min_values: int = 100,
                 batch_size: int = 32, reference: dict | None = None):
        super().__init__()
        # {weight name: float weight} the error is measured against when the graph's weights are already
        # moved (AdaRound writes them on the grid: W_q - W would be 0 while W_q - W_original is not)
        self.reference = reference or {}
        self.feeds = list(feeds)
        self.quantize = quantize
        self.min_values = min_values
        self.batch_size = batch_size
        self.notes: dict = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = _layers(model.graph)
        self.notes = {"layers": 0, "skipped": 0}
        if not layers:
            return ir.passes.PassResult(model, modified=False)
        qmodel = self.quantize(model)
        qnodes = {n.name: n for n in qmodel.graph if n.name and n.op_type in OPS}
        work = []
        for node in layers:
            qn = qnodes.get(node.name)
            wq = dequantized_weight(qn.inputs[1]) if qn is not None else None
            if wq is None or wq.shape != node.inputs[1].const_value.numpy().shape:
                self.notes["skipped"] += 1
                continue
            w = self.reference.get(node.inputs[1].name, node.inputs[1].const_value.numpy())
            work.append((node, qn.inputs[0].name, wq - np.asarray(w, np.float64)))
        names = sorted({x for _, x, _ in work})
        means, counts = channel_means(qmodel, names, self.feeds, self.batch_size)
        shifts = []
        for node, xname, dw in work:
            if counts[xname] < self.min_values or not np.any(dw):
                self.notes["skipped"] += 1
                continue
            shift = output_shift(node, dw, means[xname])
            b = node.inputs[2]
            old = b.const_value.numpy()
            b.const_value = ir.tensor((old - shift).astype(old.dtype), name=b.name)
            shifts.append(float(np.mean(np.abs(shift))))
        self.notes["layers"] = len(shifts)
        if not shifts:
            return ir.passes.PassResult(model, modified=False)
        self.notes["mean_abs_shift"] = round(float(np.mean(shifts)), 6)
        self.notes["max_abs_shift"] = round(float(np.max(shifts)), 6)
        return ir.passes.PassResult(model, modified=True)
