"""Triton kernels that select pixels by their loss: OHEM's hard pixels and the top-k
cross-entropy's largest losses (see ``pixelwise.ohem_cross_entropy`` and
``pixelwise.topk_cross_entropy``).

The threshold is the k-th largest per-pixel loss (0-based; fp32, >= 0), found by a
radix select on order-preserving int32 keys: four passes over the keys, each a histogram
of one 8-bit digit among the keys that share the digits found so far, each followed by a
one-program scan that picks the digit holding the k-th key. Integer atomics only, so the
result is exact and deterministic, and nothing is read on the host; relaxed ones, as only
the next kernel reads what they add.

``state`` (int64): ``[prefix, k, n_valid, n_kept]``; ``hist``: four 256-bin int64
histograms, one per pass (``hist[0]`` is the last); both start at zero, except
``n_valid``, which a caller without labels sets itself.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._runtime import kernel_jit
from ._tiles import ignored, label_values

_NAN_KEY = tl.constexpr(0x7FFFFFFF)  # above every other key, as torch.sort puts NaN first


@triton.jit
def _nll_key(v):
    """Key of an fp32 ``nll``: its bits as an int32 for v > 0 (positive floats order as
    their bit patterns), 0 for v <= 0 (ignored pixels hold 0), ``_NAN_KEY`` for NaN."""
    key = tl.where(v > 0, v.to(tl.int32, bitcast=True), 0)
    return tl.where(v != v, _NAN_KEY, key)


@triton.jit
def _labels_at(t_ptr, offs, m, S, stb, sts, FLAT: tl.constexpr):
    """Labels of the flat pixel indices ``offs`` of a ``[B, S]`` label view: at ``offs``
    when FLAT (contiguous), else through the strides."""
    if FLAT:
        ptrs = t_ptr + offs
    else:
        b = offs // S
        ptrs = t_ptr + b * stb + (offs - b * S) * sts
    return label_values(tl.load(ptrs, mask=m, other=0))


@kernel_jit
def _radix_hist_kernel(
    v_ptr, t_ptr, state_ptr, hist_ptr, N, S, stb, sts, ignore_index,
    tiles, SHIFT: tl.constexpr, FIRST: tl.constexpr, COUNT: tl.constexpr, FLAT: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Histogram (into ``hist[SHIFT // 8]``) of the digit ``(key >> SHIFT) & 255`` of the
    keys whose digits above SHIFT equal the prefix found so far (all keys when ``FIRST``,
    the top digit). ``COUNT`` also counts the labels that are not ``ignore_index`` into
    ``state[2]``."""
    pid = tl.program_id(0).to(tl.int64)
    prefix = tl.load(state_ptr).to(tl.int32)
    counts = tl.zeros([512], dtype=tl.int32)
    n_valid = tl.zeros([BLOCK], dtype=tl.int64)
    for i in range(tiles):
        offs = (pid * tiles + i) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        m = offs < N
        key = _nll_key(tl.load(v_ptr + offs, mask=m, other=0.0))
        if COUNT:
            y = _labels_at(t_ptr, offs, m, S, stb, sts, FLAT)
            n_valid += (m & ~ignored(y, ignore_index)).to(tl.int64)
        if not FIRST:
            m = m & ((key >> (SHIFT + 8)) == (prefix >> (SHIFT + 8)))
        counts += tl.histogram(tl.where(m, (key >> SHIFT) & 255, 256), 512)
    bins = tl.arange(0, 512)
    hist = hist_ptr + (SHIFT // 8) * 256 + bins
    tl.atomic_add(hist, counts.to(tl.int64), mask=bins < 256, sem="relaxed")
    if COUNT:
        tl.atomic_add(state_ptr + 2, tl.sum(n_valid, axis=0), sem="relaxed")


@kernel_jit
def _radix_scan_kernel(state_ptr, hist_ptr, min_kept, SHIFT: tl.constexpr, FIRST: tl.constexpr):
    """Pick the digit at SHIFT of the k-th largest key: the bin ``d`` with
    ``above(d) <= k < above(d) + hist[d]``, where ``above(d)`` counts the keys in higher
    bins; then ``k -= above(d)`` and the digit joins the prefix. ``FIRST`` sets
    ``k = min(min_kept, n_valid - 1)`` (0 when no pixel is valid)."""
    bins = tl.arange(0, 256)
    h = tl.load(hist_ptr + (SHIFT // 8) * 256 + bins)
    if FIRST:
        k = tl.minimum(tl.maximum(tl.load(state_ptr + 2) - 1, 0), min_kept)
    else:
        k = tl.load(state_ptr + 1)
    above = tl.sum(h, axis=0) - tl.cumsum(h, axis=0)
    pick = (above <= k) & (k < above + h)
    digit = tl.sum(tl.where(pick, bins, 0), axis=0).to(tl.int64)
    tl.store(state_ptr + 1, k - tl.sum(tl.where(pick, above, 0), axis=0))
    tl.store(state_ptr, tl.load(state_ptr) | (digit << SHIFT))


@kernel_jit
def _ohem_keep_kernel(
    v_ptr, t_ptr, state_ptr, out_ptr, N, S, stb, sts, C, ignore_index, max_nll,
    tiles, FLAT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Kept pixels' labels into int32 ``out`` (-1: not kept or ignored; -2: a kept label
    outside ``[0, C)``, still a bad label for the loss), and their count into ``state[3]``.
    Kept: not ignored and not ``nll <= min(order_k, max_nll)``, so NaN is kept."""
    pid = tl.program_id(0).to(tl.int64)
    limit = tl.load(state_ptr).to(tl.int32).to(tl.float32, bitcast=True)
    limit = tl.where(limit > max_nll, max_nll, limit)  # a NaN order_k stays NaN
    n_kept = tl.zeros([BLOCK], dtype=tl.int64)
    for i in range(tiles):
        offs = (pid * tiles + i) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        m = offs < N
        v = tl.load(v_ptr + offs, mask=m, other=0.0)
        y = _labels_at(t_ptr, offs, m, S, stb, sts, FLAT)
        kept = m & ~ignored(y, ignore_index) & ~(v <= limit)
        label = tl.where((y >= 0) & (y < C), y, -2).to(tl.int32)
        tl.store(out_ptr + offs, tl.where(kept, label, -1), mask=m)
        n_kept += kept.to(tl.int64)
    tl.atomic_add(state_ptr + 3, tl.sum(n_kept, axis=0), sem="relaxed")


@kernel_jit
def _topk_share_kernel(v_ptr, state_ptr, hist_ptr, out_ptr, N, tiles, BLOCK: tl.constexpr):
    """Each value's share of the n largest, after the select of the ``(n-1)``-th largest
    key ``t``: 1 above ``t``, ``(k_left + 1) / tied`` at ``t``, 0 below. ``k_left`` is what
    the scans left of ``n - 1`` after the keys above ``t``, so ``n - above = k_left + 1``;
    ``tied`` is the last pass's count in ``t``'s bin."""
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(state_ptr).to(tl.int32)
    tied = tl.load(hist_ptr + (t & 255)).to(tl.float32)
    frac = (tl.load(state_ptr + 1) + 1).to(tl.float32) / tied
    for i in range(tiles):
        offs = (pid * tiles + i) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        m = offs < N
        key = _nll_key(tl.load(v_ptr + offs, mask=m, other=0.0))
        share = tl.where(key > t, 1.0, tl.where(key == t, frac, 0.0))
        tl.store(out_ptr + offs, share, mask=m)
