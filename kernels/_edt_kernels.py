"""Triton kernels of the exact Euclidean distance transform (see ``boundary.py``).

Squared distances to the nearest *site*, separable over axes. Lines are the rows of a
contiguous ``[lines, L]`` tensor (the axis being processed moved last).

- ``_edt_first_kernel``: along the first axis processed, the 1-D distance to the nearest
  site of the line: a prefix max of site positions from the left and a prefix min from
  the right (associative scans), ``(min(i - left, right - i) * spacing)^2``.
- ``_edt_axis_kernel``: along every further axis, ``g_i = min_j f_j + ((i - j) spacing)^2``
  (the min-plus product with a parabola), by brute force over a window: no site farther
  than ``sqrt(max f)`` over the tile can win, so only ``j`` within that of the tile is
  read. Integer squared distances stay exact in fp32 below 2^24.
- ``_signed_map_kernel``: the signed map from the two squared transforms, in one pass.
"""

from __future__ import annotations

import triton
import triton.language as tl

_FAR = tl.constexpr(1 << 30)  # a jit global must be a constexpr


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min(a, b):
    return tl.minimum(a, b)


@triton.jit
def _edt_first_kernel(
    site_ptr,
    out_ptr,
    n_lines,
    L,
    spacing2,
    INVERT: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """ROWS lines per program, each whole in one tile. INVERT: the sites are the zeros."""
    lines = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    inside = (lines < n_lines)[:, None] & (offs < L)[None, :]
    ptrs = lines[:, None] * L + offs[None, :]
    site = (tl.load(site_ptr + ptrs, mask=inside, other=INVERT) != 0) != INVERT
    pos = tl.zeros([ROWS, BLOCK], tl.int32) + offs[None, :]
    left = tl.associative_scan(tl.where(site, pos, -_FAR), 1, _max)
    right = tl.associative_scan(tl.where(site, pos, _FAR), 1, _min, reverse=True)
    gap = tl.minimum(pos - left, right - pos).to(tl.float32)
    d2 = tl.where(gap < _FAR // 2, gap * gap * spacing2, float("inf"))
    tl.store(out_ptr + ptrs, d2, mask=inside)


@triton.jit
def _edt_axis_kernel(
    f_ptr,
    out_ptr,
    n_lines,
    L,
    n_tiles,
    spacing2,
    ROWS: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    """Outputs ``[ROWS lines, BLOCK_I positions]`` per program, candidates ``j`` read in
    chunks of BLOCK_J within the tile's window."""
    pid = tl.program_id(0).to(tl.int64)
    lines = (pid // n_tiles) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    i0 = (pid % n_tiles) * BLOCK_I
    offs_i = i0 + tl.arange(0, BLOCK_I)
    live = lines < n_lines
    inside = live[:, None] & (offs_i < L)[None, :]
    base = f_ptr + lines[:, None] * L
    best = tl.load(base + offs_i[None, :], mask=inside, other=0.0)
    reach2 = tl.max(tl.max(tl.where(inside, best, 0.0), axis=1), axis=0) / spacing2
    reach = tl.where(reach2 < L * L, tl.sqrt(reach2), L).to(tl.int32) + 1
    lo = tl.maximum(i0 - reach, 0)
    hi = tl.minimum(i0 + BLOCK_I + reach, L)
    for j0 in range(lo, hi, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        m_j = live[:, None] & (offs_j < hi)[None, :]
        f_j = tl.load(base + offs_j[None, :], mask=m_j, other=float("inf"))
        d = (offs_i[:, None] - offs_j[None, :]).to(tl.float32)
        cand = f_j[:, None, :] + (d * d * spacing2)[None, :, :]
        best = tl.minimum(best, tl.min(cand, axis=2))
    tl.store(out_ptr + lines[:, None] * L + offs_i[None, :], best, mask=inside)


@triton.jit
def _signed_map_kernel(out_ptr, in_ptr, n, BLOCK: tl.constexpr):
    """Kervadec's map from the squared distances to the mask (``out``, 0 on it) and to
    its complement (``in``), written over ``out``: ``sqrt(out)`` outside the mask,
    ``1 - sqrt(in)`` on it, 0 where either is inf (an empty or full mask)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    d_out = tl.load(out_ptr + offs, mask=live, other=0.0)
    d_in = tl.load(in_ptr + offs, mask=live, other=0.0)
    phi = tl.where(d_out == 0.0, 1.0 - tl.sqrt(d_in), tl.sqrt(d_out))
    both = (d_out < float("inf")) & (d_in < float("inf"))
    tl.store(out_ptr + offs, tl.where(both, phi, 0.0), mask=live)
