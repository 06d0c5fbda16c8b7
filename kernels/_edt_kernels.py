"""Triton kernels of the exact Euclidean distance transform (see ``boundary.py``).

Squared distances to the nearest *site*, separable over axes, on contiguous ``[N, *S]``
maps with no transposing copies:

- ``_edt_first_kernel``: along the last axis, the 1-D distance from each position to the
  nearest one of the other kind (site or not): the run of equal kind holding ``i`` is
  found by a prefix max of run starts and a reverse prefix min of run ends (associative
  scans), so both transforms the signed map needs come from one pair of scans. It reads
  labels (the sites of class c: ``label == c``, for the classes of a table; no one-hot)
  or masks (sites: ``value != 0``) and flags each line that holds a site (and a non-site).
- ``_edt_axis_kernel``: along every further axis (stride ``inner``),
  ``g_i = min_j f_j + ((i - j) spacing)^2`` (the min-plus product with a parabola) by
  brute force over candidates read outward from the tile, until the next one is farther
  than the tile's worst value can reach. A slab with no site (its flag 0) is all ``inf``
  and is not searched. Integer squared distances stay exact in fp32 below 2^24.
- The last pass combines the transforms to the mask (``out``) and to its complement
  (``in``): Kervadec's signed map ``sqrt(out)`` outside the mask, ``1 - sqrt(in)`` on it,
  or the Hausdorff loss's (squared) distance to the other side, ``out + in``; 0 where
  either transform is ``inf`` (an empty or full mask).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._runtime import kernel_jit

_FAR = tl.constexpr(1 << 30)  # a jit global must be a constexpr


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min(a, b):
    return tl.minimum(a, b)


@triton.jit
def _sites(
    src_ptr, line_ptrs, offs, live, L, c, ign, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr
):
    """Whether the positions ``offs`` of each line (``live`` ones, within ``[0, L)``) are sites."""
    inside = live[:, None] & (offs >= 0)[None, :] & (offs < L)[None, :]
    v = tl.load(src_ptr + line_ptrs[:, None] + offs[None, :], mask=inside, other=0)
    if LABELS:
        hit = v == c[:, None]
    else:
        hit = v != 0
    if HAS_IGNORE:
        hit = hit & (v != ign)
    return hit & inside


@triton.jit
def _run_gaps(site, before, after, pos, L, spacing2):
    """Squared distance along axis 1 from each position to the nearest position of the other
    kind (a non-site from a site, a site from a non-site), inf if none: the run of equal
    kind holding ``i`` spans ``[start, end]`` (scans of the change points, found from the
    neighbours ``before`` / ``after``; positions off the line read as non-sites), so the
    nearest other ones are ``start - 1`` and ``end + 1`` when those lie on the line."""
    start = tl.associative_scan(tl.where(site != before, pos, 0), 1, _max)
    end = tl.associative_scan(tl.where(site != after, pos, _FAR), 1, _min, reverse=True)
    left = tl.where(start > 0, pos - start + 1, _FAR)
    right = tl.where(end < L - 1, end + 1 - pos, _FAR)
    gap = tl.minimum(left, right).to(tl.float32)
    return tl.where(gap < _FAR, gap * gap * spacing2, float("inf"))


@triton.jit
def _combined(d_out, d_in, KIND: tl.constexpr):
    """From the squared distances to the mask and to its complement, KIND 1: the signed
    map; KIND 2: the squared distance to the other side of the boundary; KIND 3: that
    distance. 0 where either is ``inf`` (an empty or full mask)."""
    if KIND == 1:
        d = tl.where(d_out == 0.0, 1.0 - tl.sqrt(d_in), tl.sqrt(d_out))
    elif KIND == 2:
        d = d_out + d_in
    else:
        d = tl.sqrt(d_out + d_in)
    return tl.where((d_out < float("inf")) & (d_in < float("inf")), d, 0.0)


@kernel_jit
def _edt_first_kernel(
    src_ptr,
    out_ptr,
    in_ptr,
    flag_ptr,
    cls_ptr,
    n_lines,
    R,
    L,
    K,
    ign,
    spacing2,
    LABELS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    OUTPUT: tl.constexpr,
    KIND: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """ROWS whole lines of length L per program; a map has R lines. LABELS: ``src`` is
    labels ``[B * R, L]``, an image has K maps, and line ``g`` is class ``cls[g % K]`` of
    label row ``g // K``; else
    ``src`` is masks ``[n_lines, L]``. A value equal to ``ign`` is no site (HAS_IGNORE).
    OUTPUT 0: distances to the sites into ``out``; 1: and to the non-sites into ``in``;
    2: their combination of KIND (see :func:`_combined`) into ``out``. ``flag[line]``
    (and ``flag[n_lines + line]`` for the non-sites with OUTPUT 1): whether the line has
    one."""
    g = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    if LABELS:
        row = g // K
        k = g % K
        c = tl.load(cls_ptr + k, mask=g < n_lines, other=-1)
        lines = ((row // R) * K + k) * R + row % R
    else:
        row = g
        c = g
        lines = g
    live = g < n_lines
    site = _sites(src_ptr, row * L, offs, live, L, c, ign, LABELS, HAS_IGNORE)
    before = _sites(src_ptr, row * L, offs - 1, live, L, c, ign, LABELS, HAS_IGNORE)
    after = _sites(src_ptr, row * L, offs + 1, live, L, c, ign, LABELS, HAS_IGNORE)
    pos = tl.zeros([ROWS, BLOCK], tl.int32) + offs[None, :]
    d_other = _run_gaps(site, before, after, pos, L, spacing2)
    d_out = tl.where(site, 0.0, d_other)
    d_in = tl.where(site, d_other, 0.0)
    on_line = (offs < L)[None, :]
    inside = live[:, None] & on_line
    ptrs = lines[:, None] * L + offs[None, :]
    if OUTPUT == 2:
        tl.store(out_ptr + ptrs, _combined(d_out, d_in, KIND), mask=inside)
    else:
        tl.store(out_ptr + ptrs, d_out, mask=inside)
        tl.store(flag_ptr + lines, tl.max(site.to(tl.uint8), axis=1), mask=live)
    if OUTPUT == 1:
        tl.store(in_ptr + ptrs, d_in, mask=inside)
        non_site = (site == 0) & on_line
        tl.store(flag_ptr + n_lines + lines, tl.max(non_site.to(tl.uint8), axis=1), mask=live)


@kernel_jit
def _edt_axis_kernel(
    f_ptr,
    out_ptr,
    other_ptr,
    flag_ptr,
    L,
    inner,
    n_lines,
    n_pos_tiles,
    spacing2,
    KIND: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Along the middle axis of a contiguous ``[outer, L, inner]`` tensor, whose lines
    ``(o, col)`` are numbered ``o * inner + col``: a program holds ``[BLOCK positions, ROWS
    consecutive lines]`` and reads BLOCK candidates at a time, from the side nearer the
    tile, while the nearest unread one could still beat the tile's worst value; not at
    all if no slab ``o`` of its lines has a site. KIND 1, 2 or 3: write the combination
    (:func:`_combined`) of this transform (to the mask) and ``other`` (the finished
    transform to its complement)."""
    pid = tl.program_id(0).to(tl.int64)
    i0 = (pid % n_pos_tiles) * BLOCK
    lines = (pid // n_pos_tiles) * ROWS + tl.arange(0, ROWS)
    line_live = lines < n_lines
    o = lines // inner
    col_live = line_live[None, :]
    base = (o * L * inner + lines % inner)[None, :]
    offs_i = i0 + tl.arange(0, BLOCK)
    live = (offs_i < L)[:, None] & col_live
    ptrs = base + offs_i.to(tl.int64)[:, None] * inner
    best = tl.load(f_ptr + ptrs, mask=live, other=0.0)
    worst = tl.max(tl.max(best, axis=1), axis=0)
    last = tl.minimum(i0 + BLOCK, L) - 1
    lo = i0  # candidates in [lo, hi) are read
    hi = i0
    more = tl.max(tl.load(flag_ptr + o, mask=line_live, other=0), axis=0) != 0
    while more:
        go_left = (lo > 0) & ((hi >= L) | (i0 - lo + 1 < hi - last))
        j0 = tl.where(go_left, lo - BLOCK, hi)
        lo = tl.where(go_left, j0, lo)
        hi = tl.where(go_left, hi, hi + BLOCK)
        offs_j = j0 + tl.arange(0, BLOCK)
        m_j = ((offs_j >= 0) & (offs_j < L))[:, None] & col_live
        f_j = tl.load(f_ptr + base + offs_j[:, None] * inner, mask=m_j, other=float("inf"))
        d = (offs_i[:, None] - offs_j[None, :]).to(tl.float32)
        cand = f_j[None, :, :] + (d * d * spacing2)[:, :, None]
        best = tl.minimum(best, tl.min(cand, axis=1))
        worst = tl.max(tl.max(best, axis=1), axis=0)
        gap_l = tl.where(lo > 0, i0 - lo + 1, _FAR).to(tl.float32)
        gap_r = tl.where(hi < L, hi - last, _FAR).to(tl.float32)
        gap = tl.minimum(gap_l, gap_r)
        more = (gap < _FAR) & (gap * gap * spacing2 < worst)
    if KIND != 0:
        best = _combined(best, tl.load(other_ptr + ptrs, mask=live, other=0.0), KIND)
    tl.store(out_ptr + ptrs, best, mask=live)
