"""Triton kernels of the erosion Hausdorff loss (``reference/hausdorff_er.py``) and its
gradient.

Maps are contiguous ``[U, D0, D1, D2]`` (U = images x kept classes; 2-D images have ``D0 =
1``); a program takes a ``[BLOCK_U, BLOCK_N]`` tile: ``BLOCK_N`` pixels of each of
``BLOCK_U`` units (several units per program when the images are small), so per-unit
minima, maxima and sums come out as one partial row per unit and pixel block, reduced in
a fixed order. Level k stores ``r_k =
d_k - 1/2`` (float32, unclamped: ``e_k = max(r_k, 0)``, and ``r_k >= 0`` is where the
erosion lets the gradient through); ``b_k``, which needs the unit's min and max of
``e_k``, is formed where it is read, by the next level.

Divisions are IEEE-rounded (``tl.math.div_rn``): Triton compiles a float32 ``/`` to
``div.full.f32`` (within 2 ulp) or, by a constant under Triton 3.9, to a reciprocal and a
product, which can move a value across ``d_k = 1/2`` or off a map's max where float32
torch and the interpreter, rounding each division once, do not.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._cldice_kernels import _coords, _cross_neighbour
from ._runtime import kernel_jit


@triton.jit
def _eroded(r):
    """``e = max(r, 0)``, NaN kept (a NaN probability makes the loss NaN, as in torch)."""
    return tl.where(r < 0, 0.0, r)


@triton.jit
def _scaled(r, lo, hi):
    """``b = (e - lo) / (hi - lo)``, or ``e`` where ``hi == lo``, with ``e = max(r, 0)``."""
    e = _eroded(r)
    spread = hi - lo
    return tl.where(spread != 0, tl.math.div_rn(e - lo, tl.where(spread != 0, spread, 1.0)), e)


@triton.jit
def _bound_at(src, at, inside, lo, hi, FIRST: tl.constexpr):
    """``b_{k-1}`` at flat index ``at`` (0 outside the image): ``src^2`` of the error map
    (FIRST), else :func:`_scaled` of ``r_{k-1}``."""
    v = tl.load(src + at, mask=inside, other=0.0)
    b = v * v if FIRST else _scaled(v, lo, hi)
    return tl.where(inside, b, 0.0)


@triton.jit
def _unit_block(pid, n_blocks, U, N, BLOCK_U: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program ``pid``'s units ``[BLOCK_U, 1]``, flat indices ``[BLOCK_U, BLOCK_N]`` (int64)
    and which of these exist, the index of each unit's partial row ``[BLOCK_U]``, and the
    pixels' int32 indices in their map (a map has fewer than 2^31 pixels)."""
    nb = pid % n_blocks
    u = (pid // n_blocks) * BLOCK_U + tl.arange(0, BLOCK_U)[:, None]
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    rows = u.to(tl.int64) * n_blocks + nb
    live = (u < U) & (n < N)
    return u, u.to(tl.int64) * N + n, live, tl.reshape(rows, [BLOCK_U]), n


@kernel_jit
def _erosion_level_kernel(
    src, lohi_prev, dst, valid_ptr, bad_ptr, part_ptr, map_ptr, U, N, D0, D1, D2, n_blocks,
    w_prev, FIRST: tl.constexpr, TAIL: tl.constexpr, HAS_VALID: tl.constexpr,
    MAP: tl.constexpr, MAP_INIT: tl.constexpr, THREE_D: tl.constexpr, BLOCK_U: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Level k from ``b_{k-1}``: ``r_k = sum of b_{k-1} over the cross / (5 or 7) - 1/2``
    into ``dst``, and per unit and pixel block ``(min e_k, max e_k, s)``: ``s`` the count
    of valid entries (FIRST), else ``w_prev sum valid b_{k-1}``; with MAP, ``w_prev valid
    b_{k-1}`` added to the loss map (NaN there if a target value was bad). TAIL only sums
    the last level."""
    u, i, live, rows, n = _unit_block(tl.program_id(0), n_blocks, U, N, BLOCK_U, BLOCK_N)
    unit = u < U
    lo = tl.zeros_like(u).to(tl.float32)
    hi = lo
    if not FIRST:
        lo = tl.load(lohi_prev + u, mask=unit, other=0.0)
        hi = tl.load(lohi_prev + U + u, mask=unit, other=0.0)
    if HAS_VALID:
        valid = tl.load(valid_ptr + i, mask=live, other=0).to(tl.float32)
    else:
        valid = live.to(tl.float32)
    centre = _bound_at(src, i, live, lo, hi, FIRST)
    if FIRST:
        total = tl.sum(valid, axis=1)
    else:
        total = w_prev * tl.sum(valid * centre, axis=1)
        if MAP:
            add = w_prev * valid * centre
            if not MAP_INIT:
                add += tl.load(map_ptr + i, mask=live, other=0.0)
            if TAIL:
                add = tl.where(tl.load(bad_ptr) != 0, float("nan"), add)
            tl.store(map_ptr + i, add, mask=live)
    low = tl.zeros_like(total)
    high = low
    if not TAIL:
        z, y, x = _coords(n, N, D1, D2)
        acc = centre
        for k in tl.static_range(1 if THREE_D else 3, 7):
            off, inside = _cross_neighbour(z, y, x, D0, D1, D2, k)
            acc += _bound_at(src, i + off, live & inside, lo, hi, FIRST)
        r = tl.math.div_rn(acc, 7.0 if THREE_D else 5.0) - 0.5
        tl.store(dst + i, r, mask=live)
        e = _eroded(r)
        nan = tl.max((live & (e != e)).to(tl.int32), axis=1) > 0
        low = tl.where(nan, float("nan"), tl.min(tl.where(live, e, float("inf")), axis=1))
        high = tl.where(nan, float("nan"), tl.max(tl.where(live, e, float("-inf")), axis=1))
    alive = tl.reshape(unit, [BLOCK_U])
    tl.store(part_ptr + 3 * rows, low, mask=alive)
    tl.store(part_ptr + 3 * rows + 1, high, mask=alive)
    tl.store(part_ptr + 3 * rows + 2, total, mask=alive)


@triton.jit
def _through(u_next, r_next, at, inside, lo, hi, c_lo, c_hi):
    """``dL/dd_{k+1}`` at flat index ``at`` (0 outside): the stored ``u_{k+1}`` plus, where
    the erosion passed, the unit's min / max terms at entries tied with its min / max."""
    du = tl.load(u_next + at, mask=inside, other=0.0)
    r = tl.load(r_next + at, mask=inside, other=-1.0)
    e = _eroded(r)
    tie = tl.where(e == lo, c_lo, 0.0) + tl.where(e == hi, c_hi, 0.0)
    return tl.where(inside, du + tl.where(r >= 0, tie, 0.0), 0.0)


@kernel_jit
def _erosion_grad_kernel(
    r_ptr, lohi, r_next, lohi_next, coef_next, u_next, u_out, valid_ptr, gam_ptr, err_ptr,
    part_ptr, U, N, D0, D1, D2, n_blocks, w_k, TOP: tl.constexpr, BOTTOM: tl.constexpr,
    HAS_VALID: tl.constexpr, PER_ENTRY: tl.constexpr, THREE_D: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """``G_k = dL/db_k``: ``w_k valid gamma`` (gamma per entry or per unit) plus, below the
    top level, the sum of ``dL/dd_{k+1}`` over the cross / (5 or 7). Level 0 (BOTTOM)
    writes ``dL/dp = 2 G_0 (p - g)`` into ``u_out``; a level k >= 1 writes ``u_k = [r_k >=
    0] G_k / (hi - lo)`` (``G_k`` where ``hi == lo``) and per unit and pixel block ``(sum
    G_k (b_k - 1), sum G_k b_k, entries at the min, entries at the max)``."""
    u, i, live, rows, n = _unit_block(tl.program_id(0), n_blocks, U, N, BLOCK_U, BLOCK_N)
    unit = u < U
    g = tl.zeros(i.shape, tl.float32)
    if not TOP:
        lo1 = tl.load(lohi_next + u, mask=unit, other=0.0)
        hi1 = tl.load(lohi_next + U + u, mask=unit, other=0.0)
        c_lo = tl.load(coef_next + 2 * u, mask=unit, other=0.0)
        c_hi = tl.load(coef_next + 2 * u + 1, mask=unit, other=0.0)
        z, y, x = _coords(n, N, D1, D2)
        g = _through(u_next, r_next, i, live, lo1, hi1, c_lo, c_hi)
        for k in tl.static_range(1 if THREE_D else 3, 7):
            off, inside = _cross_neighbour(z, y, x, D0, D1, D2, k)
            g += _through(u_next, r_next, i + off, live & inside, lo1, hi1, c_lo, c_hi)
        g = tl.math.div_rn(g, 7.0 if THREE_D else 5.0)
    if BOTTOM:
        err = tl.load(err_ptr + i, mask=live, other=0.0)
        tl.store(u_out + i, 2 * g * err, mask=live)
    else:
        if HAS_VALID:
            valid = tl.load(valid_ptr + i, mask=live, other=0).to(tl.float32)
        else:
            valid = live.to(tl.float32)
        if PER_ENTRY:
            gam = tl.load(gam_ptr + i, mask=live, other=0.0)
        else:
            gam = tl.load(gam_ptr + u, mask=unit, other=0.0)
        g += w_k * valid * gam
        lo = tl.load(lohi + u, mask=unit, other=0.0)
        hi = tl.load(lohi + U + u, mask=unit, other=0.0)
        r = tl.load(r_ptr + i, mask=live, other=-1.0)
        e = _eroded(r)
        spread = hi - lo
        b = _scaled(r, lo, hi)
        du = tl.where(spread != 0, tl.math.div_rn(g, tl.where(spread != 0, spread, 1.0)), g)
        tl.store(u_out + i, tl.where(r >= 0, du, 0.0), mask=live)
        gl = tl.where(live, g, 0.0)
        alive = tl.reshape(unit, [BLOCK_U])
        tl.store(part_ptr + 4 * rows, tl.sum(gl * (b - 1), axis=1), mask=alive)
        tl.store(part_ptr + 4 * rows + 1, tl.sum(gl * b, axis=1), mask=alive)
        at_lo = tl.sum((live & (e == lo)).to(tl.float32), axis=1)
        tl.store(part_ptr + 4 * rows + 2, at_lo, mask=alive)
        at_hi = tl.sum((live & (e == hi)).to(tl.float32), axis=1)
        tl.store(part_ptr + 4 * rows + 3, at_hi, mask=alive)


@triton.jit
def _unit_tile(part_ptr, width, column, u, start, U, n_blocks, BLOCK_B: tl.constexpr):
    """Column ``column`` of the partial rows ``start ..`` of units ``u`` ``[BLOCK_U, 1]``
    (rows of ``width`` values, ``n_blocks`` per unit), and which exist."""
    nb = start + tl.arange(0, BLOCK_B)[None, :]
    live = (u < U) & (nb < n_blocks)
    at = (u.to(tl.int64) * n_blocks + nb) * width + column
    return tl.load(part_ptr + at, mask=live, other=0.0), live


@kernel_jit
def _extrema_kernel(
    part_ptr, lohi_ptr, U, n_blocks, BLOCK_U: tl.constexpr, BLOCK_B: tl.constexpr
):  # fmt: skip
    """Per unit, the min of the level's partial minima and the max of its partial maxima
    into ``lohi`` ``[2, U]``; both NaN if a partial row is (the level kernel writes NaN
    to its min and max together)."""
    u = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)[:, None]
    low = tl.full([BLOCK_U], float("inf"), tl.float32)
    high = tl.full([BLOCK_U], float("-inf"), tl.float32)
    nan = tl.zeros([BLOCK_U], tl.int32)
    for start in range(0, n_blocks, BLOCK_B):
        lo, live = _unit_tile(part_ptr, 3, 0, u, start, U, n_blocks, BLOCK_B)
        hi, _ = _unit_tile(part_ptr, 3, 1, u, start, U, n_blocks, BLOCK_B)
        nan |= tl.max((live & (lo != lo)).to(tl.int32), axis=1)
        low = tl.minimum(low, tl.min(tl.where(live, lo, float("inf")), axis=1))
        high = tl.maximum(high, tl.max(tl.where(live, hi, float("-inf")), axis=1))
    unit = tl.reshape(u, [BLOCK_U])
    alive = unit < U
    tl.store(lohi_ptr + unit, tl.where(nan != 0, float("nan"), low), mask=alive)
    tl.store(lohi_ptr + U + unit, tl.where(nan != 0, float("nan"), high), mask=alive)


@triton.jit
def _sum64(part_ptr, column, u, start, U, n_blocks, BLOCK_B: tl.constexpr):
    """Float64 sum per unit of column ``column`` of the grad kernel's partial rows
    ``start ..`` (four values per row)."""
    v, _ = _unit_tile(part_ptr, 4, column, u, start, U, n_blocks, BLOCK_B)
    return tl.sum(v.to(tl.float64), axis=1)


@kernel_jit
def _tie_coef_kernel(
    part_ptr, lohi_ptr, coef_ptr, U, n_blocks, BLOCK_U: tl.constexpr, BLOCK_B: tl.constexpr
):  # fmt: skip
    """Per unit, from the grad kernel's partial rows summed in float64 in a fixed order:
    ``coef = (sum G (b - 1) / n_lo, -sum G b / n_hi) / (hi - lo)`` (0 where ``hi == lo``),
    what each entry tied with the min / max of ``e_k`` receives."""
    u = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)[:, None]
    s_lo = tl.zeros([BLOCK_U], tl.float64)
    s_hi = s_lo
    n_lo = s_lo
    n_hi = s_lo
    for start in range(0, n_blocks, BLOCK_B):
        s_lo += _sum64(part_ptr, 0, u, start, U, n_blocks, BLOCK_B)
        s_hi += _sum64(part_ptr, 1, u, start, U, n_blocks, BLOCK_B)
        n_lo += _sum64(part_ptr, 2, u, start, U, n_blocks, BLOCK_B)
        n_hi += _sum64(part_ptr, 3, u, start, U, n_blocks, BLOCK_B)
    unit = tl.reshape(u, [BLOCK_U])
    alive = unit < U
    spread = (
        tl.load(lohi_ptr + U + unit, mask=alive, other=0.0)
        - tl.load(lohi_ptr + unit, mask=alive, other=0.0)
    ).to(tl.float64)
    scale = tl.where(spread != 0, 1.0 / tl.where(spread != 0, spread, 1.0), 0.0)
    tl.store(coef_ptr + 2 * unit, (s_lo / n_lo * scale).to(tl.float32), mask=alive)
    tl.store(coef_ptr + 2 * unit + 1, (-s_hi / n_hi * scale).to(tl.float32), mask=alive)
