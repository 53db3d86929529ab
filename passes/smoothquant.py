"""SmoothQuant-style activation smoothing (Xiao et al., 2023), an ONNX graph pass.

Transformer activations after a LayerNorm have a few outlier channels, up to ~100x the others, so a
per-tensor INT8 scale (dynamic or static) spends its grid on them. For `y = X W` the function is
unchanged by `y = (X / s) (diag(s) W)`: per input channel j the pass divides the activation by

    s_j = max|X_j| ** alpha / max|W_j,:| ** (1 - alpha)

(max|X_j| from calibration feeds, max|W_j,:| over the rows of every weight reading X) and multiplies
the weight rows by s_j, migrating part of the activation range into the weights, which are quantized
per output channel. `alpha` (0..1) sets how much moves; the task metric chooses it.

Smoothed are the activations that a LayerNormalization / SkipLayerNormalization /
EmbedLayerNormalization produces and that feed `MatMul`s or com.microsoft `Attention` with a constant
2-D weight (the QKV projections and the first FFN layer of an encoder). The 1/s is folded into the
norm's gamma and beta when the normalised value has no other reader; in post-LN encoders (BERT) it
also feeds the residual, so the pass inserts one `Mul(X, 1/s)` on the quantized branch instead.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgecompile.errors import ConfigError, DataError
from edgecompile.passes.base import FunctionalGraphPass, PassResult

NORMS = ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization")
# where gamma and beta sit among a norm's inputs (EmbedLayerNormalization: always a Mul)
_GAMMA_BETA = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3)}
_MIN = 1e-5


def _weight(node) -> np.ndarray | None:
    if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const_value is None:
        return None
    w = node.inputs[1].const_value.numpy()
    return w if w.ndim == 2 and w.dtype == np.float32 else None


def smoothing_groups(model, every: bool = False) -> dict:
    """{activation value: [consumer nodes]} for every norm output read by MatMul/Attention weights;
    `every`: for every activation read by them (e.g. the GELU output feeding an FFN's second layer)."""
    groups: dict = {}
    for node in model.graph:
        if node.op_type not in ("MatMul", "Attention") or _weight(node) is None:
            continue
        x = node.inputs[0]
        prod = x.producer() if x is not None else None
        if prod is None or not (every or (prod.op_type in NORMS and prod.outputs[0] is x)):
            continue
        groups.setdefault(x, []).append(node)
    # a weight shared with a node outside the group cannot be rescaled for this group alone
    return {x: ns for x, ns in groups.items()
            if all(len(list(n.inputs[1].uses())) == 1 for n in ns)}


def channel_maxima(model, values, feeds) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each value over the feeds (ONNX Runtime, values as extra outputs)."""
    import onnx
    import onnxruntime as ort

    proto = ir.to_proto(model)
    have = {o.name for o in proto.graph.output}
    names = [v.name for v in values]
    for name in names:
        if name not in have:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    from edgecompile.compiler.calibration import fixed_batch, model_batches

    maxima: dict[str, np.ndarray] = {}
    for feed in model_batches(proto, feeds, 32) if fixed_batch(proto) else feeds:   # feeds may differ in length
        res = sess.run(names, feed)
        for name, arr in zip(names, res):
            m = np.abs(arr.reshape(-1, arr.shape[-1])).max(0)
            maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
    return maxima


class SmoothQuant(FunctionalGraphPass):
    """`feeds`: calibration feed dicts; `alpha`: migration strength in [0, 1]."""

    name = "smoothquant"

    def __init__(self, feeds, alpha: float = 0.5, every: bool = False):
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"smoothing alpha must be in [0, 1], got {alpha:g}",
                              hint="[passes.quantize] smooth_alpha = 0.5 is the usual start")
        self.feeds = list(feeds or [])
        self.alpha = float(alpha)
        self.every = every                             # smooth every MatMul activation, not only norm outputs
        self.scales: dict[str, np.ndarray] = {}        # activation name -> s (for tests and the report)

    def options(self) -> dict:
        return {"alpha": self.alpha}

    def call(self, model) -> PassResult:
        model = model.clone()
        groups = smoothing_groups(model, self.every)
        if not groups:
            looked_for = "activation" if self.every else "LayerNorm output"
            return PassResult(model, False, {"smoothed": 0, "why": f"no {looked_for} feeds a MatMul/Attention weight"})
        if not self.feeds:
            raise DataError("activation smoothing needs calibration data",
                            hint="set [data] calibration, or smooth_alpha = 0 to switch smoothing off")
        maxima = channel_maxima(model, list(groups), self.feeds)
        graph = model.graph
        folded = inserted = 0
        for x, nodes in groups.items():
            wmax = np.max([np.abs(_weight(n)).max(1) for n in nodes], axis=0)
            xmax = maxima[x.name]
            s = np.power(np.maximum(xmax, _MIN), self.alpha) / np.power(np.maximum(wmax, _MIN), 1.0 - self.alpha)
            s = np.where((xmax > 0) & (wmax > 0), s, 1.0).clip(_MIN, 1.0 / _MIN).astype(np.float32)
            self.scales[x.name] = s
            for n in nodes:
                w = n.inputs[1]
                w.const_value = ir.tensor((_weight(n) * s[:, None]).astype(np.float32), name=w.name)
            if self._fold(x, nodes, s):
                folded += 1
                continue
            inv = ir.Value(name=f"{x.name}__smooth_inv", const_value=ir.tensor((1.0 / s).astype(np.float32),
                                                                               name=f"{x.name}__smooth_inv"))
            graph.register_initializer(inv)
            mul = ir.node("Mul", [x, inv], name=f"{x.name}__smooth")
            mul.outputs[0].name = f"{x.name}__smoothed"
            mul.outputs[0].shape, mul.outputs[0].type = x.shape, x.type
            graph.insert_after(x.producer(), mul)
            for n in nodes:
                n.replace_input_with(0, mul.outputs[0])
            inserted += 1
        return PassResult(model, True, {"alpha": self.alpha, "smoothed": len(groups),
                                        "folded_into_norm": folded, "mul_inserted": inserted})

    @staticmethod
    def _fold(x, nodes, s) -> bool:
        """Divide the norm's gamma/beta by s when the smoothed consumers are x's only readers."""
        norm = x.producer()
        idx = _GAMMA_BETA.get(norm.op_type)
        readers = {id(u.node) for u in x.uses()}
        if idx is None or x.is_graph_output() or readers != {id(n) for n in nodes}:
            return False
        params = [norm.inputs[i] if i < len(norm.inputs) else None for i in idx]
        if params[0] is None or any(p is not None and (p.const_value is None or len(list(p.uses())) != 1)
                                    for p in params):
            return False
        for p in params:
            if p is not None:
                p.const_value = ir.tensor((p.const_value.numpy() / s).astype(np.float32), name=p.name)
        return True


def smooth_proto(proto, calibration_feeds, alpha: float, has_data: bool, every: bool = False):
    """The quantize pass's step: (ModelProto, notes or None). `calibration_feeds(proto)[0]` gives the
    feeds; without calibration data (dynamic INT8) nothing can be measured and the graph stays as is."""
    smoother = SmoothQuant(None, alpha, every)  # checks alpha even where nothing qualifies
    model = ir.from_proto(proto)
    if not smoothing_groups(model, every):
        return proto, None
    if not has_data:
        return proto, "skipped: no calibration data to measure activation ranges"
    smoother.feeds = list(calibration_feeds(proto)[0])
    result = smoother(model)
    return ir.to_proto(result.model), dict(result.notes)
