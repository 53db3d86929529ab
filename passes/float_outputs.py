"""Graph outputs left in float: the QuantizeLinear -> DequantizeLinear pair that a QDQ quantizer puts on a
graph output is removed, so the output is the float result of the op that computes it.

ORT's QDQ quantizer quantizes every input and output of the ops it quantizes, the network's last one
included: a classifier's logits leave the graph rounded to 256 levels of their calibrated range
(pretrained MobileNetV2: [-10.2, 20.7], a step of 0.12 on every logit). Nothing runs on those integers;
the pair only adds error. Without it the last op still runs in INT8 (its inputs keep their Q/DQ pairs, so
ORT fuses DQ -> Gemm into QGemm with a float output, OpenVINO likewise), the graph stays full INT8, and
the outputs are what the integer op computed. NNCF does the same: it places no quantizer on model outputs.

Only a pair whose DequantizeLinear output is a graph output read by no node, and whose QuantizeLinear reads
a value computed by a node (not a graph input or constant) and feeds only that DequantizeLinear, is removed;
the computed value takes the output's name, so the model's interface does not change. The pair can also
stand for an activation: ORT drops a Relu or Clip whose output it quantizes, the pair's range doing the
clamping. So the pass compares with the float graph the QDQ graph was made from (`reference`): the pair goes
where the op feeding it is the one that computes the output there (same op type, and same name when both
have one); a dropped Relu comes back as a float Relu in the pair's place; any other difference keeps the pair.
"""
from __future__ import annotations

import onnx_ir as ir

from edgecompile.passes.base import InPlaceGraphPass, PassResult


def _removable(out: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    """(QuantizeLinear, DequantizeLinear) on graph output `out`, when the pair can go."""
    dq = out.producer()
    if dq is None or dq.op_type != "DequantizeLinear" or out.uses():
        return None
    q = dq.inputs[0].producer() if dq.inputs[0] is not None else None
    if q is None or q.op_type != "QuantizeLinear" or len(q.outputs[0].uses()) != 1:
        return None
    x = q.inputs[0]
    if x is None or x.producer() is None or x.is_graph_output() or x.is_graph_input():
        return None
    return q, dq


def _same_op(a: ir.Node, b: ir.Node | None) -> bool:
    return b is not None and a.op_type == b.op_type and (not a.name or not b.name or a.name == b.name)


class FloatOutputs(InPlaceGraphPass):
    """Remove the Q/DQ pair on each graph output: outputs in float, every op still quantized."""

    name = "float-outputs"

    def __init__(self, reference: ir.Model):
        self.reference = {v.name: v.producer() for v in reference.graph.outputs}   # output -> float producer

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        done = []
        for i, out in enumerate(list(graph.outputs)):
            pair = _removable(out)
            made_by = self.reference.get(out.name)
            if pair is None or made_by is None:
                continue
            q, dq = pair
            x, name = q.inputs[0], out.name
            if _same_op(x.producer(), made_by):
                result = x
            elif made_by.op_type == "Relu" and _same_op(x.producer(), made_by.inputs[0].producer()):
                relu = ir.Node("", "Relu", [x], name=made_by.name)      # the activation ORT folded into the pair
                graph.insert_after(dq, relu)
                result = relu.outputs[0]
            else:
                continue
            if result.type is None:
                result.type = out.type
            if result.shape is None:
                result.shape = out.shape
            graph.outputs[i] = result
            graph.remove([dq, q], safe=True)
            result.name = name
            done.append(name)
        return PassResult(model, modified=bool(done), notes={"float_outputs": done} if done else {})


def float_outputs_proto(proto, reference):
    """FloatOutputs on ONNX ModelProtos (the quantize pass works on protos): `proto` made from `reference`."""
    result = FloatOutputs(ir.from_proto(reference))(ir.from_proto(proto))
    return ir.to_proto(result.model) if result.modified else proto


def float_output_names(proto) -> list[str]:
    """The graph outputs of a ModelProto that no DequantizeLinear produces."""
    dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [o.name for o in proto.graph.output if o.name not in dq]
