"""Integer convolutions that MetaSchedule can tensorize with AVX512-VNNI (`vpdpbusd`: 4 u8 x s8 products summed
into each of 16 int32 lanes).

Three things stood between the integer kernels of integer.py and that instruction; each is fixed here:

1. The weight layout. MetaSchedule's VNNI rule (`dot_16x4_vnni`) matches a block that reads 4 consecutive input
   channels of the activation and a [16 output channels, 4 input channels] tile of the weights. An NHWC/HWIO
   convolution never matches (output channels run innermost in HWIO), so every candidate stayed scalar-ish.
   `pack_convs` computes each integer NHWC convolution from weights packed at build time as
   [O/16, KH, KW, I/4, 16, 4] (input channels zero-padded to a multiple of 4; the activation's padding stage
   pads them too), which matches.
2. The instruction's signature. LLVM 22 changed `llvm.x86.avx512.vpdpbusd.512` to take its products' operands
   as <64 x i8> vectors; TVM's implementation of `dot_16x4_vnni` passes <16 x i32>, so every tensorized
   candidate failed LLVM's verifier and only untensorized ones survived. `register_intrinsic` re-registers the
   intrinsic with byte vectors on LLVM >= 22 (the description, what is matched, is TVM's).
3. A vectorized loop around the tensorized block. MetaSchedule's parallel/vectorize post-processor may
   vectorize the innermost tile loop outside the 16-lane block ("Cannot broadcast lanes=16 to 32", or the init
   loop vectorized twice: "VectorizeLoop before LiftStorageAlloc"), failing those candidates.
   `SerialAroundTensorize`, placed right after it, unrolls such loops instead (the block is the vector work).

ResNet-18's packed convolutions after tuning, per kernel: bench/results/tvm_vs_ort_20min_vnni_kernels.txt.
"""
from __future__ import annotations

import numpy as np

INTRIN = "dot_16x4_vnni"
TENSORIZE_ANN = "meta_schedule.auto_tensorize"
LANES, GROUP = 16, 4            # output channels per instruction, input channels per lane
FEATURE = "avx512vnni"


def target_has_vnni(target) -> bool:
    """Whether MetaSchedule can tensorize u8 x s8 with VNNI for `target` (an x86 LLVM target with avx512vnni)."""
    from tvm.target import codegen

    if str(target.kind.name) != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    if not triple.startswith(("x86_64", "i686", "i386")):
        return False
    try:
        return bool(codegen.target_has_features(FEATURE, target))
    except Exception:     # an LLVM without the query: no tensorization
        return False


def register_intrinsic() -> bool:
    """On LLVM >= 22, TVM's `dot_16x4_vnni` with the operand types the instruction now takes (see the module
    docstring); True when it was re-registered. Call after TVM's tensor intrinsics are imported."""
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import x86
    from tvm.target import codegen

    major = codegen.llvm_version_major(allow_none=True)
    if major is None or major < 22:
        return False
    TensorIntrin.register(INTRIN, x86.dot_product_16x4_u8i8i32_desc, _byte_vector_impl(), override=True)
    return True


def _byte_vector_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            # the 4 activation bytes as one int32, broadcast to the 16 lanes, seen as 64 bytes
            a_bytes = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 16),
                                    dtype="uint8x64")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"), a_bytes, b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    return impl


# -- the layout ------------------------------------------------------------------------------------------------

def pack_weights(w_hwio: np.ndarray) -> np.ndarray:
    """HWIO int8 weights -> [O/16, KH, KW, ceil(I/4), 16, 4], input channels zero-padded to a multiple of 4."""
    kh, kw, i, o = w_hwio.shape
    i4 = -(-i // GROUP)
    w = np.zeros((kh, kw, i4 * GROUP, o), np.int8)
    w[:, :, :i, :] = w_hwio
    return np.ascontiguousarray(w.reshape(kh, kw, i4, GROUP, o // LANES, LANES).transpose(4, 0, 1, 2, 5, 3))


def conv_te(data, packed, strides, padding, dilation, in_channels: int, out_channels: int):
    """The NHWC u8 x s8 -> s32 convolution from packed weights (TE), in the form the VNNI rule matches."""
    from tvm import te, tirx

    n, h, w, _ = (int(d) for d in data.shape)
    _, kh, kw, i4, _, _ = (int(d) for d in packed.shape)
    top, left, bottom, right = padding
    sh, sw = strides
    dh, dw = dilation
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if any(padding) or i4 * GROUP != in_channels:
        zero = tirx.const(0, "uint8")

        def pad(b, y, x, c):
            inside = tirx.all(y >= top, y < top + h, x >= left, x < left + w, c < in_channels)
            return tirx.if_then_else(inside, data[b, y - top, x - left, c], zero)

        src = te.compute((n, h + top + bottom, w + left + right, i4 * GROUP), pad, name="pad_temp")
    else:
        src = data
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    rc, rk = te.reduce_axis((0, i4), name="rc"), te.reduce_axis((0, GROUP), name="rk")
    return te.compute(
        (n, oh, ow, out_channels),
        lambda b, y, x, o: te.sum(
            src[b, y * sh + ry * dh, x * sw + rx * dw, rc * GROUP + rk].astype("int32")
            * packed[o // LANES, ry, rx, rc, o % LANES, rk].astype("int32"), axis=[ry, rx, rc, rk]),
        name="conv2d_nhwc_vnni")


def pack_convs(mod):
    """(module, n): `mod` (after ConvertLayout to NHWC/HWIO and constant folding) with its integer convolutions
    (uint8 data, int8 constant weights, int32 out, groups 1, output channels a multiple of 16) computed from
    packed weights by `conv_te`; n = how many."""
    from tvm import relax
    from tvm.ir.expr import Constant
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Pack(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.module, self.count = module, 0

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", "") != "relax.nn.conv2d":
                return call
            a, (data, weight) = call.attrs, call.args
            if not (isinstance(weight, Constant) and str(a.out_dtype) == "int32" and int(a.groups) == 1
                    and str(a.data_layout) == "NHWC" and str(a.kernel_layout) == "HWIO"
                    and str(a.out_layout) == "NHWC" and str(data.ty.dtype) == "uint8"
                    and str(weight.ty.dtype) == "int8"):
                return call
            w = weight.value.numpy()
            if w.shape[3] % LANES:
                return call
            self.count += 1
            return self.builder_.call_te(
                conv_te, data, relax.const(pack_weights(w), "int8"), [int(v) for v in a.strides],
                [int(v) for v in a.padding], [int(v) for v in a.dilation], int(w.shape[2]), int(w.shape[3]),
                primfunc_name_hint="conv2d_nhwc_vnni")

        def run(self):
            for gv, func in self.module.functions.items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

    packer = Pack(mod)
    out = packer.run()
    return relax.transform.DeadCodeElimination()(out), packer.count


# -- tuning ----------------------------------------------------------------------------------------------------

def space_generator(ms):
    """MetaSchedule's design space for targets with VNNI: the target's schedule rules and mutators, and its
    post-processors with `SerialAroundTensorize` after the parallel/vectorize one."""
    p = ms.postproc
    return ms.space_generator.PostOrderApply(
        sch_rules="from-target", mutator_probs="from-target",
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
