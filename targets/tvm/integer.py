"""TVM INT8 that is INT8: the QDQ convolutions and matmuls of a quantized graph become integer kernels.

TVM's ONNX frontend imports a QDQ graph as it reads: dequantize -> float conv2d/matmul -> quantize, so an
"INT8" library computes in float and pays for the (de)quantization on top. This rewrite, on the imported
Relax module, replaces each

    conv2d(dequantize(xq, sx, zx), dequantize(Wq, sw, 0))         xq uint8 (one scale), Wq int8 constant
    matmul(dequantize(xq, sx, zx), [permute_dims](dequantize(Wq, sw, 0)))

by the integer kernel and a float epilogue:

    acc = conv2d(xq, Wq, out_dtype=int32)            u8 x s8 -> s32: what AVX512-VNNI (vpdpbusd) and
    acc = acc - zx * conv2d(ones, Wq)                ARM's dot-product instructions compute
    y   = float(acc) * (sx * sw)

The zero-point correction is a constant: the convolution of an all-ones input with the weights (zero
padding, so at the borders it counts only the taps inside the image) times zx; for a matmul, zx times the
weights' column sums. The epilogue, the bias add and the next quantize fuse into the integer kernel, so the
activations between layers are uint8. Everything else (residual adds, pooling, tensors with per-channel
activation scales, grouped convolutions, asymmetric weights) stays as the frontend imported it.
"""
from __future__ import annotations

import numpy as np

QUANTIZE, DEQUANTIZE = "relax.quantize", "relax.dequantize"


def integer_kernels(mod):
    """(module, counts): `mod` with its QDQ conv2d/matmul pairs as integer kernels; counts =
    {"integer_kernels": {"conv2d": n, "matmul": m}, "float_kernels": {...}} (rewritten / left float)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    counts = {"integer_kernels": {"conv2d": 0, "matmul": 0}, "float_kernels": {"conv2d": 0, "matmul": 0}}

    @mutator
    class Elementwise(PyExprMutator):      # second pass: what is left of quantize/dequantize
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", "") not in (QUANTIZE, DEQUANTIZE):
                return call
            new = _elementwise(self, relax, call)
            return call if new is None else new

    @mutator
    class Integer(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            if name not in ("relax.nn.conv2d", "relax.matmul"):
                return call
            kind = "conv2d" if name == "relax.nn.conv2d" else "matmul"
            data = _dequantized_activation(self, call.args[0])
            weight = _dequantized_weight(self, call.args[1])
            new = None
            if data is not None and weight is not None:
                new = (_conv2d if kind == "conv2d" else _matmul)(self, relax, call, data, weight)
            counts["float_kernels" if new is None else "integer_kernels"][kind] += 1
            return new if new is not None else call

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = Elementwise().visit_expr(Integer().visit_expr(func))
    return relax.transform.DeadCodeElimination()(out), counts


# -- what a rewrite needs: the quantized input and constant int8 weights ----------------------------------------

def _bound(mutator_, expr):
    """The call a dataflow variable is bound to (or the expression itself)."""
    from tvm import relax

    while isinstance(expr, relax.Var):
        value = mutator_.lookup_binding(expr)
        if value is None:
            return expr
        expr = value
    return expr


def _const(expr):
    from tvm.ir.expr import Constant

    return expr.value.numpy() if isinstance(expr, Constant) else None


def _scalar_qparams(call):
    """(scale, zero point) of a quantize/dequantize call with one constant scale and zero point; else None."""
    s, z = _const(call.args[1]), _const(call.args[2])
    if s is None or z is None or s.size != 1 or z.size != 1:
        return None
    return float(s.reshape(())), int(z.reshape(()))


def _elementwise(mutator_, relax, call):
    """quantize/dequantize of an activation with one scale and zero point as the elementwise ops their
    legalization computes (the same rounding and clipping): ops whose layout ConvertLayout can change, so
    an NHWC network stays NHWC across them. Constants (weights, biases) are left to constant folding."""
    data, params = call.args[0], _scalar_qparams(call)
    if _const(data) is not None or params is None:
        return None
    s, z = relax.const(np.float32(params[0])), params[1]
    emit, dtype = mutator_.builder_.emit, str(call.attrs.out_dtype)
    if call.op.name == QUANTIZE:
        if dtype not in ("uint8", "int8"):
            return None
        lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
        q = emit(relax.op.round(emit(relax.op.divide(data, s))))
        if z:
            q = emit(relax.op.add(q, relax.const(float(z), "float32")))
        # clip as two broadcast ops (ConvertLayout has no layout rule for clip)
        q = emit(relax.op.maximum(emit(relax.op.minimum(q, relax.const(float(hi), "float32"))),
                                  relax.const(float(lo), "float32")))
        return relax.op.astype(q, dtype)
    if dtype != "float32":
        return None
    diff = emit(relax.op.astype(data, "int32"))
    if z:
        diff = emit(relax.op.subtract(diff, relax.const(z, "int32")))
    return relax.op.multiply(emit(relax.op.astype(diff, "float32")), s)


def _dequantized_activation(mutator_, expr):
    """(xq, scale, zero point) when `expr` is dequantize(uint8 tensor, one scale, one zero point)."""
    call = _bound(mutator_, expr)
    if getattr(getattr(call, "op", None), "name", "") != DEQUANTIZE:
        return None
    params = _scalar_qparams(call)
    if params is None or str(call.args[0].ty.dtype) != "uint8":
        return None
    return (call.args[0], *params)


def _dequantized_weight(mutator_, expr):
    """(int8 weights, per-output scales, permuted) for dequantize(int8 constant, scales, zero points 0),
    optionally under permute_dims (a Gemm's transposed weight); None otherwise."""
    call = _bound(mutator_, expr)
    perm = None
    if getattr(getattr(call, "op", None), "name", "") == "relax.permute_dims":
        perm = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else None
        if perm is None or len(perm) != 2:
            return None
        call = _bound(mutator_, call.args[0])
    if getattr(getattr(call, "op", None), "name", "") != DEQUANTIZE:
        return None
    w, s, z = (_const(a) for a in call.args)
    if w is None or s is None or z is None or w.dtype != np.int8 or np.any(z != 0):
        return None
    axis = int(call.attrs.axis) % w.ndim
    scales = np.broadcast_to(s.astype(np.float64).reshape(-1), (w.shape[axis],)).copy()
    return w, scales, axis, perm


# -- the rewrites ---------------------------------------------------------------------------------------------

def _conv2d(mutator_, relax, call, data, weight):
    a = call.attrs
    xq, sx, zx = data
    w, sw, axis, perm = weight
    if (perm is not None or w.ndim != 4 or axis != 0 or int(a.groups) != 1 or str(a.data_layout) != "NCHW"
            or str(a.kernel_layout) != "OIHW" or str(a.out_layout) != "NCHW"):
        return None
    out_shape = [int(d) for d in call.ty.shape]
    strides, padding, dilation = ([int(v) for v in x] for x in (a.strides, a.padding, a.dilation))
    emit = mutator_.builder_.emit
    acc = emit(relax.op.nn.conv2d(xq, relax.const(w, "int8"), strides, padding, dilation, 1, "NCHW", "OIHW",
                                  "NCHW", out_dtype="int32"))
    if zx:
        in_hw = [int(d) for d in xq.ty.shape][2:]
        corr = zx * _ones_conv(w.astype(np.int64), in_hw, out_shape[2:], strides, padding, dilation)
        acc = emit(relax.op.subtract(acc, relax.const(corr.astype(np.int32), "int32")))
    scale = (sx * sw).astype(np.float32).reshape(1, -1, 1, 1)
    return relax.op.multiply(emit(relax.op.astype(acc, "float32")), relax.const(scale, "float32"))


def _matmul(mutator_, relax, call, data, weight):
    xq, sx, zx = data
    w, sw, axis, perm = weight
    if w.ndim != 2:
        return None
    if perm == [1, 0]:
        w, axis = w.T, 1 - axis
    elif perm is not None:
        return None
    if axis != 1:             # the scales must run along the output columns
        return None
    emit = mutator_.builder_.emit
    wc = np.ascontiguousarray(w)
    acc = emit(relax.op.matmul(xq, relax.const(wc, "int8"), out_dtype="int32"))
    if zx:
        acc = emit(relax.op.subtract(acc, relax.const((zx * wc.astype(np.int64).sum(axis=0)).astype(np.int32),
                                                      "int32")))
    return relax.op.multiply(emit(relax.op.astype(acc, "float32")),
                             relax.const((sx * sw).astype(np.float32), "float32"))


def _ones_conv(w, in_hw, out_hw, strides, padding, dilation):
    """conv2d(ones(1, C, H, W), w) with zero padding, as int64 (1, O, OH, OW); (1, O, 1, 1) where every output
    position sees the whole kernel (no padding)."""
    taps = w.sum(axis=1)                                   # (O, KH, KW): summed over input channels
    if not any(padding):
        return taps.sum(axis=(1, 2)).reshape(1, -1, 1, 1)
    inside = []
    for d in range(2):                                     # which (output position, tap) pairs read the image
        pos = np.arange(out_hw[d])[:, None] * strides[d] - padding[d] + np.arange(w.shape[2 + d])[None, :] * dilation[d]
        inside.append(((pos >= 0) & (pos < in_hw[d])).astype(np.int64))
    return np.einsum("ak,bl,okl->oab", inside[0], inside[1], taps)[None]
