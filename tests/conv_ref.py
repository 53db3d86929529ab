"""A reference NHWC convolution for the packed-convolution tests (numpy, loops over the kernel taps)."""
from __future__ import annotations

import numpy as np


def conv_nhwc(x, w_hwio, strides, padding, dilation, dtype=np.int64):
    """NHWC convolution of `x` with HWIO weights in `dtype` (padding top, left, bottom, right)."""
    top, left, bottom, right = padding
    xp = np.pad(x.astype(dtype), ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw, _, o = w_hwio.shape
    oh = (xp.shape[1] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (xp.shape[2] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((x.shape[0], oh, ow, o), dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dilation[0]:i * dilation[0] + strides[0] * (oh - 1) + 1:strides[0],
                       j * dilation[1]:j * dilation[1] + strides[1] * (ow - 1) + 1:strides[1], :]
            out += np.einsum("nhwc,co->nhwo", patch, w_hwio[i, j].astype(dtype))
    return out


def tensorize_product(prim_func, intrin: str):
    """The schedule of C[i, j] = sum_k ... (block "c", loops i, j, k) with its 16 (j) x 4 (k) inner tile
    tensorized with `intrin` by hand, as a tuned candidate has it: the module to build."""
    from tvm import s_tir

    sch = s_tir.Schedule(prim_func)
    block = sch.get_sblock("c")
    i, j, k = sch.get_loops(block)
    jo, ji = sch.split(j, [None, 16])
    ko, ki = sch.split(k, [None, 4])
    sch.reorder(i, jo, ko, ji, ki)
    sch.decompose_reduction(block, ko)
    sch.tensorize(ji, intrin)
    return sch.mod
