"""The ONNX side of QAT, run after export: weight QuantizeLinear nodes folded into int8 initializers, and
(the precision stage reports it: edgecompile.compiler.precision_summary)."""
from __future__ import annotations

import numpy as np

def fold_weight_quantize(model) -> int:
    """In an exported QAT graph, replace QuantizeLinear(constant float weight, constant scale,
    constant zero point) by the quantized initializer it computes, so a weight is stored as int8
    and only dequantized (PTQ's layout). Returns the number of folded weights."""
    import onnx_ir as ir

    count = 0
    for node in list(model.graph):
        if node.op_type != "QuantizeLinear" or len(node.inputs) < 3:
            continue
        x, scale, zp = node.inputs[:3]
        if x is None or scale is None or zp is None:
            continue
        if x.const_value is None or scale.const_value is None or zp.const_value is None:
            continue
        if not x.is_initializer():
            continue
        w = x.const_value.numpy().astype(np.float32)
        sc = scale.const_value.numpy().astype(np.float32)
        z = zp.const_value.numpy()
        axis = node.attributes.get_int("axis", 1)
        if sc.ndim == 1 and sc.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            sc, zz = sc.reshape(shape), z.reshape(shape).astype(np.int64)
        else:
            zz = z.astype(np.int64)
        info = np.iinfo(z.dtype)
        q = np.clip(np.rint(w / sc) + zz, info.min, info.max).astype(z.dtype)
        out = node.outputs[0]
        name = f"{x.name}_quantized"
        qv = ir.Value(name=name, shape=ir.Shape(q.shape), type=ir.TensorType(ir.DataType.from_numpy(q.dtype)),
                      const_value=ir.Tensor(q, name=name))
        model.graph.register_initializer(qv)
        out.replace_all_uses_with(qv)
        model.graph.remove(node, safe=True)
        if not x.uses() and x.name in model.graph.initializers:
            del model.graph.initializers[x.name]
        count += 1
    return count
