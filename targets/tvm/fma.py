"""Float convolutions that MetaSchedule can tensorize with AVX-512 FMA: 16 output channels in one vector
register, each input channel's activation broadcast and multiplied into them.

With NHWC/HWIO weights MetaSchedule is free to tile float convolutions any way, and in a 20-minute budget over
ResNet-18's kernels it settled on ones that ran at a third of the machine's FMA peak
(bench/results/tvm_vs_ort_20min_vnni_kernels.txt, the FP32 rows). packed.py computes each float convolution
(constant weights, output channels a multiple of 16) from weights packed as [O/16, KH, KW, I/4, 4, 16]
(`FORM`), and `fma_16x4_f32` (registered here) is the inner tile: 4 input channels x 16 output channels, four
`llvm.fmuladd` on <16 x float>. The search then only chooses the tiles around it.

Only on x86 targets whose CPU has avx512f; other targets keep the convolutions as they are.
"""
from __future__ import annotations

from edgecompile.targets.tvm.packed import GROUP, LANES, PackedForm

INTRIN = "fma_16x4_f32"
FORM = PackedForm("fma", INTRIN, "avx512f", "float32", "float32", "float32", lanes_inner=True, winograd=True)


def register_intrinsic() -> None:
    """Register `fma_16x4_f32` (idempotent; needs none of TVM's tensor intrinsics: startup.py calls it)."""
    from tvm.s_tir import TensorIntrin

    desc, impl = _functions()
    TensorIntrin.register(INTRIN, desc, impl, override=True)


def _functions():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((GROUP,), "float32", offset_factor=1),
             b: T.Buffer((GROUP, LANES), "float32", offset_factor=1),
             c: T.Buffer((LANES,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:LANES], a[0:GROUP], b[0:GROUP, 0:LANES])
            T.writes(c[0:LANES])
            for j, k in T.grid(LANES, GROUP):
                with T.sblock("update"):
                    vj, vk = T.axis.remap("SR", [j, k])
                    c[vj] = c[vj] + a[vk] * b[vk, vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((GROUP,), "float32", offset_factor=1),
             b: T.Buffer((GROUP, LANES), "float32", offset_factor=1),
             c: T.Buffer((LANES,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:LANES], a[0:GROUP], b[0:GROUP, 0:LANES])
            T.writes(c[0:LANES])
            acc = c.vload([0], "float32x16")
            for k in T.unroll(GROUP):
                acc = T.call_llvm_pure_intrin("float32x16", "llvm.fmuladd", T.broadcast(a[k], LANES),
                                              b.vload([k, 0], "float32x16"), acc)
            c[T.ramp(T.int32(0), 1, LANES)] = acc

    return desc, impl
