"""Convolutions computed from weights packed at build time, in the form MetaSchedule tensorizes with an x86
16-lane instruction: AVX512-VNNI for integer convolutions (vnni.py), AVX-512 FMA for float ones (fma.py).

An NHWC/HWIO convolution never matches a 16-lane tensor intrinsic: its weights' output channels are not grouped
by 16 next to a group of input channels. `pack_convs` computes each eligible NHWC convolution (constant weights,
groups 1, output channels a multiple of 16) from weights packed as [O/16, KH, KW, I/4, <16 lanes x 4 inputs>]
(input channels zero-padded to a multiple of 4; the activation's padding stage pads them too), whose inner tile
is the intrinsic's: [16, 4] for VNNI (4 bytes summed into each int32 lane), [4, 16] for FMA (one 16-lane vector
of weights per input channel, times that channel's activation broadcast).

MetaSchedule's parallel/vectorize post-processor may vectorize the innermost tile loop outside a 16-lane block
("Cannot broadcast lanes=16 to 32", or the init loop vectorized twice: "VectorizeLoop before LiftStorageAlloc"),
failing those candidates. `SerialAroundTensorize`, placed right after it, unrolls such loops instead (the block
is the vector work).

ResNet-18's packed convolutions after tuning, per kernel: bench/results/tvm_vs_ort_20min_vnni_kernels.txt
(integer) and bench/results/tvm_vs_ort_20min_fma_kernels.txt (float).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompile.targets.tvm.lanes import GROUP, LANES

TENSORIZE_ANN = "meta_schedule.auto_tensorize"


@dataclass(frozen=True)
class PackedForm:
    """A convolution form a 16-lane tensor intrinsic computes."""
    name: str                   # kernels are conv2d_nhwc_NAME; `lowering` counts them as NAME_conv2d
    intrin: str                 # the tensor intrinsic MetaSchedule tensorizes its inner tile with
    feature: str                # the x86 CPU feature (LLVM's name) the intrinsic's instruction needs
    data: str                   # dtypes: activation, weights, accumulator (the convolution's output)
    weight: str
    acc: str
    lanes_inner: bool           # weights' inner tile [GROUP, LANES] (True) or [LANES, GROUP]
    winograd: bool = False      # 3x3 stride-1 convolutions as Winograd F(4x4/2x2, 3x3) (winograd.py)

    @property
    def kernel(self) -> str:
        return f"conv2d_nhwc_{self.name}"

    @property
    def count_key(self) -> str:
        return f"{self.name}_conv2d"

    def target_has(self, target) -> bool:
        """Whether `target` is an x86 LLVM target whose CPU has this form's instruction."""
        from tvm.target import codegen

        if str(target.kind.name) != "llvm":
            return False
        triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
        if not triple.startswith(("x86_64", "i686", "i386")):
            return False
        try:
            return bool(codegen.target_has_features(self.feature, target))
        except Exception:     # an LLVM without the query: no tensorization
            return False


def pack_weights(w_hwio: np.ndarray, form: PackedForm) -> np.ndarray:
    """HWIO weights -> [O/16, KH, KW, ceil(I/4), <inner tile>] in `form`'s dtype, inputs zero-padded to x4."""
    kh, kw, i, o = w_hwio.shape
    i4 = -(-i // GROUP)
    w = np.zeros((kh, kw, i4 * GROUP, o), form.weight)
    w[:, :, :i, :] = w_hwio
    blocks = w.reshape(kh, kw, i4, GROUP, o // LANES, LANES)        # axes: kh kw i4 group o16 lane
    return np.ascontiguousarray(blocks.transpose((4, 0, 1, 2, 3, 5) if form.lanes_inner else (4, 0, 1, 2, 5, 3)))


def conv_te(data, packed, strides, padding, dilation, in_channels: int, out_channels: int, form: PackedForm):
    """The NHWC convolution from `form`'s packed weights (TE), in the form its tensor intrinsic matches."""
    from tvm import te, tirx

    n, h, w, _ = (int(d) for d in data.shape)
    _, kh, kw, i4 = (int(d) for d in packed.shape[:4])
    top, left, bottom, right = padding
    sh, sw = strides
    dh, dw = dilation
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if any(padding) or i4 * GROUP != in_channels:
        zero = tirx.const(0, form.data)

        def pad(b, y, x, c):
            inside = tirx.all(y >= top, y < top + h, x >= left, x < left + w, c < in_channels)
            return tirx.if_then_else(inside, data[b, y - top, x - left, c], zero)

        src = te.compute((n, h + top + bottom, w + left + right, i4 * GROUP), pad, name="pad_temp")
    else:
        src = data
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    rc, rk = te.reduce_axis((0, i4), name="rc"), te.reduce_axis((0, GROUP), name="rk")

    def weight(o, y, x, c, k):
        tile = (k, o % LANES) if form.lanes_inner else (o % LANES, k)
        return packed[(o // LANES, y, x, c, *tile)]

    return te.compute(
        (n, oh, ow, out_channels),
        lambda b, y, x, o: te.sum(
            src[b, y * sh + ry * dh, x * sw + rx * dw, rc * GROUP + rk].astype(form.acc)
            * weight(o, ry, rx, rc, rk).astype(form.acc), axis=[ry, rx, rc, rk]),
        name=form.kernel)


def _form_of(call, forms):
    """The form among `forms` that computes this NHWC/HWIO relax conv2d, or None."""
    from tvm.ir.expr import Constant

    a, (data, weight) = call.attrs, call.args
    out = str(a.out_dtype)
    if out in ("", "void", "None"):         # no out_dtype given: the data's
        out = str(data.ty.dtype)
    if not (isinstance(weight, Constant) and int(a.groups) == 1 and str(a.data_layout) == "NHWC"
            and str(a.kernel_layout) == "HWIO" and str(a.out_layout) == "NHWC"
            and int(weight.ty.shape[3]) % LANES == 0):
        return None
    dtypes = (str(data.ty.dtype), str(weight.ty.dtype), out)
    return next((f for f in forms if (f.data, f.weight, f.acc) == dtypes), None)


def pack_convs(mod, forms) -> tuple:
    """(module, counts): `mod` (after ConvertLayout to NHWC/HWIO and constant folding) with each convolution one
    of `forms` computes taken from packed weights by `conv_te`; counts = {NAME_conv2d: how many} per form."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from edgecompile.targets.tvm import winograd

    @mutator
    class Pack(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.module, self.counts = module, {f.count_key: 0 for f in forms}
            if any(f.winograd for f in forms):
                self.counts["winograd_conv2d"] = 0

        def visit_call_(self, call):
            call = super().visit_call_(call)
            form = _form_of(call, forms) if getattr(call.op, "name", "") == "relax.nn.conv2d" else None
            if form is None:
                return call
            a, w = call.attrs, call.args[1].value.numpy()
            tile = winograd.eligible(a, w.shape, [int(d) for d in call.args[0].ty.shape]) if form.winograd else None
            if tile:
                self.counts["winograd_conv2d"] += 1
                return winograd.conv(self.builder_, call.args[0], w, a.padding, tile, form)
            self.counts[form.count_key] += 1
            geometry = ([int(v) for v in a.strides], [int(v) for v in a.padding], [int(v) for v in a.dilation],
                        int(w.shape[2]), int(w.shape[3]))
            return self.builder_.call_te(
                lambda data, packed: conv_te(data, packed, *geometry, form), call.args[0],
                relax.const(pack_weights(w, form), form.weight), primfunc_name_hint=form.kernel)

        def run(self):
            for gv, func in self.module.functions.items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

    packer = Pack(mod)
    out = packer.run()
    return relax.transform.DeadCodeElimination()(out), packer.counts



# -- tuning ----------------------------------------------------------------------------------------------------

def space_generator(ms, intrins):
    """MetaSchedule's design space for an x86 target whose CPU has the tensor intrinsics `intrins`: TVM's LLVM
    schedule rules with multi-level tiling around each intrinsic first (as TVM's own x86 rules do for VNNI), its
    mutators, and its post-processors with `SerialAroundTensorize` after the parallel/vectorize one."""
    from tvm.s_tir.meta_schedule.schedule_rule import schedule_rule as rule_api

    r, p = ms.schedule_rule, ms.postproc
    rules = list(rule_api._ffi_api.ScheduleRuleDefaultLLVM())
    at = next(i for i, rule in enumerate(rules) if type(rule).__name__ == "MultiLevelTiling")
    write = r.ReuseType(req="may", levels=[1, 2], scope="global")     # TVM's x86 choice for these rules
    rules[at:at] = [r.MultiLevelTilingWithIntrin(name, "SSRSRS", None, 64, None, None, write) for name in intrins]
    return ms.space_generator.PostOrderApply(
        sch_rules=rules, mutator_probs="from-target",
        postprocs=[p.DisallowDynamicLoop(), p.RewriteParallelVectorizeUnroll(), _serial_around_tensorize(ms)(),
                   p.RewriteReductionBlock(), p.RewriteTensorize(vectorize_init_loop=True), p.RewriteLayout()])


_POSTPROC = None


def _serial_around_tensorize(ms):
    global _POSTPROC
    if _POSTPROC is not None:
        return _POSTPROC
    import tvm
    from tvm.ir.utils import derived_object

    vectorized = int(tvm.tirx.ForKind.VECTORIZED)

    @derived_object
    class SerialAroundTensorize(ms.postproc.PyPostproc):
        """Unrolls a vectorized loop around a block that is to be tensorized (see the module docstring)."""

        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, sch) -> bool:
            stack = list(sch.get_child_blocks(sch.get_sblock("root")))
            while stack:
                block = stack.pop()
                stack.extend(sch.get_child_blocks(block))
                if TENSORIZE_ANN in sch.get(block).annotations:
                    for loop in sch.get_loops(block):
                        if int(sch.get(loop).kind) == vectorized:
                            sch.unroll(loop)
            return True

        def clone(self):
            return SerialAroundTensorize()

    _POSTPROC = SerialAroundTensorize
    return _POSTPROC
