"""Integer convolutions MetaSchedule can tensorize with AVX512-VNNI (targets/tvm/vnni.py): the packed weight
layout, the convolution computed from it, TVM's VNNI intrinsic fixed for LLVM >= 22, and the post-processor
that keeps a vectorized loop from wrapping the 16-lane block. Small kernels, seconds."""
from __future__ import annotations

import numpy as np
import pytest

import tvm  # noqa: F401  (installed by the set-up)

from conv_ref import conv_nhwc, tensorize_product
from edgecompile.targets.tvm import packed, vnni

# a CPU with AVX512-VNNI (LLVM's name): code for it is built (LLVM verifies it) on any x86 host
VNNI_CPU = "cascadelake"


def _host_has_vnni() -> bool:
    from tvm.target import codegen

    cpu = str(codegen.llvm_get_system_cpu())
    return vnni.FORM.target_has(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))


def test_packed_weights_put_16_outputs_by_4_inputs_innermost_and_pad_the_inputs_with_zeros():
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (3, 3, 6, 32)).astype(np.int8)          # 6 inputs: padded to 8
    pk = packed.pack_weights(w, vnni.FORM)
    assert pk.shape == (2, 3, 3, 2, 16, 4) and pk.dtype == np.int8
    for a, y, x, b, j, k in ((0, 0, 0, 0, 0, 0), (1, 2, 1, 1, 15, 1), (0, 1, 2, 0, 7, 3), (1, 0, 0, 1, 3, 0)):
        assert pk[a, y, x, b, j, k] == w[y, x, b * 4 + k, a * 16 + j]
    assert not pk[:, :, :, 1, :, 2:].any()            # input channels 6 and 7 do not exist


@pytest.mark.parametrize("shape", [
    # (H, W, I, O, K, strides, padding, dilation)
    (9, 9, 3, 16, 3, (2, 2), (1, 1, 1, 1), (1, 1)),        # a stem: 3 inputs padded to 4, strided, padded
    (7, 6, 8, 32, 3, (1, 1), (0, 0, 0, 0), (2, 2)),        # dilated, no padding, no padding stage
    (6, 6, 12, 16, 2, (1, 1), (0, 1, 1, 0), (1, 1)),       # asymmetric padding
    (5, 5, 16, 16, 1, (1, 1), (0, 0, 0, 0), (1, 1)),       # 1x1
])
def test_the_packed_convolution_computes_the_convolution(shape):
    from tvm import te

    h, w_, i, o, k, strides, padding, dilation = shape
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (1, h, w_, i)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, k, i, o)).astype(np.int8)
    pk = packed.pack_weights(w, vnni.FORM)
    data, pk_in = te.placeholder(x.shape, "uint8", "data"), te.placeholder(pk.shape, "int8", "packed")
    out = packed.conv_te(data, pk_in, list(strides), list(padding), list(dilation), i, o, vnni.FORM)
    lib = tvm.compile(te.create_prim_func([data, pk_in, out]), target="llvm")
    want = conv_nhwc(x, w, strides, padding, dilation)
    got = tvm.runtime.tensor(np.zeros(want.shape, np.int32))
    lib(tvm.runtime.tensor(x), tvm.runtime.tensor(pk), got)
    np.testing.assert_array_equal(got.numpy(), want)


def _tensorized_dot():
    """C[i, j] = sum_k A[i, k] * B[j, k] (u8 x s8 -> s32) from packed B, its 16x4 inner block tensorized with
    the VNNI intrinsic by hand: what a tuned candidate contains."""
    from tvm import te

    from edgecompile.targets.tvm.startup import import_tensor_intrinsics

    import_tensor_intrinsics()
    m, n, kk = 4, 32, 16
    a = te.placeholder((m, kk), "uint8", "a")
    b = te.placeholder((n // 16, kk // 4, 16, 4), "int8", "b")
    r = te.reduce_axis((0, kk), "r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * b[j // 16, r // 4, j % 16, r % 4]
                                               .astype("int32"), axis=r), name="c")
    return tensorize_product(te.create_prim_func([a, b, c]), vnni.INTRIN), m, n, kk


def test_the_vnni_intrinsic_builds_with_this_llvm_and_computes_the_dot_product():
    """TVM's own implementation passes <16 x i32> operands, which LLVM 22's vpdpbusd rejects in verification:
    every tensorized candidate failed to build, so no tuned kernel used VNNI."""

    mod, m, n, kk = _tensorized_dot()
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "mcpu": VNNI_CPU}))   # LLVM verifies here
    if not _host_has_vnni():
        pytest.skip("built for cascadelake; this CPU has no AVX512-VNNI to run it")
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (m, kk)).astype(np.uint8)
    b = rng.integers(-128, 128, (n, kk)).astype(np.int8)
    pk = np.ascontiguousarray(b.reshape(n // 16, 16, kk // 4, 4).transpose(0, 2, 1, 3))
    got = tvm.runtime.tensor(np.zeros((m, n), np.int32))
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(pk), got)
    np.testing.assert_array_equal(got.numpy(), a.astype(np.int64) @ b.astype(np.int64).T)


def test_no_vectorized_loop_is_left_around_a_block_to_be_tensorized():
    from tvm import s_tir, te
    from tvm.s_tir import meta_schedule as ms

    a = te.placeholder((8, 64), "float32", "a")
    c = te.compute((8, 64), lambda i, j: a[i, j] * 2.0, name="c")
    d = te.compute((8, 64), lambda i, j: c[i, j] + 1.0, name="d")
    sch = s_tir.Schedule(te.create_prim_func([a, d]))
    c_block, d_block = sch.get_sblock("c"), sch.get_sblock("d")
    sch.annotate(c_block, packed.TENSORIZE_ANN, vnni.INTRIN)
    for block in (c_block, d_block):
        _, j = sch.get_loops(block)
        jo, _ = sch.split(j, [None, 16])
        sch.vectorize(jo)
    assert packed._serial_around_tensorize(ms)().apply(sch)
    kinds = {name: [int(sch.get(lp).kind) for lp in sch.get_loops(sch.get_sblock(name))] for name in "cd"}
    vec, unrolled = int(tvm.tirx.ForKind.VECTORIZED), int(tvm.tirx.ForKind.UNROLLED)
    assert vec not in kinds["c"] and unrolled in kinds["c"]
    assert vec in kinds["d"]                 # a block that is not to be tensorized keeps its vectorized loop


def test_only_x86_targets_with_vnni_get_the_packed_convolutions():

    assert vnni.FORM.target_has(tvm.target.Target({"kind": "llvm", "mcpu": VNNI_CPU}))
    assert not vnni.FORM.target_has(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
    assert not vnni.FORM.target_has(tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}))
