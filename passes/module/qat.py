"""Quantization-aware training (module pass): fake-quantize the torch module the way the PTQ pass
would quantize its graph, fine-tune it, and let the exporter emit the QDQ graph.

Path used (torch 2.13 + onnxscript 0.7, verified by tests/test_qat.py): the maintained ATen ops
`torch.fake_quantize_per_tensor_affine` (activations) and `torch.fake_quantize_per_channel_affine`
(weights). Their gradients are straight-through within the clamp range, and the dynamo exporter
turns each into a QuantizeLinear/DequantizeLinear pair (`torch.ao.quantization` is not used).

Steps:
1. Conv+BatchNorm pairs are folded (eval statistics): the weight that gets quantized is the one
   the exported graph carries, exactly as PTQ sees it after export.
2. Every Conv1d/2d and Linear is wrapped in a `FakeQuantized` module: its input is fake-quantized
   per tensor with the target's activation preset (uint8 asymmetric for ORT/OpenVINO, int8
   symmetric for TensorRT -- `passes.quant_preset.settings`), its weight per output channel
   (symmetric int8, scale = max|w| / 127).
3. Activation ranges are initialised by the PTQ calibrator (`edgecompile.compiler.calibration
   .compute_ranges`, same method/percentile/sample count as `[passes.quantize]`) on statistics of
   the wrapped layers' inputs over the calibration data. They stay fixed during training; weight
   scales follow the weights while training and are frozen afterwards.
4. Training: `qat_epochs` epochs of cross-entropy fine-tuning on the bound training split (Adam,
   low LR, deterministic), or -- Python API -- `build(..., train_step=fn)` where
   `fn(module, epoch)` runs one epoch of the user's own loop (the module is in train mode).
5. Notes: the task metric of the FP32 module, of the PTQ-initialised fake-quant module (before
   training: what PTQ with these ranges gives) and after QAT, measured in torch on the
   evaluation split, for the report's FP32 / PTQ / QAT comparison.

After export the graph's weight QuantizeLinear nodes are folded into int8 initializers
(`fold_weight_quantize`, called by the precision stage), so the bundle has the same
"int8 initializer -> DequantizeLinear -> Conv" form as PTQ output.
"""
from __future__ import annotations

import numpy as np

from edgecompile.errors import ConfigError, DataError
from edgecompile.passes.base import ModulePass, ModuleResult, PassContext

QAT_LR = 1e-4          # fine-tuning a converged model: 1e-3 (Adam) already costs digits accuracy
SEED = 0


def _torch():
    import torch

    return torch


_META_LIB = None
_CACHEMASK_OPS = ("fake_quantize_per_tensor_affine_cachemask",
                  "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams",
                  "fake_quantize_per_channel_affine_cachemask")


def register_export_kernels() -> list[str]:
    """Meta kernels for the fake-quant ops' "cachemask" forms, which torch 2.13 lacks.

    `torch.fake_quantize_*` is a composite op that runs `*_cachemask`; with a dynamic batch
    dimension torch.export must propagate shapes through it on meta tensors, and without a Meta
    kernel the export fails (a static batch only works through an unsafe fallback). The kernel
    is pure shape logic (output and mask shaped like the input), registered once per process and
    only where torch has none. Returns the ops registered now."""
    global _META_LIB
    torch = _torch()

    def meta(x, *args):
        return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)

    added = []
    for op in _CACHEMASK_OPS:
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", "Meta"):
            continue
        if _META_LIB is None:
            _META_LIB = torch.library.Library("aten", "IMPL")
        _META_LIB.impl(op, meta, "Meta")
        added.append(op)
    return added


def act_qparams(lo: float, hi: float, unsigned: bool, symmetric: bool) -> tuple[float, int, int, int]:
    """(scale, zero_point, qmin, qmax) for an activation range, in ORT's QDQ convention: the range
    always contains 0; uint8 asymmetric -> zp = round(-lo / scale); symmetric -> zp 0 (int8) or
    128 (uint8); a degenerate range gets scale 1."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if unsigned:
        qmin, qmax = 0, 255
        if symmetric:
            absmax = max(-lo, hi)
            scale = absmax / 127.5 if absmax > 0 else 1.0
            return scale, 128, qmin, qmax
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        zp = int(np.clip(round(-lo / scale), 0, 255))
        return scale, zp, qmin, qmax
    absmax = max(-lo, hi)
    scale = absmax / 127.0 if absmax > 0 else 1.0
    return scale, 0, -128, 127


def weight_scales(weight):
    """Per-output-channel symmetric int8 scale max|w| / 127 (1 for an all-zero channel)."""
    torch = _torch()
    absmax = weight.detach().abs().flatten(1).amax(1)
    return torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax)).float()


def _make_wrapper():
    torch = _torch()
    F = torch.nn.functional

    class FakeQuantized(torch.nn.Module):
        """A Conv/Linear whose input and weight go through fake quantization."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            out = inner.weight.shape[0]
            self.register_buffer("act_scale", torch.tensor(1.0))
            self.register_buffer("act_zero_point", torch.tensor(0, dtype=torch.int32))
            self.register_buffer("w_scale", weight_scales(inner.weight))
            self.register_buffer("w_zero_point", torch.zeros(out, dtype=torch.int32))
            self.act_qmin, self.act_qmax = 0, 255
            self.observe = False

        def set_activation(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
            self.act_scale.fill_(float(scale))
            self.act_zero_point.fill_(int(zero_point))
            self.act_qmin, self.act_qmax = qmin, qmax

        def freeze_weight_scales(self) -> None:
            self.w_scale.copy_(weight_scales(self.inner.weight))

        def forward(self, x):
            x = torch.fake_quantize_per_tensor_affine(x, self.act_scale, self.act_zero_point,
                                                      self.act_qmin, self.act_qmax)
            scale = weight_scales(self.inner.weight) if self.training else self.w_scale
            w = torch.fake_quantize_per_channel_affine(self.inner.weight, scale, self.w_zero_point, 0, -128, 127)
            m = self.inner
            if isinstance(m, torch.nn.Linear):
                return F.linear(x, w, m.bias)
            if isinstance(m, torch.nn.Conv1d):
                return F.conv1d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
            return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)

    return FakeQuantized


def fold_batchnorm(module) -> int:
    """Fold every Conv directly followed by a BatchNorm (inside a Sequential) in place."""
    torch = _torch()
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (isinstance(conv, (torch.nn.Conv1d, torch.nn.Conv2d)) and
                    isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))):
                seq._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq._modules[b] = torch.nn.Identity()
                folded += 1
    return folded


def insert_fake_quant(module) -> list:
    """Wrap every Conv1d/Conv2d/Linear (not already wrapped) in place; returns the wrappers."""
    torch = _torch()
    FakeQuantized = _make_wrapper()
    wrappers = []

    def visit(parent):
        for name, child in list(parent._modules.items()):
            if isinstance(child, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
                w = FakeQuantized(child)
                parent._modules[name] = w
                wrappers.append(w)
            elif child is not None and child.__class__.__name__ != "FakeQuantized":
                visit(child)

    visit(module)
    return wrappers


def _batches(ds, input_names):
    torch = _torch()
    for feeds in ds.batches(64):
        yield [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names]


def calibrate(module, wrappers, ds, method: str, percentile: float, unsigned: bool, symmetric: bool,
              input_names) -> dict[str, tuple[float, float]]:
    """Activation ranges of each wrapper's input, by the PTQ calibrator; sets the wrappers' qparams."""
    torch = _torch()
    from edgecompile.compiler.calibration import HIST_BINS, TensorStats, compute_ranges

    names = {w: f"layer{i}" for i, w in enumerate(wrappers)}
    stats = {n: TensorStats(np.inf, -np.inf) for n in names.values()}
    want_hist = method not in ("minmax", "sample-mean")
    phase = {"hist": False}

    def hook(w, args):
        x = args[0].detach()
        s = stats[names[w]]
        if phase["hist"]:
            if s.absmax > 0:
                h, _ = np.histogram(x.abs().numpy(), bins=HIST_BINS, range=(0.0, s.absmax))
                s.hist = h if s.hist is None else s.hist + h
        else:
            s.add_samples(x.numpy(), len(x) if x.ndim else 1)      # the range, and for calibrate = "sample-mean"

    handles = [w.register_forward_pre_hook(hook) for w in wrappers]
    try:
        module.eval()
        _bypass(wrappers, True)            # observe the FP32 activations, as PTQ does
        with torch.no_grad():
            for _ in (0, 1) if want_hist else (0,):
                for xs in _batches(ds, input_names):
                    module(*xs)
                phase["hist"] = True
    finally:
        _bypass(wrappers, False)
        for h in handles:
            h.remove()
    ranges = compute_ranges(stats, method, percentile=percentile, unsigned_activations=unsigned,
                            symmetric=symmetric)
    for w in wrappers:
        w.set_activation(*act_qparams(*ranges[names[w]], unsigned, symmetric))
    return ranges


def _bypass(wrappers, on: bool) -> None:
    """While calibrating, the wrappers run their inner FP32 layer (no fake quantization)."""
    for w in wrappers:
        if on:
            w.forward = w.inner.forward        # instance attribute shadows the class method
        else:
            w.__dict__.pop("forward", None)


def task_metric(module, ds, reference=None) -> float | None:
    """Top-1 against the labels, or agreement with `reference` argmax when there are none."""
    from edgecompile.compiler.training import predict

    if ds is None:
        return None
    out = predict(module, ds)[0]
    if ds.labels is not None:
        return float(np.mean(out.argmax(1) == ds.labels))
    if reference is not None:
        return float(np.mean(out.argmax(1) == reference.argmax(1)))
    return None


class QuantizationAwareTraining(ModulePass):
    """Module pass "qat"."""

    name = "qat"

    def __init__(self, section=None):
        from edgecompile.compiler.config import QuantizeSection

        self.section = section or QuantizeSection(mode="qat")
        if self.section.qat_epochs < 0:
            raise ConfigError(f"[passes.quantize] qat_epochs must be >= 0, got {self.section.qat_epochs}",
                              hint="e.g. --qat-epochs 3")

    def options(self) -> dict:
        s = self.section
        return {"mode": "qat", "qat_epochs": s.qat_epochs, "calibrate": s.calibrate,
                "calib_samples": s.calib_samples, "per_channel": True}

    def __call__(self, module, ctx: PassContext) -> ModuleResult:
        _torch()   # fails early with a clear error when torch is missing
        from edgecompile.passes.quant_preset import settings
        from edgecompile.passes.quantize import _preset_notes
        from edgecompile.compiler.training import deterministic, train_classifier

        s = self.section
        register_export_kernels()
        preset_name, preset = settings(s, ctx.backend)
        if not preset.per_channel or preset.weights != "int8":
            raise ConfigError("QAT fake-quantizes weights as per-channel symmetric int8 only",
                              hint="drop the [passes.quantize] weights/per_channel overrides for --quantize qat")
        step = (ctx.options or {}).get("train_step")
        if step is not None and not callable(step):
            raise ConfigError("train_step must be a callable fn(module, epoch)")
        if step is None and s.qat_epochs and (ctx.train is None or ctx.train.labels is None):
            raise DataError("QAT needs labelled training data and this model has none",
                            hint="use a model with a training split, or pass train_step=fn(module, epoch) "
                                 "to edgecompile.build")
        calib = ctx.calibration if ctx.calibration is not None else ctx.train
        if calib is None:
            raise DataError("QAT initialises from PTQ calibration and this model has no calibration data",
                            hint="pass --data FILE.npz or set [data] calibration")
        calib = calib.take(s.calib_samples)
        input_names = [t.name for t in ctx.source.inputs]
        unsigned = preset.activations == "uint8"
        ev = ctx.evaluation
        module.eval()
        reference = None
        if ev is not None and ev.labels is None:
            from edgecompile.compiler.training import predict

            reference = predict(module, ev)[0]
        fp32_metric = task_metric(module, ev, reference)

        with deterministic(SEED):
            folded = fold_batchnorm(module)
            wrappers = insert_fake_quant(module)
            if not wrappers:
                return ModuleResult(module, False, {"nothing_to_quantize": "no Conv/Linear layer in the module"})
            ranges = calibrate(module, wrappers, calib, s.calibrate, s.percentile, unsigned,
                               preset.symmetric_activations, input_names)
            for w in wrappers:
                w.freeze_weight_scales()
            ptq_metric = task_metric(module, ev, reference)
            if ctx.progress is not None and s.qat_epochs:
                ctx.progress.debug(f"qat: {len(wrappers)} layers fake-quantized, PTQ-initialised metric {ptq_metric}")
            if step is not None:
                for epoch in range(s.qat_epochs):
                    module.train()
                    step(module, epoch)
                trained_with = "train_step (Python API)"
            elif s.qat_epochs:
                train_classifier(module, ctx.train, epochs=s.qat_epochs, lr=QAT_LR, seed=SEED,
                                 weight_decay=0.0, input_name=input_names[0])
                trained_with = ctx.train.identity
            else:
                trained_with = None
            module.eval()
            for w in wrappers:
                w.freeze_weight_scales()
            # inference from here on: with gradients off the fake-quant ops stay the plain ATen ops
            # the exporter maps to Q/DQ (with grad they dispatch to a "cachemask" variant it cannot trace)
            module.requires_grad_(False)
            qat_metric = task_metric(module, ev, reference)

        notes = {"mode": "qat", "preset": preset_name, **_preset_notes(preset),
                 "layers": len(wrappers), "batchnorm_folded": folded, "epochs": s.qat_epochs,
                 "trained_with": trained_with,
                 "calibration": {"method": s.calibrate, "samples": len(calib), "data": calib.identity,
                                 **({"percentile": s.percentile} if s.calibrate == "percentile" else {})},
                 "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()},
                 "comparison": {"metric": "top1" if (ev is not None and ev.labels is not None) else "top1_agreement",
                                "data": None if ev is None else ev.identity, "measured_with": "torch fake-quant",
                                "fp32": fp32_metric, "ptq": ptq_metric, "qat": qat_metric}}
        return ModuleResult(module, True, notes)


