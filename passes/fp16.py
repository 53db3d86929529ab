"""FP16 graph pass: float32 weights and activations -> float16, with FP32 islands and I/O.

Done on the onnx_ir graph (no protobuf surgery, no extra dependency):

1. every float32 initializer becomes float16 (values beyond the FP16 range are clipped to
   +-65504 and counted), every float32 value produced by a node becomes float16, float32
   `Cast`/`Constant`/`ConstantOfShape` nodes produce float16;
2. nodes whose op type is in the block list (`[passes.fp16] block_list`; by default reductions,
   Softmax/LogSoftmax, Exp/Log/Pow and friends whose FP16 range or accumulation is unsafe, and
   Resize whose `scales` input must stay float32) run in FP32 between a Cast to float32 on each
   float input and a Cast back to float16 on each float output;
3. graph inputs and outputs keep their float32 type with a Cast at the boundary
   (`io_types = "float32"`, the default, so callers feed the same arrays as for FP32), or become
   float16 (`io_types = "float16"`);
4. Cast(float16 -> float32) -> Cast(float32 -> float16) chains left between neighbouring
   blocked nodes are removed.

Graphs with control-flow subgraphs (If/Loop/Scan) are left as they are (noted): converting their
bodies consistently is not implemented.
"""
from __future__ import annotations

import numpy as np

from edgecompile.errors import ConfigError
from edgecompile.passes.base import FunctionalGraphPass, PassResult

FP16_MAX = 65504.0
DEFAULT_BLOCK_LIST = ("ReduceSum", "ReduceMean", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2",
                      "ReduceLogSum", "ReduceLogSumExp", "CumSum", "Softmax", "LogSoftmax", "Exp", "Log",
                      "Pow", "Erf", "Resize", "Range", "TopK", "NonMaxSuppression", "RoiAlign")
IO_TYPES = ("float32", "float16")


def _ir():
    import onnx_ir as ir

    return ir


class Float16(FunctionalGraphPass):
    """Graph pass "fp16"."""

    name = "fp16"

    def __init__(self, section=None):
        from edgecompile.compiler.config import Fp16Section

        self.section = section or Fp16Section()
        if self.section.io_types not in IO_TYPES:
            raise ConfigError(f"[passes.fp16] io_types must be one of {', '.join(IO_TYPES)}, "
                              f"got {self.section.io_types!r}")

    @property
    def block_list(self) -> tuple[str, ...]:
        b = self.section.block_list
        return DEFAULT_BLOCK_LIST if b is None else tuple(b)

    def options(self) -> dict:
        return {"io_types": self.section.io_types, "block_list": list(self.block_list)}

    def call(self, model) -> PassResult:
        ir = _ir()
        if any(a.type == ir.AttributeType.GRAPH or a.type == ir.AttributeType.GRAPHS
               for node in model.graph.all_nodes() for a in node.attributes.values()):
            return PassResult(model.clone(), False, {"not_converted": "the graph has control-flow subgraphs"})
        import onnx

        # every value needs its element type to be converted (or kept): infer the ones the graph lacks
        model = ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model)))
        notes = convert(model, set(self.block_list), keep_io_fp32=self.section.io_types == "float32")
        if not notes["converted_values"] and not notes["converted_initializers"]:
            return PassResult(model, False, {"nothing_to_convert": "the graph has no float32 tensor"})
        return PassResult(model, True, notes)


def convert(model, block: set[str], keep_io_fp32: bool = True) -> dict:
    """Convert `model` (onnx_ir) to FP16 in place; returns notes."""
    ir = _ir()
    F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
    graph = model.graph
    clipped = 0

    # 1. initializers
    n_init = 0
    for value in list(graph.initializers.values()):
        if value.dtype != F32 or value.const_value is None:
            continue
        arr = value.const_value.numpy()
        over = int(np.count_nonzero(np.abs(arr) > FP16_MAX))
        clipped += over
        half = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)
        value.const_value = ir.Tensor(half, name=value.name)
        value.dtype = F16
        n_init += 1

    # node outputs and dtype-carrying attributes
    n_vals = 0
    for node in list(graph):
        if node.op_type == "Cast" and node.domain == "" and node.attributes.get_int("to") == F32.value:
            node.attributes["to"] = ir.AttrInt64("to", F16.value)
        if node.op_type in ("Constant", "ConstantOfShape") and "value" in node.attributes:
            t = node.attributes["value"].value
            if t.dtype == F32:
                node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(
                    np.clip(t.numpy(), -FP16_MAX, FP16_MAX).astype(np.float16), name=t.name))
        for out in node.outputs:
            if out.dtype == F32:
                out.dtype = F16
                n_vals += 1

    # graph inputs (before the islands, so that blocked consumers get their Cast back to float32)
    cast_io = 0
    if keep_io_fp32:
        for k, inp in enumerate(list(graph.inputs)):
            if inp.dtype != F32:
                continue
            if inp.is_initializer():
                continue
            users = list(inp.uses())
            if not users:
                continue
            cast = ir.node("Cast", [inp], {"to": F16.value}, name=f"input{k}_to_fp16")
            cast.outputs[0].dtype = F16
            cast.outputs[0].shape = inp.shape
            cast.outputs[0].name = f"{inp.name}_fp16"
            graph.insert_before(graph.node(0), cast)
            for user, idx in users:
                user.replace_input_with(idx, cast.outputs[0])
            cast_io += 1
    else:
        for inp in graph.inputs:
            if inp.dtype == F32 and not inp.is_initializer():
                inp.dtype = F16

    # 2. FP32 islands for blocked ops
    islands = 0
    island_ops = set()
    for nb, node in enumerate([n for n in graph if n.op_type in block]):
        touched, tag = False, node.name or f"{node.op_type}_{nb}"   # fused graphs have unnamed nodes
        for i, inp in enumerate(node.inputs):
            if inp is not None and inp.dtype == F16:
                cast = ir.node("Cast", [inp], {"to": F32.value}, name=f"{tag}_in{i}_to_fp32")
                cast.outputs[0].dtype = F32
                cast.outputs[0].shape = inp.shape
                cast.outputs[0].name = f"{tag}_in{i}_fp32"
                graph.insert_before(node, cast)
                node.replace_input_with(i, cast.outputs[0])
                touched = True
        for j, out in enumerate(node.outputs):
            if out.dtype != F16:
                continue
            touched = True
            # the node keeps producing `out`, now float32 and renamed; a Cast back to float16 takes
            # over its name, its consumers and its graph-output slot
            uses = list(out.uses())
            slots = [k for k, o in enumerate(graph.outputs) if o is out]
            name = out.name
            out.name, out.dtype = f"{name}_fp32", F32
            cast = ir.node("Cast", [out], {"to": F16.value}, name=f"{tag}_out{j}_to_fp16")
            half = cast.outputs[0]
            half.name, half.dtype, half.shape = name, F16, out.shape
            graph.insert_after(node, cast)
            for user, idx in uses:
                user.replace_input_with(idx, half)
            for k in slots:
                graph.outputs[k] = half
        islands += touched
        if touched:
            island_ops.add(node.op_type)

    # 3. graph outputs
    if keep_io_fp32:
        for k, out in enumerate(list(graph.outputs)):
            if out.dtype != F16:
                continue
            name = out.name
            out.name = f"{name}_fp16"
            final = ir.Value(name=name, shape=out.shape, type=ir.TensorType(F32))
            cast = ir.node("Cast", [out], {"to": F32.value}, name=f"output{k}_to_fp32", outputs=[final])
            graph.append(cast)
            graph.outputs[k] = final
            cast_io += 1

    removed = _drop_cast_pairs(graph)
    graph.sort()
    return {"io_types": "float32" if keep_io_fp32 else "float16", "converted_initializers": n_init,
            "converted_values": n_vals, "fp32_islands": islands,
            "fp32_nodes": sorted(island_ops),
            "boundary_casts": cast_io, "cast_pairs_removed": removed, "clipped_weights": clipped}


def _drop_cast_pairs(graph) -> int:
    """Remove Cast(to fp32) whose input comes from Cast(to fp16) of a float32 value: reuse that value."""
    ir = _ir()
    F32, F16 = ir.DataType.FLOAT.value, ir.DataType.FLOAT16.value
    removed = 0
    for node in list(graph):
        if node.op_type != "Cast" or node.attributes.get_int("to") != F32:
            continue
        src = node.inputs[0].producer()
        if src is None or src.op_type != "Cast" or src.attributes.get_int("to") != F16:
            continue
        origin = src.inputs[0]
        if origin.dtype != ir.DataType.FLOAT:
            continue
        final = node.outputs[0]
        if final.is_graph_output():
            if origin.is_graph_input() or origin.is_graph_output() or origin.is_initializer():
                continue
            # a float32 result about to leave the graph: it leaves as it is, under the output's name
            slots = [k for k, o in enumerate(graph.outputs) if o is final]
            name = final.name
            final.name = f"{name}_unused"
            for k in slots:
                graph.outputs[k] = origin
            origin.name = name
        final.replace_all_uses_with(origin)
        graph.remove(node, safe=True)
        removed += 1
        mid = src.outputs[0]
        if not mid.uses() and not mid.is_graph_output():
            graph.remove(src, safe=True)
    return removed
