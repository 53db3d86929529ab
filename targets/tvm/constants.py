"""Constant folding done in numpy where TVM's would compile a kernel.

ConvertLayout leaves each convolution's weights as `permute_dims(constant)` (OIHW -> HWIO) and its bias as
`permute_dims(reshape(constant))`. Relax's FoldConstant evaluates each such call by legalizing it, compiling the
TIR with LLVM and running it: 2.5 s of a ResNet-18 rebuild (41 calls). A transpose or reshape of a constant is
numpy's; what else is constant is left to FoldConstant.
"""

from __future__ import annotations

import numpy as np


FOLDED = ("relax.permute_dims", "relax.reshape")


def fold_transposes(mod):
    """`mod` with every `permute_dims` and `reshape` of a constant (or of a variable bound to one) replaced by
    the resulting constant."""
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Fold(PyExprMutator):
        def constant(self, expr):
            """The numpy value of `expr` when it is a constant or a variable bound to one, else None."""
            if isinstance(expr, relax.Var):
                expr = self.lookup_binding(expr)
            return expr.value.numpy() if isinstance(expr, Constant) else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            if name not in FOLDED or (value := self.constant(call.args[0])) is None:
                return call
            if name == "relax.permute_dims":
                axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
                value = np.transpose(value, axes)
            elif all(isinstance(d, (int, tvm.tirx.IntImm)) for d in call.ty.shape):
                value = value.reshape([int(d) for d in call.ty.shape])
            else:                             # a symbolic shape: left to FoldConstant
                return call
            return relax.const(np.ascontiguousarray(value), str(call.ty.dtype))

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = Fold().visit_expr(func)
    return out
