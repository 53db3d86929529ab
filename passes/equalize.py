"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization"), an ONNX graph pass.

For two convolutions in a row, conv1 -> [ReLU] -> conv2, with conv1's output used only there,
scaling conv1's output channel i by 1/s_i and conv2's input channel i by s_i leaves the network's
function unchanged (ReLU is positively homogeneous). Choosing s_i = sqrt(r1_i / r2_i), with r1_i
the largest |weight| of conv1's output channel i and r2_i that of conv2's input channel i, gives
both the same range sqrt(r1_i r2_i): channels with tiny weights no longer waste the int8 grid --
the reason depthwise-separable networks (MobileNet) lose so much with per-tensor quantization.
Depthwise convolutions take part on either side (channel i of a depthwise conv is group i).
Chains (expand -> depthwise -> project) are equalized by sweeping all pairs until the scales
settle.

ReLU6 (Clip(0, 6)) is not positively homogeneous: clip(x / s, 0, 6) != clip(x, 0, 6) / s.
Three ways to handle it (``relu6=``):

* ``"data"`` (default when calibration feeds are given): the scales are constrained by each
  channel's observed pre-activation maximum m_i so that the clip acts exactly as before on the
  calibration data: a channel that saturates (m_i > 6) keeps s_i = 1, one that does not gets
  s_i >= m_i / 6 (it must not start saturating). The Clip stays; the float model is unchanged on
  the data it was calibrated on.
* ``"relu"``: the paper's choice, an equalized pair's Clip(0, 6) becomes a ReLU. On pretrained
  MobileNetV2 this changes the float model's top-1 on photo crops by about 10 pt: measured, not
  a default.
* ``"skip"``: pairs through a bounded activation are left alone (exact, data-free).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

ACTIVATIONS = ("Relu", "Clip")


def _const(value) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _attr(node, name, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _only_use(value):
    """The single consuming node of `value`, or None (several uses, or a graph output)."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0] if hasattr(uses[0], "__getitem__") else uses[0].node


def _clip_bounds(node) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip with constant bounds (None = unbounded); None if not constant."""
    def bound(i):
        if len(node.inputs) <= i or node.inputs[i] is None:
            return None, True
        arr = _const(node.inputs[i])
        if arr is None:
            v = node.inputs[i]
            prod = v.producer()
            if prod is not None and prod.op_type == "Constant":
                arr = prod.attributes["value"].value.numpy()
        return (None, False) if arr is None else (float(np.asarray(arr).reshape(-1)[0]), True)

    lo, ok_lo = bound(1)
    hi, ok_hi = bound(2)
    return (lo, hi) if ok_lo and ok_hi else None


class _Conv:
    """A Conv node with constant weight (and bias, if any)."""

    def __init__(self, node):
        self.node = node
        conv = node.op_type == "Conv" and len(node.inputs) >= 2
        self.w = _const(node.inputs[1]) if conv else None
        self.b = _const(node.inputs[2]) if conv and len(node.inputs) > 2 and node.inputs[2] is not None else None
        self.group = int(_attr(node, "group", 1))

    @property
    def ok(self) -> bool:
        ins = self.node.inputs
        has_b = len(ins) > 2 and ins[2] is not None
        return (self.node.op_type == "Conv" and self.w is not None and self.w.ndim >= 3
                and (not has_b or self.b is not None)
                and len(list(ins[1].uses())) == 1 and (not has_b or len(list(ins[2].uses())) == 1))

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.w.shape[1] == 1 and self.group == self.w.shape[0]


def _bounded(act) -> bool:
    return act is not None and act.op_type == "Clip" and _clip_bounds(act)[1] is not None


def find_pairs(graph, relu6: str) -> list[tuple[object, object | None, object]]:
    """(conv1, activation or None, conv2) chains that equalization may rescale."""
    pairs = []
    for node in graph:
        c1 = _Conv(node)
        if not c1.ok or len(node.outputs) != 1:
            continue
        nxt = _only_use(node.outputs[0])
        act = None
        if nxt is not None and nxt.op_type in ACTIVATIONS:
            if nxt.op_type == "Clip":
                bounds = _clip_bounds(nxt)
                if bounds is None or bounds[0] != 0.0:
                    continue
                if bounds[1] is not None and relu6 == "skip":
                    continue
            act, nxt = nxt, _only_use(nxt.outputs[0])
        if nxt is None or nxt.op_type != "Conv":
            continue
        c2 = _Conv(nxt)
        if not c2.ok or c2.node.inputs[0] is not (act or node).outputs[0]:
            continue
        if not (c2.group == 1 or c2.depthwise):
            continue
        if c2.w.shape[0 if c2.depthwise else 1] != c1.w.shape[0]:
            continue
        pairs.append((node, act, nxt))
    return pairs


def _set(value, arr: np.ndarray) -> None:
    value.const_value = ir.tensor(np.ascontiguousarray(arr, dtype=value.const_value.numpy().dtype), name=value.name)


class CrossLayerEqualization(ir.passes.InPlacePass):
    """Equalize per-channel weight ranges of consecutive convolutions (see the module doc).

    `feeds`: calibration feed dicts ({input name: array}), needed by relu6="data" to measure the
    per-channel maxima of the convolutions that feed a ReLU6."""

    def __init__(self, *, relu6: str | None = None, feeds=None, iterations: int = 20, tolerance: float = 1e-3,
                 batch_size: int = 32):
        super().__init__()
        relu6 = relu6 or ("data" if feeds is not None else "skip")
        if relu6 not in ("data", "relu", "skip"):
            raise ValueError(f"relu6 must be 'data', 'relu' or 'skip', not {relu6!r}")
        if relu6 == "data" and feeds is None:
            raise ValueError("relu6='data' needs calibration feeds")
        self.relu6 = relu6
        self.feeds = feeds
        self.iterations = iterations
        self.tolerance = tolerance
        self.batch_size = batch_size
        self.notes: dict = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        pairs = find_pairs(model.graph, self.relu6)
        self.notes = {"pairs": len(pairs), "relu6": self.relu6, "sweeps": 0}
        if not pairs:
            return ir.passes.PassResult(model, modified=False)
        # per-channel pre-activation maxima of conv1 for pairs through a ReLU6 (relu6="data")
        limits = {}
        if self.relu6 == "data":
            bounded = [(n1, act) for n1, act, _ in pairs if _bounded(act)]
            maxima = channel_maxima(model, [n1.outputs[0].name for n1, _ in bounded], self.feeds, self.batch_size)
            for n1, act in bounded:
                limits[id(n1)] = [maxima[n1.outputs[0].name], _clip_bounds(act)[1]]
            self.notes["relu6_channels_saturating"] = int(sum((m > c).sum() for m, c in limits.values()))
        spread_before = _spread(pairs)
        for sweep in range(self.iterations):
            worst = 0.0
            for n1, _, n2 in pairs:
                worst = max(worst, self._equalize(n1, n2, limits.get(id(n1))))
            self.notes["sweeps"] = sweep + 1
            if worst < self.tolerance:
                break
        if self.relu6 == "relu":
            replaced = 0
            for _, act, _ in pairs:
                if _bounded(act):
                    act.op_type = "Relu"
                    act.resize_inputs(1)
                    replaced += 1
            self.notes["relu6_replaced"] = replaced
        self.notes["range_spread_before"] = round(spread_before, 3)
        self.notes["range_spread_after"] = round(_spread(pairs), 3)
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _equalize(n1, n2, limit) -> float:
        """Rescale one pair; returns max |log s| (0 when already equal). `limit`: [per-channel
        max of conv1's output (updated in place), clip max] for a pair through a ReLU6."""
        c1, c2 = _Conv(n1), _Conv(n2)
        r1 = np.abs(c1.w).reshape(c1.w.shape[0], -1).max(axis=1).astype(np.float64)
        w2 = c2.w if c2.depthwise else np.swapaxes(c2.w, 0, 1)     # input channel first
        r2 = np.abs(w2).reshape(w2.shape[0], -1).max(axis=1).astype(np.float64)
        ok = (r1 > 0) & (r2 > 0)
        s = np.ones_like(r1)
        s[ok] = np.sqrt(r1[ok] / r2[ok])
        if limit is not None:
            m, cap = limit
            s = np.where(m > cap, 1.0, np.maximum(s, m / cap))   # the clip must act as before
            limit[0] = m / s
        shape1 = (-1,) + (1,) * (c1.w.ndim - 1)
        _set(n1.inputs[1], c1.w / s.reshape(shape1))
        if c1.b is not None:
            _set(n1.inputs[2], c1.b / s)
        if c2.depthwise:
            _set(n2.inputs[1], c2.w * s.reshape(shape1))
        else:
            _set(n2.inputs[1], c2.w * s.reshape((1, -1) + (1,) * (c2.w.ndim - 2)))
        return float(np.max(np.abs(np.log(s)))) if len(s) else 0.0


def channel_maxima(model: ir.Model, names: list[str], feeds, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) maxima of the named tensors over the feeds, by ONNX Runtime."""
    if not names:
        return {}
    from edgecompile.compiler.calibration import _augmented, model_batches
    from edgecompile.targets.ort.run import create_session

    proto = ir.to_proto(model)
    sess = create_session(_augmented(proto, names), level="disable")
    out: dict[str, np.ndarray] = {}
    for batch in model_batches(proto, feeds, batch_size):
        for name, arr in zip(names, sess.run(names, batch)):
            m = np.moveaxis(arr, 1, 0).reshape(arr.shape[1], -1).max(axis=1).astype(np.float64)
            out[name] = m if name not in out else np.maximum(out[name], m)
    return out


def _spread(pairs) -> float:
    """Mean over conv weights of max/min per-channel |w| range: 1 when fully equalized."""
    vals = []
    seen = set()
    for n1, _, n2 in pairs:
        for n in (n1, n2):
            if id(n) in seen:
                continue
            seen.add(id(n))
            w = _Conv(n).w
            r = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
            r = r[r > 0]
            if len(r):
                vals.append(float(r.max() / r.min()))
    return float(np.mean(vals)) if vals else 1.0
