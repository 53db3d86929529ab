"""Everything for a TensorRT engine that can be prepared without TensorRT.

- `entropy_amax` / `calibrate`: TensorRT's entropy calibration (KL divergence between a tensor's
  |x| histogram and its 128-level quantized version) computed with ONNX Runtime on our calibration
  data, for every float activation of the graph.
- `calibration_cache_text`: those ranges in TensorRT's calibration cache text format, which
  `IInt8EntropyCalibrator2.read_calibration_cache` hands back to the builder (implicit INT8).
- `build_plan`: every builder setting (precision flags, workspace, optimization profiles, DLA,
  timing cache) as JSON, so the device can build the engine exactly as planned.
- `strip_qdq`: the float graph a Q/DQ graph simulates (for the CPU fallback).
- `fold_int32_dequantize`: int32 bias DequantizeLinear -> float initializers (TensorRT takes int8 Q/DQ only).
"""
from __future__ import annotations

import re
import struct

import numpy as np
import onnx_ir as ir

from edgecompile.errors import CompileError

HIST_BINS = 2048
QUANT_LEVELS = 128          # |x| mapped to 0..127
ALGORITHM = "EntropyCalibration2"


# -- calibration -----------------------------------------------------------------------------------

def entropy_amax(hist: np.ndarray, edges: np.ndarray, stride: int = 8) -> float:
    """The |x| threshold minimising KL(P || Q), P the clipped histogram, Q its 128-level quantization.

    Candidate thresholds are every `stride`-th bin edge from 128 bins up to the full range. The first
    bin's count is replaced by the second's (as NVIDIA's pytorch-quantization does), so the spike of
    exact zeros after a ReLU does not pull the threshold down.
    """
    hist = np.asarray(hist, dtype=np.float64).copy()
    n = len(hist)
    if n < QUANT_LEVELS or hist.sum() == 0:
        return float(edges[-1])
    hist[0] = hist[1]        # exact zeros (e.g. after ReLU) would dominate the divergence: level them out
    best_kl, best_i = np.inf, n
    candidates = list(range(QUANT_LEVELS, n + 1, stride))
    if candidates[-1] != n:
        candidates.append(n)
    for i in candidates:
        ref = hist[:i].copy()
        outliers = hist[i:].sum()
        ref[i - 1] += outliers
        body = hist[:i]
        group = (np.arange(i) * QUANT_LEVELS) // i               # quantized level of each reference bin
        nonzero = body > 0
        level_sum = np.bincount(group, weights=body, minlength=QUANT_LEVELS)
        level_cnt = np.bincount(group, weights=nonzero.astype(np.float64), minlength=QUANT_LEVELS)
        q = np.where(nonzero, level_sum[group] / np.maximum(level_cnt[group], 1.0), 0.0)
        if q.sum() == 0:
            continue
        p = ref / ref.sum()
        q = q / q.sum()
        mask = p > 0
        qm = np.where(q[mask] > 0, q[mask], 1e-12)               # bins empty in Q but not in P (e.g. outliers)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def activation_names(model: ir.Model) -> list[str]:
    """Float tensors TensorRT needs a range for: graph inputs and every node output."""
    names = [v.name for v in model.graph.inputs if v.dtype is not None and v.dtype.is_floating_point()]
    for node in model.graph:
        for v in node.outputs:
            if v.name and v.dtype is not None and v.dtype.is_floating_point() and v.name not in names:
                names.append(v.name)
    return names


def _with_all_outputs(model: ir.Model, names: list[str]) -> bytes:
    clone = ir.from_proto(ir.to_proto(model))
    present = {v.name for v in clone.graph.outputs}
    inputs = {v.name for v in clone.graph.inputs}
    for node in clone.graph:
        for v in node.outputs:
            if v.name in names and v.name not in present and v.name not in inputs:
                clone.graph.outputs.append(v)
                present.add(v.name)
    return ir.to_proto(clone).SerializeToString()


def calibrate(model: ir.Model, dataset, samples: int = 256, batch: int = 32, progress=None) -> dict[str, float]:
    """{tensor name: amax} for every float activation, by entropy calibration on `dataset`."""
    from edgecompile.targets.ort.run import create_session

    if dataset is None or len(dataset) == 0:
        raise CompileError("implicit INT8 needs calibration data",
                           hint="give [data] calibration (e.g. digits:calibration) or use explicit Q/DQ INT8")
    ds = dataset.take(samples)
    names = activation_names(model)
    sess = create_session(_with_all_outputs(model, names), level="disable")
    out_names = [o.name for o in sess.get_outputs()]
    input_names = {v.name for v in model.graph.inputs}
    batches = list(ds.batches(batch))

    def values(feeds):
        res = dict(zip(out_names, sess.run(out_names, feeds)))
        res.update({k: v for k, v in feeds.items() if k in input_names})
        return res

    amax_seen = {n: 0.0 for n in names}
    it = progress.iterate(batches, len(batches), "calibration pass 1/2") if progress else batches
    for feeds in it:
        for k, v in values(feeds).items():
            if k in amax_seen and v.size:
                amax_seen[k] = max(amax_seen[k], float(np.max(np.abs(v))))
    hists = {n: np.zeros(HIST_BINS, np.int64) for n in names}
    it = progress.iterate(batches, len(batches), "calibration pass 2/2") if progress else batches
    for feeds in it:
        for k, v in values(feeds).items():
            if k in hists and amax_seen[k] > 0:
                hists[k] += np.histogram(np.abs(v), bins=HIST_BINS, range=(0.0, amax_seen[k]))[0]
    out = {}
    for n in names:
        edges = np.linspace(0.0, amax_seen[n], HIST_BINS + 1)
        out[n] = entropy_amax(hists[n], edges) if amax_seen[n] > 0 else 0.0
    return out


def version_number(version: str) -> int:
    """TensorRT's integer version as in its calibration cache header (10.x: M*10000 + m*100 + p)."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        raise CompileError(f"cannot parse TensorRT version {version!r}", hint="use e.g. 10.1 or 10.1.0")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def scale_hex(amax: float) -> str:
    """The per-tensor scale (amax / 127) as TensorRT writes it: big-endian float32 bits in hex."""
    scale = max(float(amax), 1e-8) / 127.0
    return struct.pack(">f", scale).hex()


def calibration_cache_text(amax: dict[str, float], version: str) -> str:
    lines = [f"TRT-{version_number(version)}-{ALGORITHM}"]
    lines += [f"{name}: {scale_hex(a)}" for name, a in amax.items()]
    return "\n".join(lines) + "\n"


def parse_calibration_cache(text: str) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) from a TensorRT calibration cache text."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not re.match(r"^TRT-\d+-\w+$", lines[0]):
        raise CompileError("not a TensorRT calibration cache (bad header)", hint="regenerate it")
    scales = {}
    for ln in lines[1:]:
        name, _, value = ln.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
    return lines[0], scales


# -- build plan ------------------------------------------------------------------------------------

def input_profiles(model: ir.Model, cfg) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes per input: the leading dynamic dimension takes the batch range."""
    lo, opt, hi = cfg.min_batch, cfg.opt_batch, cfg.max_batch
    if not (1 <= lo <= opt <= hi):
        raise CompileError(f"[tensorrt] batch range must satisfy 1 <= min_batch <= opt_batch <= max_batch "
                           f"(got {lo}, {opt}, {hi})", hint="fix min_batch/opt_batch/max_batch in the config")
    out = {}
    for v in model.graph.inputs:
        dims = list(v.shape or ())
        shapes = {"min": [], "opt": [], "max": []}
        for i, d in enumerate(dims):
            if isinstance(d, int):
                for k in shapes:
                    shapes[k].append(d)
            elif i == 0:
                shapes["min"].append(lo)
                shapes["opt"].append(opt)
                shapes["max"].append(hi)
            else:
                raise CompileError(f"input {v.name!r} has a dynamic dimension {i} ({d}) besides the batch",
                                   hint="export with static non-batch dimensions; TensorRT needs a shape range")
        out[v.name] = shapes
    return out


def precision_flags(precision: str) -> list[str]:
    """TensorRT BuilderFlags for a bundle precision. INT8 keeps FP16 on for the layers left in float."""
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


def build_plan(model: ir.Model, *, precision: str, int8_mode: str | None, profile, cfg, onnx_file: str,
               calibration_file: str | None, compatibility: dict, qdq: dict | None) -> dict:
    """The TensorRT builder settings, complete enough to build the engine on the device."""
    gpu = dict(profile.gpu or {})
    dla = None
    if cfg.dla_core is not None:
        cores = int(gpu.get("dla_cores", 0))
        if not 0 <= cfg.dla_core < cores:
            raise CompileError(f"[tensorrt] dla_core {cfg.dla_core} does not exist on {profile.name} "
                               f"({cores} DLA cores)", hint=f"use 0..{cores - 1} or leave dla_core unset"
                               if cores else "this device has no DLA; leave dla_core unset")
        if precision == "fp32":
            raise CompileError("DLA runs fp16 or int8 layers only, and this bundle is fp32",
                               hint="use --precision fp16 or int8 with [tensorrt] dla_core, or leave dla_core unset")
        dla = {"core": cfg.dla_core, "gpu_fallback": cfg.gpu_fallback}
    return {
        "tensorrt_version": cfg.version,
        "onnx": onnx_file,
        "device": {"profile": profile.name, "sm": gpu.get("sm"), "dla_cores": gpu.get("dla_cores", 0)},
        "precision": precision,
        "flags": precision_flags(precision) + (["GPU_FALLBACK"] if dla and dla["gpu_fallback"] else []),
        "int8": None
        if precision != "int8"
        else {
            "mode": int8_mode,
            "calibration_cache": calibration_file,
            "calibrator": "IInt8EntropyCalibrator2 (reads the cache, never recalibrates)"
            if int8_mode == "implicit"
            else None,
        },
        "workspace_bytes": int(cfg.workspace_mb) * (1 << 20),
        "optimization_level": cfg.optimization_level,
        "profiles": [input_profiles(model, cfg)],
        "dla": dla,
        "timing_cache": {
            "enabled": cfg.timing_cache,
            "file": "cache/tensorrt/timing-{tensorrt_version}-sm{major}{minor}.cache",
            "key": "tensorrt version + compute capability",
        },
        "engine_cache": "cache/tensorrt/{tensorrt_version}-sm{major}{minor}-{bundle_id[:16]}.engine",
        "checks": {"compatibility": compatibility, "qdq": qdq},
    }


# -- the float graph behind a Q/DQ graph (for the CPU fallback) ------------------------------------

def strip_qdq(model: ir.Model) -> tuple[ir.Model, int]:
    """Remove Q->DQ pairs (x -> Q -> DQ -> y becomes x -> y) and fold DQ of constant weights into float
    initializers holding the dequantized values. Returns (a new model, number of nodes removed)."""
    clone = ir.from_proto(ir.to_proto(model))
    graph = clone.graph
    removed = 0
    for node in list(graph):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        x, out = node.inputs[0], node.outputs[0]
        prod = x.producer() if x is not None else None
        if prod is not None and prod.op_type == "QuantizeLinear":
            src = prod.inputs[0]
            if out.is_graph_output():
                if src.is_graph_input() or src.is_graph_output():
                    continue
                idx = next(i for i, v in enumerate(graph.outputs) if v is out)
                name = out.name
                out.name = f"{name}__dequantized"
                src.name = name
                graph.outputs[idx] = src
            out.replace_all_uses_with(src)
            graph.remove(node, safe=True)
            removed += 1
            if not x.uses() and not x.is_graph_output():
                graph.remove(prod, safe=True)
                removed += 1
        elif _fold_constant_dq(graph, node):
            removed += 1
    import onnx_ir.passes.common as common

    clone = common.RemoveUnusedNodesPass()(clone).model
    return clone, removed


def _fold_constant_dq(graph: ir.Graph, node: ir.Node) -> bool:
    """Replace DequantizeLinear(constant) by a float32 initializer with the dequantized values."""
    x, out = node.inputs[0], node.outputs[0]
    scale_v = node.inputs[1] if len(node.inputs) > 1 else None
    zp_v = node.inputs[2] if len(node.inputs) > 2 else None
    if x is None or x.const_value is None or out.is_graph_output() or scale_v is None or scale_v.const_value is None:
        return False
    if zp_v is not None and zp_v.const_value is None:
        return False
    q = x.const_value.numpy().astype(np.float64)
    scale = scale_v.const_value.numpy().astype(np.float64)
    zp = zp_v.const_value.numpy().astype(np.float64) if zp_v is not None else np.zeros_like(scale)
    if scale.ndim == 1 and scale.size > 1:
        axis = node.attributes["axis"].value if "axis" in node.attributes else 1
        shape = [1] * q.ndim
        shape[axis if axis >= 0 else axis + q.ndim] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    values = ((q - zp) * scale).astype(np.float32)
    w = ir.Value(name=f"{out.name}_float", shape=ir.Shape(values.shape), type=ir.TensorType(ir.DataType.FLOAT),
                 const_value=ir.tensor(values, name=f"{out.name}_float"))
    graph.register_initializer(w)
    out.replace_all_uses_with(w)
    graph.remove(node, safe=True)
    return True


def fold_int32_dequantize(model: ir.Model) -> tuple[ir.Model, int]:
    """TensorRT dequantizes int8 only: fold DequantizeLinear of constant int32 tensors (quantized biases,
    as ONNX Runtime's quantizer writes them) into float32 initializers with exactly the dequantized
    values. Returns (model, number of nodes folded); the model is changed in place."""
    folded = 0
    for node in list(model.graph):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        x = node.inputs[0]
        if x is not None and x.dtype == ir.DataType.INT32 and _fold_constant_dq(model.graph, node):
            folded += 1
    return model, folded


# -- what the calibration cache does to accuracy (an ORT simulation, not the engine) ---------------

_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def simulate_implicit_int8(model: ir.Model, amax: dict[str, float]) -> ir.Model:
    """The graph with every calibrated activation (except network outputs) fake-quantized (symmetric int8,
    scale amax/127, as the cache tells TensorRT) and Conv/Gemm/MatMul weights quantized per output channel
    (as TensorRT does).
    It bounds the INT8 error from above: TensorRT may keep some layers in FP16/FP32."""
    clone = ir.from_proto(ir.to_proto(model))
    graph = clone.graph
    opset = max(13, dict(clone.opset_imports).get("", 13))
    values = {v.name: v for v in graph.inputs}
    for node in graph:
        for v in node.outputs:
            values[v.name] = v
    for name, a in amax.items():
        v = values.get(name)
        if v is None or not v.uses() or v.is_graph_output():
            continue                  # network outputs stay float in TensorRT unless asked otherwise
        scale = ir.tensor(np.array(max(a, 1e-8) / 127.0, np.float32), name=f"{name}__scale")
        zero = ir.tensor(np.array(0, np.int8), name=f"{name}__zp")
        s_v = ir.Value(name=scale.name, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT), const_value=scale)
        z_v = ir.Value(name=zero.name, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT8), const_value=zero)
        graph.register_initializer(s_v)
        graph.register_initializer(z_v)
        uses = list(v.uses())
        q = ir.Node("", "QuantizeLinear", [v, s_v, z_v], name=f"{name}__q", version=opset)
        dq = ir.Node("", "DequantizeLinear", [q.outputs[0], s_v, z_v], name=f"{name}__dq", version=opset)
        dq.outputs[0].name = f"{name}__fq"
        dq.outputs[0].dtype = v.dtype
        dq.outputs[0].shape = v.shape
        producer = v.producer()
        if producer is None:
            graph.insert_before(graph[0], [q, dq])
        else:
            graph.insert_after(producer, [q, dq])
        for use in uses:
            use.node.replace_input_with(use.idx, dq.outputs[0])
    for node in graph:
        idx = _WEIGHT_INPUT.get(node.op_type)
        if idx is None or len(node.inputs) <= idx or node.inputs[idx] is None or node.inputs[idx].const_value is None:
            continue
        w = node.inputs[idx].const_value.numpy().astype(np.float32)
        axis = 0 if node.op_type in ("Conv",) or (node.op_type == "Gemm" and _attr_int(node, "transB")) else (
            1 if node.op_type == "ConvTranspose" else w.ndim - 1)
        red = tuple(i for i in range(w.ndim) if i != axis)
        s = np.maximum(np.abs(w).max(axis=red, keepdims=True), 1e-12) / 127.0
        wq = (np.clip(np.round(w / s), -127, 127) * s).astype(np.float32)
        new = ir.Value(
            name=f"{node.inputs[idx].name}__int8sim",
            shape=ir.Shape(wq.shape),
            type=ir.TensorType(ir.DataType.FLOAT),
            const_value=ir.tensor(wq, name=f"{node.inputs[idx].name}__int8sim"),
        )
        graph.register_initializer(new)
        node.replace_input_with(idx, new)
    return clone


def _attr_int(node: ir.Node, name: str, default: int = 0) -> int:
    a = node.attributes.get(name)
    return default if a is None else int(a.value)


def estimate_implicit_int8(model: ir.Model, amax: dict[str, float], dataset, samples: int = 1024) -> dict:
    """Top-1 agreement and output cosine of the simulated INT8 graph against the FP32 graph (ORT)."""
    from edgecompile.targets.ort.build import ort_outputs

    ds = dataset.take(samples)
    ref = ort_outputs(ir.to_proto(model).SerializeToString(), ds.batches(128))[0]
    sim = ort_outputs(ir.to_proto(simulate_implicit_int8(model, amax)).SerializeToString(), ds.batches(128))[0]
    r, s = ref.reshape(len(ref), -1).astype(np.float64), sim.reshape(len(sim), -1).astype(np.float64)
    cos = float(np.sum(r * s) / max(np.linalg.norm(r) * np.linalg.norm(s), 1e-30))
    return {"n": len(ds), "top1_agreement": float(np.mean(r.argmax(1) == s.argmax(1))) if r.shape[1] > 1 else None,
            "output_cosine": cos, "method": "ORT simulation of the calibration cache + per-channel int8 weights "
                                            "(not the engine; TensorRT may keep layers in fp16)"}
