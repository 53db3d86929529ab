"""3x3 stride-1 float convolutions computed with Winograd's minimal filtering, F(m x m, 3 x 3).

A direct 3x3 convolution does 9 multiply-adds per output and input channel. Winograd's algorithm computes each
m x m tile of outputs from an (m+2) x (m+2) tile of inputs as Y = A' [ U (.) V ] A, where U = G g G' is the
filter transformed at build time and V = B' d B the input tile transformed at run time; the element-wise
products summed over input channels are (m+2)^2 independent matrix products [tiles x C] x [C x K]. F(2x2, 3x3)
does 16 multiply-adds where the direct convolution does 36 (2.25x fewer), F(4x4, 3x3) 36 for 144 (4x), at the
cost of the two transforms (memory-bound) and, for F(4x4), about ten times the rounding error of F(2x2).

Three kernels per convolution, each tuned by MetaSchedule: the input transform (padding included), the batched
matrix product in the packed FMA form (its weights [tile element, K/16, C/4, 4, 16], the 16-lane FMA tile of
fma.py), and the output transform, which Relax fuses with what follows (bias, residual add, ReLU).

Used for float convolutions in the FMA form (packed.py) with a 3x3 kernel, stride and dilation 1, and enough
output tiles to reuse the transformed weights (`MIN_TILES`): on small maps (ResNet's last stage, 7x7) the
transformed weights are (m+2)^2/9 times the direct ones and each is used by few tiles, so the direct kernel wins.
"""
from __future__ import annotations

import numpy as np

from edgecompile.targets.tvm.packed import GROUP, LANES

INPUT = "winograd_input"
OPAQUE = 8            # Relax's kOpaque fusion pattern
MIN_TILES = 40        # output tiles (batch x tiles per map) below which the direct convolution is kept

# Lavin & Gray's matrices: B' (input), G (filter), A' (output), rows as written in their paper.
_MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                 np.float64)),
}


def tile_size(out_h: int, out_w: int, batch: int = 1) -> int | None:
    """The output tile m (2) for a convolution with this output map, or None to keep the direct one."""
    tiles = batch * -(-out_h // 2) * -(-out_w // 2)
    return 2 if tiles >= MIN_TILES else None


def eligible(attrs, w_hwio_shape, data_shape) -> int | None:
    """Tile size m when this NHWC/HWIO conv2d (attributes, weight and data shapes) runs as Winograd, else None."""
    kh, kw, _, o = w_hwio_shape
    if (kh, kw) != (3, 3) or o % LANES or [int(s) for s in attrs.strides] != [1, 1] \
            or [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    n, h, w, _ = data_shape
    top, left, bottom, right = (int(p) for p in attrs.padding)
    return tile_size(h + top + bottom - 2, w + left + right - 2, n)


def transform_weights(w_hwio: np.ndarray, m: int) -> np.ndarray:
    """HWIO 3x3 weights -> U = G g G' per (input, output) channel, packed [(m+2)^2, O/16, ceil(I/4), 4, 16]."""
    _, g, _ = _MATRICES[m]
    alpha = m + 2
    _, _, i, o = w_hwio.shape
    u = np.einsum("ay,yxio,bx->abio", g, w_hwio.astype(np.float64), g)      # [alpha, alpha, I, O]
    i4 = -(-i // GROUP)
    padded = np.zeros((alpha * alpha, i4 * GROUP, o), np.float64)
    padded[:, :i, :] = u.reshape(alpha * alpha, i, o)
    blocks = padded.reshape(alpha * alpha, i4, GROUP, o // LANES, LANES)      # e i4 group o16 lane
    return np.ascontiguousarray(blocks.transpose(0, 3, 1, 2, 4)).astype(np.float32)


def input_coefficients(m: int) -> np.ndarray:
    """[(m+2)^2, m+2, m+2]: V[e=(xi, nu)] = sum_ij coef[e, i, j] d[i, j]  (B' d B)."""
    bt, _, _ = _MATRICES[m]
    return np.einsum("ai,bj->abij", bt, bt).reshape(len(bt) ** 2, len(bt), len(bt)).astype(np.float32)


def output_coefficients(m: int) -> np.ndarray:
    """[(m+2)^2, m, m]: Y[u, v] = sum_e coef[e, u, v] M[e]  (A' M A)."""
    _, _, at = _MATRICES[m]
    alpha = at.shape[1]
    return np.einsum("ua,vb->abuv", at, at).reshape(alpha * alpha, m, m).astype(np.float32)


def reference(x_nhwc: np.ndarray, w_hwio: np.ndarray, padding, m: int) -> np.ndarray:
    """The Winograd convolution in numpy (float64), the same arithmetic as the kernels: for tests."""
    n, h, w, c = x_nhwc.shape
    top, left, bottom, right = padding
    oh, ow = h + top + bottom - 2, w + left + right - 2
    th, tw = -(-oh // m), -(-ow // m)
    xp = np.zeros((n, th * m + 2, tw * m + 2, c))
    xp[:, top:top + h, left:left + w] = x_nhwc
    alpha = m + 2
    tiles = np.stack([xp[:, y * m:y * m + alpha, x * m:x * m + alpha] for y in range(th) for x in range(tw)], 1)
    v = np.einsum("eij,ntijc->entc", input_coefficients(m).astype(np.float64), tiles)   # [e, n, tiles, C]
    _, g, _ = _MATRICES[m]
    u = np.einsum("ay,yxio,bx->abio", g, w_hwio.astype(np.float64), g).reshape(alpha * alpha, c, -1)
    prod = np.einsum("entc,eck->entk", v, u)
    y = np.einsum("euv,entk->ntuvk", output_coefficients(m).astype(np.float64), prod)
    y = y.reshape(n, th, tw, m, m, -1).transpose(0, 1, 3, 2, 4, 5).reshape(n, th * m, tw * m, -1)
    return y[:, :oh, :ow]


# -- Relax ---------------------------------------------------------------------------------------------------

def conv(builder, data, w_hwio: np.ndarray, padding, m: int, form):
    """Emit the three kernels computing the NHWC convolution of `data` (a Relax expression) with `w_hwio`
    into `builder` (a Relax BlockBuilder); returns the output expression."""
    from tvm import relax

    n, h, w, _ = (int(d) for d in data.ty.shape)
    in_ch, out_ch = int(w_hwio.shape[2]), int(w_hwio.shape[3])
    top, left, bottom, right = (int(p) for p in padding)
    oh, ow = h + top + bottom - 2, w + left + right - 2
    geometry = (m, top, left, oh, ow, in_ch)
    v = builder.emit(builder.call_te(lambda d, k: input_te(d, k, *geometry), data,
                                     relax.const(input_coefficients(m)), primfunc_name_hint=INPUT))
    prod = builder.emit(builder.call_te(lambda a, b: gemm_te(a, b, form), v,
                                        relax.const(transform_weights(w_hwio, m)),
                                        primfunc_name_hint=f"winograd_{form.name}"))
    return builder.call_te(lambda p, k: output_te(p, k, n, oh, ow, out_ch), prod,
                           relax.const(output_coefficients(m)), primfunc_name_hint="winograd_output")


def unfused_inputs(mod):
    """`mod` with its input transforms marked opaque for Relax's FuseOps (call after the last `conv`). Each
    input element is read by several tiles: a producer fused into the transform (the previous convolution's
    output transform) would be recomputed for each read."""
    from tvm import tirx

    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and str(gv.name_hint).startswith(INPUT):
            mod[gv] = func.with_attr("op_pattern", OPAQUE)
    return mod


def input_te(data, coef, m: int, top: int, left: int, oh: int, ow: int, in_ch: int):
    """V [e, tiles, C4*4]: each (m+2)^2 input tile, zero-padded (borders, channels to x4), times B' . B
    (written out as a sum, so that Relax sees an injective kernel and LLVM a straight line per element)."""
    from tvm import te, tirx

    n, h, w, _ = (int(d) for d in data.shape)
    alpha = m + 2
    th, tw = -(-oh // m), -(-ow // m)
    c4 = -(-in_ch // GROUP) * GROUP
    zero = tirx.const(0, data.dtype)

    def tile(p, i, j, c):
        b, y, x = p // (th * tw), (p // tw) % th * m + i - top, p % tw * m + j - left
        inside = [y >= 0, y < h, x >= 0, x < w] + ([c < in_ch] if c4 != in_ch else [])   # lanes alike if x4
        return tirx.if_then_else(tirx.all(*inside), data[b, y, x, c], zero)

    return te.compute((alpha * alpha, n * th * tw, c4),
                      lambda e, p, c: sum(coef[e, i, j] * tile(p, i, j, c) for i in range(alpha) for j in range(alpha)),
                      name="winograd_input")


def gemm_te(v, packed, form):
    """M [e, tiles, K] = V [e, tiles, C] x U [e, C, K], U packed [e, K/16, C/4, 4, 16] (the FMA tile)."""
    from tvm import te

    alpha2, tiles, _ = (int(d) for d in v.shape)
    _, k16, c4 = (int(d) for d in packed.shape[:3])
    rc, rk = te.reduce_axis((0, c4), name="rc"), te.reduce_axis((0, GROUP), name="rk")
    return te.compute(
        (alpha2, tiles, k16 * LANES),
        lambda e, p, o: te.sum(v[e, p, rc * GROUP + rk].astype(form.acc)
                               * packed[e, o // LANES, rc, rk, o % LANES].astype(form.acc), axis=[rc, rk]),
        name=f"winograd_{form.name}")


def output_te(prod, coef, n: int, oh: int, ow: int, out_ch: int):
    """Y [n, OH, OW, K]: each tile's A' M A, cropped to the output map (a sum written out: injective, so Relax
    fuses the bias, residual and activation that follow into it)."""
    from tvm import te

    alpha2 = int(prod.shape[0])
    m = int(coef.shape[1])
    th, tw = -(-oh // m), -(-ow // m)

    def out(b, y, x, k):
        p = b * th * tw + (y // m) * tw + x // m
        return sum(coef[e, y % m, x % m] * prod[e, p, k] for e in range(alpha2))

    return te.compute((n, oh, ow, out_ch), out, name="winograd_output")
