"""Empirical bias correction (Nagel et al., 2019, section 4.2), an ONNX graph pass.

Quantizing weights and inputs shifts the mean of a layer's output: E[W_q x_q] != E[W x]. Layers
with few, large weights per channel (depthwise convolutions) shift the most, and the shift
compounds through the network. The pass runs the float model and its quantized version (given
by the `quantize` callable, e.g. QDQ insertion with fixed ranges) over calibration data, measures
each Conv/Gemm output's per-channel mean in both, and adds the difference to the float model's
bias; quantizing the corrected model then gives outputs whose per-channel means match the float
model's. `iterations` > 1 re-measures after correcting (upstream corrections change downstream
means, as in the layer-by-layer original).

A channel mean estimated from fewer than `min_values` numbers (e.g. the classifier's logits on a
small calibration set) would add noise rather than remove bias: such layers are left alone.
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
    from edgecompile.calibration import _augmented, rebatch
    from edgecompile.targets.ort import create_session

    sess = create_session(_augmented(ir.to_proto(model), names), level="disable")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in rebatch(list(feeds), batch_size):
        for name, arr in zip(names, sess.run(names, batch)):
            flat = np.moveaxis(arr, 1, 0).reshape(arr.shape[1], -1).astype(np.float64)
            sums[name] = sums.get(name, 0.0) + flat.sum(axis=1)
            counts[name] = counts.get(name, 0) + flat.shape[1]
    return {k: sums[k] / counts[k] for k in sums}, counts


class BiasCorrection(ir.passes.InPlacePass):
    """Add to each Conv/Gemm bias the mean output shift its quantized version shows on data."""

    def __init__(self, *, feeds, quantize: Callable[[ir.Model], ir.Model], iterations: int = 1,
                 min_values: int = 1000, batch_size: int = 32):
        super().__init__()
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        self.feeds = list(feeds)
        self.quantize = quantize
        self.iterations = iterations
        self.min_values = min_values
        self.batch_size = batch_size
        self.notes: dict = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = _layers(model.graph)
        self.notes = {"layers": 0, "skipped_few_values": 0, "iterations": self.iterations}
        if not layers:
            return ir.passes.PassResult(model, modified=False)
        float_names = {n.name: n.outputs[0].name for n in layers}
        ref, counts = channel_means(model, list(float_names.values()), self.feeds, self.batch_size)
        keep = [n for n in layers if counts[float_names[n.name]] >= self.min_values]
        self.notes["skipped_few_values"] = len(layers) - len(keep)
        if not keep:
            return ir.passes.PassResult(model, modified=False)
        shifts = []
        for _ in range(self.iterations):
            qmodel = self.quantize(model)
            q_names = {n.name: n.outputs[0].name for n in qmodel.graph if n.name in float_names}
            missing = [n.name for n in keep if n.name not in q_names]
            if missing:
                raise ValueError(f"the quantized model has no node named {missing[0]!r}")
            qmeans, _ = channel_means(qmodel, [q_names[n.name] for n in keep], self.feeds, self.batch_size)
            shifts = []
            for node in keep:
                delta = ref[float_names[node.name]] - qmeans[q_names[node.name]]
                b = node.inputs[2]
                old = b.const_value.numpy()
                b.const_value = ir.tensor((old + delta).astype(old.dtype), name=b.name)
                shifts.append(float(np.mean(np.abs(delta))))
        self.notes["layers"] = len(keep)
        self.notes["mean_abs_shift_last"] = float(np.mean(shifts))
        self.notes["max_abs_shift_last"] = float(np.max(shifts))
        return ir.passes.PassResult(model, modified=True)
