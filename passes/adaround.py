"""AdaRound (Nagel et al., 2020): learned weight rounding, an ONNX graph pass.

Round-to-nearest is not the best rounding for a layer's output: rounding some weights the other way
can cancel errors. For every Conv/Gemm/MatMul with a constant weight the pass learns, per weight,
whether to round down or up (h in {0, 1}): with the symmetric weight scale s the downstream quantizer
will compute, W' = s * clip(floor(W / s) + h, -127, 127); h is relaxed to the rectified sigmoid
h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1) and V minimises the layer's output
reconstruction error ||W X - W'(V) X_q||^2 plus lambda * sum(1 - |2h - 1|^beta), beta annealed
from 20 to 2 after a warm-up, which drives every h to 0 or 1 (the paper's recipe; Adam on V). Unlike
the paper, the reconstruction term is divided by round-to-nearest's error and the regulariser is a mean,
so one lambda fits layers of any output scale.

X are the layer's inputs in the FP32 model (the target's) and X_q its inputs in the quantized model
(`inputs="quantized"`: activations quantized with the fixed ranges, upstream layers already rounded,
the paper's asymmetric reconstruction; refreshed `rounds` times while going through the layers in
order) or the FP32 inputs again (`inputs="fp32"`, the default: on pretrained MobileNetV2 79.8 % top-1
agreement vs 71.5 % with quantized inputs, both measured before bias correction followed AdaRound, see
bench/results/adaround_inputs.txt); `progress` (edgecompile.progress.Progress) draws
a bar per round. Only `samples` output positions (im2col patches) per layer are used, drawn at random
from the calibration images; a quarter of them is held out and a
layer keeps round-to-nearest when the learned rounding is not better on it.

The pass writes back W' in float: the quantizer's round-to-nearest then lands exactly on the learned
integers, and the element that sets max|W| of a channel keeps its value, so the scale the quantizer
computes from W' is the one used here. Symmetric int8 weights only (every backend preset's).
torch does the optimisation (compiler side only).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import onnx_ir as ir

from edgecompile.passes.base import FunctionalGraphPass

OPS = ("Conv", "Gemm", "MatMul")
ZETA, GAMMA = 1.1, -0.1
QMAX = 127


def _attr(node, name, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


class Layer:
    """One quantizable layer: its weight as (groups, O/groups, K) with output channels first, and the
    geometry that turns its input tensor into (positions, groups, K) patches."""

    def __init__(self, node, index: int):
        self.node, self.index = node, index
        w = node.inputs[1].const_value.numpy()
        self.shape, self.dtype = w.shape, w.dtype
        if node.op_type == "Conv":
            self.groups = int(_attr(node, "group", 1))
            self.kernel = w.shape[2:]
            self.strides = list(_attr(node, "strides", [1] * len(self.kernel)))
            self.dilations = list(_attr(node, "dilations", [1] * len(self.kernel)))
            self.pads = list(_attr(node, "pads", [0] * 2 * len(self.kernel)))
            o = w.shape[0]
            self.w = w.reshape(self.groups, o // self.groups, -1).astype(np.float64)
        else:
            self.groups = 1
            trans = node.op_type == "Gemm" and bool(_attr(node, "transB", 0))
            self.w = (w if trans else w.T).astype(np.float64)[None]

    @staticmethod
    def eligible(node) -> bool:
        if node.op_type not in OPS or len(node.inputs) < 2 or node.inputs[1] is None or not node.name:
            return False
        w = node.inputs[1].const_value
        if w is None or node.inputs[0] is None:
            return False
        if node.op_type == "Conv":
            return w.numpy().ndim == 4 and _attr(node, "auto_pad", "NOTSET") == "NOTSET"
        if node.op_type == "Gemm" and (_attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0):
            return False
        return w.numpy().ndim == 2

    def write(self, wq: np.ndarray) -> None:
        """Put the (groups, O/groups, K) weight back in the node's layout and dtype."""
        if self.node.op_type == "Conv":
            out = wq.reshape(self.shape)
        else:
            trans = self.node.op_type == "Gemm" and bool(_attr(self.node, "transB", 0))
            out = wq[0] if trans else wq[0].T
        v = self.node.inputs[1]
        v.const_value = ir.tensor(np.ascontiguousarray(out, dtype=self.dtype), name=v.name)

    def positions(self, x_shape) -> int:
        """Output positions one sample of the input contributes."""
        if self.node.op_type != "Conv":
            return int(np.prod(x_shape[1:-1])) if len(x_shape) > 2 else 1
        n = 1
        for i, k in enumerate(self.kernel):
            size = x_shape[2 + i] + self.pads[i] + self.pads[i + len(self.kernel)]
            n *= (size - self.dilations[i] * (k - 1) - 1) // self.strides[i] + 1
        return n

    def patches(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(len(pos), groups, K) inputs of the output positions `pos` (flat, within this batch)."""
        if self.node.op_type != "Conv":
            return x.reshape(-1, x.shape[-1])[pos][:, None, :].astype(np.float32)
        if len(self.kernel) != 2:
            raise ValueError("only 2-D convolutions")
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        p = self.pads
        xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
        wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
        ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
        b, rest = np.divmod(pos, ho * wo)
        oy, ox = np.divmod(rest, wo)
        rows = (oy * sh)[:, None] + dh * np.arange(kh)[None]
        cols = (ox * sw)[:, None] + dw * np.arange(kw)[None]
        c = np.arange(x.shape[1])
        out = xp[b[:, None, None, None], c[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
        return out.reshape(len(pos), self.groups, -1).astype(np.float32)


def scales(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """The symmetric int8 scale per output channel (groups, O/groups, 1), as ONNX Runtime computes it."""
    absmax = np.abs(w).max(axis=2, keepdims=True) if per_channel else np.full(w.shape[:2] + (1,), np.abs(w).max())
    return np.where(absmax > 0, absmax / QMAX, 1.0)


def nearest(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(w / s), -QMAX, QMAX)


def learn_rounding(w: np.ndarray, s: np.ndarray, x_in: np.ndarray, target: np.ndarray, *, iters: int,
                   batch: int, lam: float = 10.0, lr: float = 1e-2, warmup: float = 0.2, seed: int = 0) -> np.ndarray:
    """Integer weights (groups, O/groups, K) minimising ||target - (s q) x_in||^2 on the samples
    x_in (N, groups, K) -> target (N, groups, O/groups); the AdaRound optimisation."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # many small steps: on 2 shared cores a thread pool costs more than it gains
    try:
        return _learn(torch, w, s, x_in, target, iters=iters, batch=batch, lam=lam, lr=lr, warmup=warmup, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _learn(torch, w, s, x_in, target, *, iters, batch, lam, lr, warmup, seed):
    g = torch.Generator().manual_seed(seed)
    wf = np.floor(w / s)
    rest = np.clip(w / s - wf, 1e-4, 1 - 1e-4)
    v0 = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)
    v = torch.tensor(v0, dtype=torch.float32, requires_grad=True)
    floor_t = torch.tensor(wf, dtype=torch.float32)
    s_t = torch.tensor(s, dtype=torch.float32)
    xt, yt = torch.from_numpy(x_in), torch.from_numpy(target)
    opt = torch.optim.Adam([v], lr=lr)
    start = int(warmup * iters)
    with torch.no_grad():           # the loss is in units of round-to-nearest's error: scale-free
        rtn = s_t * torch.clamp(torch.round(torch.tensor(w / s, dtype=torch.float32)), -QMAX, QMAX)
        norm = (torch.einsum("gok,ngk->ngo", rtn, xt) - yt).pow(2).flatten(1).sum(1).mean().clamp_min(1e-12)
    for it in range(iters):
        idx = torch.randint(0, len(xt), (min(batch, len(xt)),), generator=g)
        h = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)
        wq = s_t * torch.clamp(floor_t + h, -QMAX, QMAX)
        out = torch.einsum("gok,ngk->ngo", wq, xt[idx])
        loss = (out - yt[idx]).pow(2).flatten(1).sum(1).mean() / norm
        if it >= start:
            beta = 20.0 + (2.0 - 20.0) * (it - start) / max(1, iters - start)
            loss = loss + lam * (1 - (2 * h - 1).abs().pow(beta)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA >= 0.5).numpy()
    return np.clip(wf + h, -QMAX, QMAX)


def error(w: np.ndarray, x_in: np.ndarray, target: np.ndarray) -> float:
    """Mean over samples of the summed squared output error of weights w on x_in."""
    out = np.einsum("gok,ngk->ngo", w.astype(np.float32), x_in)
    return float(((out - target) ** 2).reshape(len(x_in), -1).sum(1).mean())


class AdaRound(ir.passes.InPlacePass):
    """Learned rounding of every Conv/Gemm/MatMul constant weight; the quantizer is run afterwards."""

    def __init__(self, *, feeds, quantize: Callable[[ir.Model], ir.Model] | None = None, per_channel: bool = True,
                 exclude=(), inputs: str = "fp32", rounds: int = 4, samples: int = 4096, iters: int = 500,
                 batch: int = 128, lam: float = 10.0, lr: float = 1e-2, max_images: int = 256, batch_size: int = 32,
                 seed: int = 0, progress=None):
        super().__init__()
        if inputs not in ("quantized", "fp32"):
            raise ValueError(f"inputs must be 'quantized' or 'fp32', not {inputs!r}")
        if inputs == "quantized" and quantize is None:
            raise ValueError("inputs='quantized' needs the quantize callable")
        self.feeds, self.quantize, self.per_channel = list(feeds), quantize, per_channel
        self.exclude, self.inputs, self.rounds = set(exclude), inputs, max(1, rounds)
        self.samples, self.iters, self.batch, self.lam, self.lr = samples, iters, batch, lam, lr
        self.max_images, self.batch_size, self.seed, self.progress = max_images, batch_size, seed, progress
        self.notes: dict = {}

    def _collect(self, model, layers: list[Layer], names: list[str], plan: dict) -> dict:
        """{layer index: (N, groups, K) patches} of the tensors `names` (one per layer) run by `model`."""
        from edgecompile.compiler.calibration import _augmented, model_batches
        from edgecompile.targets.ort.run import create_session

        proto = ir.to_proto(model)
        sess = create_session(_augmented(proto, sorted(set(names))), level="disable")
        parts: dict[int, list] = {lay.index: [] for lay in layers}
        seen = 0
        for batch in model_batches(proto, self.feeds, self.batch_size):
            n = len(next(iter(batch.values())))
            if seen >= self.max_images:
                break
            outs = dict(zip(sorted(set(names)), sess.run(sorted(set(names)), batch)))
            for lay, name in zip(layers, names):
                x = outs[name][: self.max_images - seen]
                per = lay.positions(x.shape)
                if lay.index not in plan:            # draw the positions once, from the first batch's shape
                    total = per * min(self.max_images, self._images())
                    rng = np.random.default_rng(self.seed + lay.index)
                    plan[lay.index] = np.sort(rng.choice(total, size=min(self.samples, total), replace=False))
                pos = plan[lay.index]
                lo, hi = seen * per, (seen + len(x)) * per
                mine = pos[(pos >= lo) & (pos < hi)] - lo
                parts[lay.index].append(lay.patches(x, mine))
            seen += n
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _images(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.feeds)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        t0 = time.perf_counter()
        layers = [Layer(n, i) for i, n in enumerate(n for n in model.graph if Layer.eligible(n)
                                                     and n.name not in self.exclude)]
        self.notes = {"layers": 0, "kept_nearest": 0, "inputs": self.inputs, "samples": self.samples,
                      "iters": self.iters}
        if not layers:
            return ir.passes.PassResult(model, modified=False)
        plan: dict = {}
        x_fp = self._collect(model, layers, [lay.node.inputs[0].name for lay in layers], plan)
        targets = {lay.index: np.einsum("gok,ngk->ngo", lay.w.astype(np.float32), x_fp[lay.index])
                   for lay in layers}
        chunks = np.array_split(np.arange(len(layers)), min(self.rounds, len(layers)))
        before = after = 0.0
        for chunk in chunks:
            todo = [layers[i] for i in chunk]
            if self.inputs == "fp32":
                x_in = {lay.index: x_fp[lay.index] for lay in todo}
            else:
                qmodel = self.quantize(model)
                qin = {n.name: n.inputs[0].name for n in qmodel.graph if n.name and n.op_type in OPS}
                x_in = self._collect(qmodel, todo, [qin[lay.node.name] for lay in todo], plan)
            it = todo if self.progress is None else self.progress.iterate(
                todo, len(todo), f"adaround layers {chunk[0] + 1}-{chunk[-1] + 1}/{len(layers)}")
            for lay in it:
                e_rtn, e_ada = self._layer(lay, x_in[lay.index], targets[lay.index])
                before, after = before + e_rtn / max(e_rtn, 1e-30), after + min(e_rtn, e_ada) / max(e_rtn, 1e-30)
        self.notes.update(layers=len(layers) - self.notes["kept_nearest"], seconds=round(time.perf_counter() - t0, 1),
                          mean_heldout_error_ratio=round(after / before, 4) if before > 0 else None)
        return ir.passes.PassResult(model, modified=True)

    def _layer(self, lay: Layer, x_in: np.ndarray, target: np.ndarray) -> tuple[float, float]:
        """Learn the layer's rounding on 3/4 of the samples; write it back unless round-to-nearest is
        better on the held-out quarter. Returns (held-out error of nearest, of learned)."""
        n = len(x_in)
        rng = np.random.default_rng(self.seed + 7919 * lay.index)
        order = rng.permutation(n)
        held, fit = order[: max(1, n // 4)], order[max(1, n // 4):]
        s = scales(lay.w, self.per_channel)
        q_rtn = nearest(lay.w, s)
        q = learn_rounding(lay.w, s, x_in[fit], target[fit], iters=self.iters, batch=self.batch, lam=self.lam,
                           lr=self.lr, seed=self.seed + lay.index)
        # the element(s) that set each channel's max |W| keep their value: the quantizer's scale stays s
        top = np.abs(lay.w) >= np.abs(lay.w).max(axis=2 if self.per_channel else None, keepdims=True)
        q = np.where(top, q_rtn, q)
        e_rtn, e_ada = error(s * q_rtn, x_in[held], target[held]), error(s * q, x_in[held], target[held])
        if e_ada < e_rtn:
            lay.write(np.where(top, lay.w, s * q))
        else:
            self.notes["kept_nearest"] += 1
        return e_rtn, e_ada


def adaround_proto(proto, batches, qdq, *, per_channel: bool, exclude=(), progress=None, **options):
    """AdaRound on an ONNX proto, against `qdq(proto) -> proto` (QDQ insertion with fixed ranges):
    (new proto, notes). What the quantize pass runs between range search and bias correction."""
    p = AdaRound(feeds=batches, quantize=lambda m: ir.from_proto(qdq(ir.to_proto(m))), per_channel=per_channel,
                 exclude=exclude, progress=progress, **options)
    result = p(ir.from_proto(proto))
    return (ir.to_proto(result.model) if result.modified else proto), p.notes


class LearnedRounding(FunctionalGraphPass):
    """The `adaround = "auto"` step of a build: the quantize pass `qpass` (already run, over the accuracy
    bound) again with learned rounding and the same ranges; the report's waterfall shows it as a step."""

    name = "adaround"

    def __init__(self, qpass):
        self.qpass = qpass

    def call(self, model):
        return self.qpass.adaround()
