"""Post-training INT8 quantization: static (QDQ ONNX, calibrated) or dynamic (int8 weights,
activations quantized at run time).

Static PTQ uses our own calibrator (edgecompile.compiler.calibration: MinMax, Entropy and Percentile that
really differ) and hands the resulting ranges to ONNX Runtime's QDQQuantizer, which inserts the
QuantizeLinear/DequantizeLinear pairs, quantizes weights (per channel or per tensor) and biases.
Activation/weight types follow the backend's preset (`Backend.quant_preset`, the contract's table) unless the
[passes.quantize] keys override them.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np

from edgecompile.errors import ConfigError, DataError
from edgecompile.passes.base import FunctionalGraphPass, PassResult, for_quantizers
from edgecompile.passes.calibration_cache import CALIBRATIONS, ROUNDINGS, calibration_key, remember
from edgecompile.passes.float_outputs import float_output_names, float_outputs_proto
from edgecompile.passes.float_stems import float_stems
from edgecompile.passes.gemm_matmul import gemm_to_matmul
from edgecompile.passes.quant_ops import float_probabilities, op_types, output_rule
from edgecompile.passes.quant_preset import backend_preset, preset_for, settings  # noqa: F401  (public here too)
from edgecompile.targets.base import QuantPreset


# Ops whose presence makes quantization worthwhile (they carry the weights and the FLOPs).
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM")
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM")       # Gemm is rewritten to MatMul(+Add) first



@contextmanager
def _quiet_ort_logging():
    """ORT's quantization tooling logs through the root logger; a pass must not print."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def _count(proto, ops) -> int:
    return sum(1 for n in proto.graph.node if n.op_type in ops)


class Quantize(FunctionalGraphPass):
    """Graph pass: FP32 ONNX -> INT8 (QDQ for static, integer ops for dynamic)."""

    name = "quantize"

    def __init__(self, section=None, exclude=(), *, backend: str = "ort", calibration=None, calibration_data=None,
                 threads: int | None = None, progress=None):
        from edgecompile.compiler.config import QuantizeSection

        self.section = section or QuantizeSection()
        if self.section.mode == "auto":      # a build resolves it from the model's inputs (compiler/plan.py)
            self.section = dataclasses.replace(self.section, mode="static")
        if self.section.ops == "auto":       # the same
            self.section = dataclasses.replace(self.section, ops="all")
        if self.section.smooth_alpha is None:
            self.section = dataclasses.replace(self.section, smooth_alpha=0.95 if self._matmul_only else 0.5)
        self.exclude = tuple(exclude)        # node names kept in float (the precision search's fallback)
        self.backend = backend               # whose preset (Backend.quant_preset) the QDQ graph follows
        self.calibration = calibration       # edgecompile.data.Dataset | None
        self.calibration_data = calibration_data   # Python API: an iterable of feeds, preferred when given
        self.threads = threads
        self.progress = progress
        self._calibrated, self.smoothing = None, None   # the last static run (proto, preset, ranges, notes)
        self._nearest = None                 # the same before adaround() (round-to-nearest weights)
        self._key = None                     # the last static run's calibration key (calibration_cache)
        if self.section.mode not in ("static", "dynamic"):
            raise ConfigError(f"the quantize pass runs static or dynamic PTQ, not {self.section.mode!r}",
                              hint="mode 'qat' is handled by the QAT module pass")
        if not 0.0 < self.section.percentile <= 100.0:
            raise ConfigError(f"[passes.quantize] percentile must be in (0, 100], got {self.section.percentile:g}",
                              hint="e.g. 99.99 clips the top 0.01 % of |x|")
        if (self.section.float_stem_channels or 0) < 0:
            raise ConfigError("[passes.quantize] float_stem_channels must be 0 or more", hint="0 quantizes every conv")
        if self.section.calib_samples < 1:
            raise ConfigError(f"[passes.quantize] calib_samples must be at least 1, got {self.section.calib_samples}")

    @property
    def _matmul_only(self) -> bool:
        """Static INT8 with Q/DQ on MatMul inputs only: every MatMul activation is smoothed, at alpha 0.95."""
        return self.section.mode == "static" and self.section.ops == "matmul"

    def options(self) -> dict:
        s = self.section
        opts = {"mode": s.mode, "per_channel": s.per_channel}
        if self.exclude:
            opts["exclude"] = list(self.exclude)
        if self.smoothing:           # after a run: what the smoothing did (the manifest records it)
            opts["smoothing"] = self.smoothing
        if s.mode == "static":
            opts.update(ops=s.ops, calibrate=s.calibrate, calib_samples=s.calib_samples, equalize=s.equalize,
                        bias_correction=s.bias_correction, adaround=s.adaround)
            if s.calibrate == "percentile":
                opts["percentile"] = s.percentile
        return opts

    def call(self, model) -> PassResult:
        import onnx
        import onnx_ir as ir

        proto = onnx.shape_inference.infer_shapes(ir.to_proto(for_quantizers(model)))
        if not _count(proto, COMPUTE_OPS):
            return PassResult(model.clone(), False, {"nothing_to_quantize":
                              f"the graph has no {'/'.join(COMPUTE_OPS)} op; kept FP32"})
        preset_name, preset = settings(self.section, self.backend)
        if self.section.mode == "dynamic" and self.backend == "tensorrt":
            raise ConfigError("TensorRT runs static (QDQ) INT8 only, not dynamic quantization",
                              hint="use --quantize static with calibration data")
        if self.section.smooth_alpha:        # transformers: LayerNorm-output outliers into the weights
            from edgecompile.passes.smoothquant import smooth_proto

            has_data = self.calibration is not None or self.calibration_data is not None
            proto, self.smoothing = smooth_proto(proto, self._calibration_feeds, self.section.smooth_alpha, has_data,
                                                 every=self._matmul_only)
        with _quiet_ort_logging():
            if self.section.mode == "dynamic":
                out, notes = self._dynamic(proto, preset)
            else:
                out, notes = self._static(proto, preset)
        if out is None:
            return PassResult(model.clone(), False, notes)
        notes = {"mode": self.section.mode, "preset": preset_name, **notes}
        if self.smoothing:
            notes["smoothing"] = self.smoothing
        return PassResult(ir.from_proto(out), True, notes)

    # -- static -------------------------------------------------------------------------------
    def _calibration_feeds(self, proto):
        from edgecompile.compiler.calibration import collect_feeds, graph_input_specs

        specs = graph_input_specs(proto)
        limit = self.section.calib_samples
        given = self.calibration_data
        if given is not None:
            return collect_feeds(given, specs, limit, "calibration_data") + ("calibration_data (Python API)",
                                                                             frozenset())
        if self.calibration is not None:
            ds = self.calibration.take(limit)
            batches, n = collect_feeds(ds.batches(64), specs, limit, f"calibration data {ds.identity}", ds.whole)
            return batches, n, ds.identity, ds.whole
        raise DataError("static INT8 quantization needs calibration data and this model has none",
                        hint="pass --data FILE.npz (arrays named after the inputs), set [data] calibration, "
                             "use --quantize dynamic, or pass calibration_data= in the Python API")

    def _static(self, proto, preset: QuantPreset):
        from edgecompile.compiler.calibration import collect_stats, compute_ranges, tensors_to_calibrate

        batches, n, identity, whole = self._calibration_feeds(proto)
        key = self._key = calibration_key(proto, batches, self.section, preset, self.exclude)
        hit = CALIBRATIONS.get(key)
        if hit is not None:          # same graph, data and settings: another backend candidate of `auto`
            proto, ranges, notes, self._rounding = hit
            notes = {**notes, "calibration_reused": True}
            self.last_ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}
            self._calibrated = (proto, preset, ranges, notes)
            out = self._qdq(proto, preset, ranges, self.exclude)
            return out, {**notes, **_op_notes(out), **self._exclude_notes()}
        steps = {}
        if self.section.equalize:
            proto, steps["equalization"] = _equalize(proto, batches)
        names = tensors_to_calibrate(proto, op_types(self.section.ops))
        method = self.section.calibrate
        nonfinite: set[str] = set()
        stats = collect_stats(proto, names, batches, histograms=method not in ("minmax", "sample-mean"),
                              threads=self.threads, progress=self.progress, whole=whole, nonfinite=nonfinite)
        chosen = None
        if method == "search":       # per tensor: the candidate with the smallest quantization MSE
            from edgecompile.compiler.range_search import search_ranges

            ranges, chosen = search_ranges(stats, unsigned_activations=preset.activations == "uint8",
                                           symmetric=preset.symmetric_activations,
                                           keep=tuple(o.name for o in proto.graph.output))
        else:
            ranges = compute_ranges(stats, method, percentile=self.section.percentile,
                                    unsigned_activations=preset.activations == "uint8",
                                    symmetric=preset.symmetric_activations)
        clipped = sum(1 for k, (lo, hi) in ranges.items()
                      if (lo, hi) != (min(stats[k].lo, 0.0), max(stats[k].hi, 0.0)))
        notes = {"calibrate": method, "calib_samples": n, "calib_data": identity,
                 "tensors_calibrated": len(ranges), "ranges_clipped": clipped, **_preset_notes(preset)}
        if nonfinite:   # inf/NaN or a float32-min fill: no INT8 range, these tensors and their ops stay float
            notes["float_nonfinite"] = sorted(nonfinite)
        if method == "percentile":
            notes["percentile"] = self.section.percentile
        if chosen is not None:
            notes["range_search"] = dict(sorted(Counter(chosen.values()).items()))
        self._rounding = (proto, batches, preset, ranges, dict(notes), dict(steps))   # for adaround() later
        proto, last = self._round_and_correct(proto, batches, preset, ranges, learned=self.section.adaround is True)
        notes.update(steps, **last)
        # kept for the report and for tests; plain floats
        self.last_ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}
        self._calibrated = (proto, preset, ranges, notes)
        remember(key, (proto, ranges, notes, self._rounding))
        out = self._qdq(proto, preset, ranges, self.exclude)
        return out, {**notes, **_op_notes(out), **self._exclude_notes()}

    def _round_and_correct(self, proto, batches, preset, ranges, learned: bool):
        """The static run's last steps on calibrated ranges: learned rounding (AdaRound) when `learned`,
        then bias correction measured against the weights from before rounding moved them."""
        qdq = lambda p: self._qdq(p, preset, ranges, self.exclude)  # noqa: E731
        steps, reference = {}, None
        if learned:
            from edgecompile.passes.adaround import adaround_proto

            reference = _weights(proto)
            proto, steps["adaround"] = adaround_proto(proto, batches, qdq, per_channel=preset.per_channel,
                                                      exclude=self.exclude, progress=self.progress)
        if self.section.bias_correction:
            proto, steps["bias_correction"] = _correct_bias(proto, batches, qdq, reference)
        return proto, steps

    def adaround(self) -> PassResult:
        """The last static run again with learned rounding (before bias correction), same ranges:
        `adaround = "auto"` runs it when the round-to-nearest result is over the accuracy bound."""
        import onnx_ir as ir

        proto, batches, preset, ranges, notes, steps = self._rounding
        self._nearest = self._calibrated
        hit = ROUNDINGS.get(self._key) if self._key else None
        with _quiet_ort_logging():
            if hit is None:
                proto, last = self._round_and_correct(proto, batches, preset, ranges, learned=True)
                if self._key:
                    remember(self._key, (proto, last), ROUNDINGS)
            else:                     # another backend candidate of `auto` learned these roundings already
                proto, last = hit[0], {**hit[1], "adaround_reused": True}
            notes = {**notes, **steps, **last}     # the cached calibration's dicts stay as they were
            self._calibrated = (proto, preset, ranges, notes)
            out = self._qdq(proto, preset, ranges, self.exclude)
        return PassResult(ir.from_proto(out), True, {"mode": "static", **notes, **_op_notes(out),
                                                     **self._exclude_notes()})

    def keep_nearest(self) -> None:
        """Undo adaround(): later requantize() calls use the round-to-nearest calibration again (the
        float fallback: rounding fitted to quantized upstream layers is wrong once they stay float)."""
        if self._nearest is not None:
            self._calibrated, self._nearest = self._nearest, None

    def _exclude_notes(self) -> dict:
        notes = {"float_nodes": list(self.exclude)} if self.exclude else {}
        static = self.section.mode == "static" and self._calibrated
        stems = float_stems(*self._calibrated[:2]) if static else []
        probs = float_probabilities(self._calibrated[0], self.section.ops) if static else []
        extra = {"float_stems": stems, "float_probabilities": probs}
        return {**notes, **{k: v for k, v in extra.items() if v}}

    def _qdq(self, proto, preset: QuantPreset, ranges, exclude):
        """QDQ graph from calibrated ranges, leaving the `exclude`d nodes (and the preset's float stems) in float."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
        from onnxruntime.quantization.quant_utils import update_opset_version

        from edgecompile.compiler.calibration import unranged_nodes

        enum = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
            "search": CalibrationMethod.Percentile,
            "sample-mean": CalibrationMethod.MinMax,
        }[self.section.calibrate]
        tensors = TensorsData(enum, {k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                                     for k, (lo, hi) in ranges.items()})
        act, wt = _qtype(preset.activations), _qtype(preset.weights)
        model = update_opset_version(proto, wt, act)
        types = op_types(self.section.ops)
        exclude = [*exclude, *(n for n in float_stems(proto, preset) + unranged_nodes(proto, ranges, types)
                               + float_probabilities(proto, self.section.ops) if n not in exclude)]
        with _quiet_ort_logging():
            quantizer = QDQQuantizer(model, preset.per_channel, False, wt, act, tensors, [], list(exclude), types,
                                     {"ActivationSymmetric": preset.symmetric_activations,
                                      "WeightSymmetric": preset.symmetric_weights, **output_rule(self.section.ops)})
            return float_outputs_proto(quantizer.quantize_model(), proto)   # no Q/DQ on graph outputs

    def requantize(self, exclude) -> PassResult:
        """The last static run's calibration, re-applied with other nodes kept in float: a fallback
        search step costs one QDQ insertion, not a recalibration."""
        import onnx_ir as ir

        if self._calibrated is None:
            raise RuntimeError("requantize() needs a prior run of this pass")
        if self.section.mode == "dynamic":          # no calibration: quantize again without `exclude`
            proto, preset = self._calibrated
            self.exclude = tuple(exclude)
            with _quiet_ort_logging():
                out, notes = self._dynamic(proto, preset)
            return PassResult(ir.from_proto(out if out is not None else proto), out is not None,
                              {"mode": "dynamic", **notes, **self._exclude_notes()})
        proto, preset, ranges, notes = self._calibrated
        self.exclude = tuple(exclude)
        out = self._qdq(proto, preset, ranges, self.exclude)
        return PassResult(ir.from_proto(out), True, {"mode": "static", **notes, **_op_notes(out),
                                                     **self._exclude_notes()})

    # -- dynamic ------------------------------------------------------------------------------
    def _dynamic(self, proto, preset: QuantPreset):
        from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
        from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType, update_opset_version

        self._calibrated = (proto, preset)
        proto, rewritten = gemm_to_matmul(proto)
        if self.backend == "openvino":      # int8 weights; OpenVINO quantizes activations per group at run time
            from edgecompile.passes.weight_int8 import openvino_dynamic

            return openvino_dynamic(proto, self.exclude, rewritten)
        if not any(n.op_type in DYNAMIC_OPS for n in proto.graph.node):
            return None, {"nothing_to_quantize": "dynamic PTQ quantizes MatMul/Gemm/Attention/LSTM; "
                                                 "the graph has none (use --quantize static for conv nets)"}
        wt = _qtype(preset.weights)
        model = update_opset_version(proto, wt)
        quantizer = ONNXQuantizer(model, preset.per_channel, False, QuantizationMode.IntegerOps, False, wt,
                                  QuantType.QUInt8, None, [], list(self.exclude), list(DYNAMIC_OPS),
                                  {"MatMulConstBOnly": True})
        quantizer.quantize_model()
        out = quantizer.model.model
        n = _count(out, ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention"))
        if n == 0:
            return None, {"nothing_to_quantize": "no MatMul with a constant weight to quantize dynamically"}
        return out, {"quantized_ops": n, "gemm_rewritten": rewritten, "weights": preset.weights,
                     "per_channel": preset.per_channel, "activations": "uint8 (dynamic, per batch)"}


def _equalize(proto, batches):
    """Cross-layer equalization (passes/equalize.py), ReLU6-aware through the calibration data."""
    import onnx_ir as ir

    from edgecompile.passes.equalize import CrossLayerEqualization

    p = CrossLayerEqualization(feeds=batches)
    result = p(ir.from_proto(proto))
    return (ir.to_proto(result.model) if result.modified else proto), p.notes


def _correct_bias(proto, batches, qdq, reference=None):
    """Empirical bias correction (passes/bias_correction.py) against `qdq(proto)` with fixed ranges;
    `reference`: the float weights before AdaRound moved them onto the grid."""
    import onnx_ir as ir

    from edgecompile.passes.bias_correction import BiasCorrection

    p = BiasCorrection(feeds=batches, quantize=lambda m: ir.from_proto(qdq(ir.to_proto(m))), reference=reference)
    result = p(ir.from_proto(proto))
    return (ir.to_proto(result.model) if result.modified else proto), p.notes


def _weights(proto) -> dict:
    """{initializer name: array} of the graph's constant weights (before AdaRound moves them)."""
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if len(i.dims) >= 2}


def _preset_notes(p: QuantPreset) -> dict:
    d = asdict(p)
    return {"activations": d["activations"], "weights": d["weights"], "per_channel": d["per_channel"],
            "symmetric_activations": d["symmetric_activations"]}


def _op_notes(proto) -> dict:
    floats = float_output_names(proto)          # graph outputs not behind a DequantizeLinear
    return {"quantized_ops": _quantized_ops(proto), **({"float_outputs": floats} if floats else {})}


def _quantized_ops(proto) -> int:
    """Compute ops whose weight input comes through a DequantizeLinear."""
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in proto.graph.node
               if n.op_type in COMPUTE_OPS and len(n.input) > 1 and n.input[1] in dq_out)
