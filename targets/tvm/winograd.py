"""3x3 stride-1 float convolutions computed with Winograd's minimal filtering, F(m x m, 3 x 3).

A direct 3x3 convolution does 9 multiply-adds per output and input channel. Winograd's algorithm computes each
m x m tile of outputs from an (m+2) x (m+2) tile of inputs as Y = A' [ U (.) V ] A, where U = G g G' is the
filter transformed at build time and V = B' d B the input tile transformed at run time; the element-wise
products summed over input channels are (m+2)^2 independent matrix products [tiles x C] x [C x K]. F(2x2, 3x3)
does 16 multiply-adds where the direct convolution does 36 (2.25x fewer), F(4x4, 3x3) 36 for 144 (4x), at the
cost of the two transforms (memory-bound) and, for F(4x4), about ten times the rounding error of F(2x2).

Three kernels per convolution: the input transform (padding included) and the output transform (cropped to the
output map) as TIR functions scheduled here, one parallel loop over tiles x 16-channel vectors with each tile's
elements unrolled and written out with their nonzero coefficients (MetaSchedule's design space for such
element-wise kernels is little more than where to parallelize and vectorize; what it picked for them ran 2-3x
slower); between them the batched matrix product in the packed FMA form (weights [tile element, K/16, C/4, 4,
16], the 16-lane FMA tile of fma.py), which MetaSchedule tunes. Both transforms are opaque to Relax's FuseOps,
whose fusing would drop their schedules: bias, residual and activation run in the kernel after.

Used for float convolutions in the FMA form (packed.py) with a 3x3 kernel, stride and dilation 1, and enough
output tiles to reuse the transformed weights (`TILES`): on small maps (ResNet's last stage, 7x7) the
transformed weights are (m+2)^2/9 times the direct ones and each is used by few tiles, so the direct kernel
wins. F(4x4) where the map has enough 4x4 tiles: fewer products, and a transformed input 2.25x the input's size
where F(2x2)'s is 4x (the transforms are memory-bound).
"""
from __future__ import annotations

import numpy as np

from edgecompile.targets.tvm.lanes import GROUP, LANES

INPUT, OUTPUT = "winograd_input", "winograd_output"
OPAQUE = 8            # Relax's kOpaque fusion pattern
# (m, the fewest output tiles, batch x tiles per map, it takes), tried in order; below the last: direct kernel.
# ResNet-18 at 224: F(4x4) on the 56x56 and 28x28 maps (196 and 49 tiles), F(2x2) on 14x14 (49), 7x7 direct.
TILES = ((4, 49), (2, 40))

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


def _grid(out_h: int, out_w: int, m: int) -> tuple[int, int]:
    """Tile rows and columns covering an out_h x out_w map with m x m tiles (the last ones cropped)."""
    return -(-out_h // m), -(-out_w // m)


def _padded(channels: int) -> int:
    """Channels rounded up to the packed form's group of input channels."""
    return -(-channels // GROUP) * GROUP


def tile_size(out_h: int, out_w: int, batch: int = 1) -> int | None:
    """The output tile m for a convolution with this output map (4 on large maps, else 2), or None to keep
    the direct convolution."""
    for m, least in TILES:
        th, tw = _grid(out_h, out_w, m)
        if batch * th * tw >= least:
            return m
    return None


def eligible(attrs, w_hwio_shape, data_shape) -> int | None:
    """Tile size m when this NHWC/HWIO conv2d (attributes, weight and data shapes) runs as Winograd, else None."""
    kh, kw, _, o = w_hwio_shape
    if (kh, kw) != (3, 3) or o % LANES or [int(s) for s in attrs.strides] != [1, 1] \
            or [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    n, h, w, _ = data_shape
    top, left, bottom, right = (int(p) for p in attrs.padding)
    return tile_size(h + top + bottom - 2, w + left + right - 2, n)


def _filters(w_hwio: np.ndarray, m: int) -> np.ndarray:
    """HWIO 3x3 weights -> U = G g G' per (input, output) channel, [(m+2)^2, I, O] in float64."""
    _, g, _ = _MATRICES[m]
    _, _, i, o = w_hwio.shape
    return np.einsum("ay,yxio,bx->abio", g, w_hwio.astype(np.float64), g).reshape((m + 2) ** 2, i, o)


def transform_weights(w_hwio: np.ndarray, m: int) -> np.ndarray:
    """HWIO 3x3 weights -> U = G g G' per (input, output) channel, packed [(m+2)^2, O/16, ceil(I/4), 4, 16]."""
    u = _filters(w_hwio, m)
    alpha2, i, o = u.shape
    padded = np.zeros((alpha2, _padded(i), o), np.float64)
    padded[:, :i, :] = u
    blocks = padded.reshape(alpha2, -1, GROUP, o // LANES, LANES)             # e i4 group o16 lane
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
    """The Winograd convolution in numpy (float64), from the full (m+2)^2 x (m+2)^2 transforms (the kernels
    apply them row then column): for tests."""
    n, h, w, c = x_nhwc.shape
    top, left, bottom, right = padding
    oh, ow = h + top + bottom - 2, w + left + right - 2
    th, tw = _grid(oh, ow, m)
    xp = np.zeros((n, th * m + 2, tw * m + 2, c))
    xp[:, top:top + h, left:left + w] = x_nhwc
    alpha = m + 2
    tiles = np.stack([xp[:, y * m:y * m + alpha, x * m:x * m + alpha] for y in range(th) for x in range(tw)], 1)
    v = np.einsum("eij,ntijc->entc", input_coefficients(m).astype(np.float64), tiles)   # [e, n, tiles, C]
    prod = np.einsum("entc,eck->entk", v, _filters(w_hwio, m))
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
    func = input_func((n, h, w, int(data.ty.shape[3])), str(data.ty.dtype), m, top, left, oh, ow, in_ch)
    th, tw = _grid(oh, ow, m)
    v_shape = [(m + 2) ** 2, n * th * tw, _padded(in_ch)]
    v = builder.emit(relax.call_tir(builder.add_func(func, INPUT), relax.Tuple([data]),
                                    relax.TensorType(v_shape, str(data.ty.dtype))))
    prod = builder.emit(builder.call_te(lambda a, b: gemm_te(a, b, form), v,
                                        relax.const(transform_weights(w_hwio, m)),
                                        primfunc_name_hint=f"winograd_{form.name}"))
    func = output_func(v_shape[:2] + [out_ch], str(data.ty.dtype), n, oh, ow, m)
    return relax.call_tir(builder.add_func(func, OUTPUT), [prod],
                          relax.TensorType([n, oh, ow, out_ch], str(data.ty.dtype)))


def input_te(data, m: int, top: int, left: int, oh: int, ow: int, in_ch: int):
    """V [e, tiles, C4*4] = B' d B, with d [tiles, m+2, m+2, C4*4] the input tiles zero-padded (borders,
    channels to x4; stage "winograd_tile"), computed as d B (stage "winograd_rows") then B' (d B), each
    product written out with its nonzero coefficients as constants."""
    from tvm import te, tirx

    n, h, w, _ = (int(d) for d in data.shape)
    alpha = m + 2
    th, tw = _grid(oh, ow, m)
    c4 = _padded(in_ch)
    zero = tirx.const(0, data.dtype)

    def tile(p, i, j, c):
        b, y, x = p // (th * tw), (p // tw) % th * m + i - top, p % tw * m + j - left
        inside = [y >= 0, y < h, x >= 0, x < w] + ([c < in_ch] if c4 != in_ch else [])   # lanes alike if x4
        return tirx.if_then_else(tirx.all(*inside), data[b, y, x, c], zero)

    bt, _, _ = _MATRICES[m]
    d = te.compute((n * th * tw, alpha, alpha, c4), tile, name="winograd_tile")
    rows = te.compute((n * th * tw, alpha, alpha, c4),             # d B, row by row: [tile, i, nu, c]
                      lambda p, i, nu, c: _written_out(bt, nu, lambda j: d[p, i, j, c]), name="winograd_rows")
    return te.compute((alpha * alpha, n * th * tw, c4),             # B' (d B): [xi * alpha + nu, tile, c]
                      lambda e, p, c: _written_out(bt, e // alpha, lambda i: rows[p, i, e % alpha, c]), name=INPUT)


def _written_out(coef: np.ndarray, row, term):
    """sum_t coef[row, t] * term(t), written out for each row of the small matrix `coef` with its nonzero
    coefficients as constants (±1 as additions), one select over `row` (a loop the schedule unrolls, so that
    the select folds away). Row then column (separable), so that each select has m+2 rows, not (m+2)^2."""
    from tvm import tirx

    def line(r):
        terms = [term(t) if k == 1 else -term(t) if k == -1 else term(t) * float(k)
                 for t, k in enumerate(coef[r]) if k]
        return sum(terms[1:], terms[0])

    out = line(len(coef) - 1)
    for r in reversed(range(len(coef) - 1)):
        out = tirx.Select(row == r, line(r), out)
    return out


def input_func(data_shape, dtype: str, m: int, top: int, left: int, oh: int, ow: int, in_ch: int):
    """The input transform as a scheduled TIR function (MetaSchedule leaves it alone): one parallel loop over
    tiles x channel vectors; in it the tile is loaded into registers (a local buffer, borders zero) and all
    (m+2)^2 elements computed from it, unrolled, 16 channels a vector. Its design space for MetaSchedule is
    little more than where to parallelize and vectorize, and what it picked ran at a fifth of this."""
    from tvm import s_tir, te

    data = te.placeholder(data_shape, dtype, "data")
    v = input_te(data, m, top, left, oh, ow, in_ch)
    sch = s_tir.Schedule(te.create_prim_func([data, v]))
    e, p, c = sch.get_loops(sch.get_sblock(INPUT))
    c4 = int(v.shape[2])
    co, ci = sch.split(c, [None, next(k for k in (16, 8, 4) if c4 % k == 0)])
    xi, nu = sch.split(e, [None, m + 2])
    sch.reorder(p, co, nu, xi, ci)           # per column nu: its m+2 values of d B, then B' times them
    outer = sch.fuse(p, co)
    sch.parallel(outer)
    for loop in (xi, nu):
        sch.unroll(loop)
    sch.vectorize(ci)
    _in_registers(sch, "winograd_rows", nu, 2)
    _in_registers(sch, "winograd_tile", outer, 1)
    return _scheduled(sch)


def _in_registers(sch, stage: str, at, depth: int) -> None:
    """Compute `stage` inside loop `at` (the `depth`-th from the outside), in a local buffer, its own loops
    unrolled but the innermost (channels), vectorized."""
    block = sch.get_sblock(stage)
    sch.compute_at(block, at)
    sch.set_scope(block, 0, "local")
    *loops, inner = sch.get_loops(block)[depth:]
    for loop in loops:
        sch.unroll(loop)
    sch.vectorize(inner)


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


def output_func(prod_shape, dtype: str, n: int, oh: int, ow: int, m: int):
    """Y [n, OH, OW, K] = A' (M A) per tile, cropped to the output map, as a scheduled TIR function: one
    parallel loop over tiles x 16-channel vectors; in it M A in registers, then the tile's m x m outputs,
    unrolled, each product written out with its nonzero coefficients. Opaque to Relax's FuseOps (fusing
    would drop the schedule): bias, residual and activation run in the next kernel."""
    from tvm import s_tir, te

    _, tiles, k = prod_shape
    th, tw = _grid(oh, ow, m)
    alpha = m + 2
    _, _, at = _MATRICES[m]
    prod = te.placeholder(prod_shape, dtype, "prod")
    cols = te.compute((tiles, alpha, m, k),                          # M A, row by row: [tile, xi, v, c]
                      lambda p, xi, v, c: _written_out(at, v, lambda nu: prod[xi * alpha + nu, p, c]),
                      name="winograd_cols")

    def out(b, y, x, c):
        p = b * th * tw + y // m * tw + x // m
        return _written_out(at, y % m, lambda xi: cols[p, xi, x % m, c])

    y = te.compute((n, oh, ow, k), out, name=OUTPUT)
    sch = s_tir.Schedule(te.create_prim_func([prod, y]))
    b, yy, xx, c = sch.get_loops(sch.get_sblock(OUTPUT))
    ty, u = sch.split(yy, [None, m])
    tx, v = sch.split(xx, [None, m])
    co, ci = sch.split(c, [None, next(f for f in (16, 8, 4, 2, 1) if k % f == 0)])
    sch.reorder(b, ty, tx, co, u, v, ci)
    outer = sch.fuse(b, ty, tx, co)
    sch.parallel(outer)
    sch.unroll(u)
    sch.unroll(v)
    sch.vectorize(ci)
    _in_registers(sch, "winograd_cols", outer, 1)
    return _scheduled(sch)


def _scheduled(sch):
    """The schedule's function for a Relax module: opaque to fusion, left alone by MetaSchedule, and without
    the "main" symbol create_prim_func gave it (the module names its functions)."""
    return (sch.mod["main"].without_attr("global_symbol").with_attr("op_pattern", OPAQUE)
            .with_attr("tirx.is_scheduled", True))
