"""Integer convolutions that MetaSchedule can tensorize with AVX512-VNNI (`vpdpbusd`: 4 u8 x s8 products summed
into each of 16 int32 lanes).

Three things stood between the integer kernels of integer.py and that instruction; each is fixed:

1. The weight layout. MetaSchedule's VNNI rule (`dot_16x4_vnni`) matches a block that reads 4 consecutive input
   channels of the activation and a [16 output channels, 4 input channels] tile of the weights. An NHWC/HWIO
   convolution never matches (output channels run innermost in HWIO), so every candidate stayed scalar-ish.
   packed.py computes each integer NHWC convolution from weights packed at build time as
   [O/16, KH, KW, I/4, 16, 4] (`FORM`).
2. The instruction's signature. LLVM 22 changed `llvm.x86.avx512.vpdpbusd.512` to take its products' operands
   as <64 x i8> vectors; TVM's implementation of `dot_16x4_vnni` passes <16 x i32>, so every tensorized
   candidate failed LLVM's verifier and only untensorized ones survived. `register_intrinsic` (here) re-registers
   the intrinsic with byte vectors on LLVM >= 22 (the description, what is matched, is TVM's).
3. A vectorized loop around the tensorized block failed candidates: packed.py's `SerialAroundTensorize`.

ResNet-18's packed convolutions after tuning, per kernel: bench/results/tvm_vs_ort_20min_vnni_kernels.txt.
"""
from __future__ import annotations

from edgecompile.targets.tvm.packed import PackedForm

INTRIN = "dot_16x4_vnni"
FORM = PackedForm("vnni", INTRIN, "avx512vnni", "uint8", "int8", "int32", lanes_inner=False)


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
