"""Triton kernels of the Lovasz losses (see ``lovasz.py``).

A *row* is one (unit, class): the pooled batch or one image (PER_IMAGE), times a class
(softmax) or the single channel (hinge). Its N entries are the unit's pixels; entry n of
row r lives at ``keys[r * N + n]``. Pixel n of a row of unit u is image ``u + n // S``,
position ``n % S`` (per image, ``n < S``).

- ``_lovasz_errors_kernel``: the errors, ``|[y = c] - p_c|`` with a fused softmax, or the
  hinge ``1 - x (2 t - 1)``; ignored pixels get the lowest key (-inf) so they sort last.
- after ``torch.sort`` of a group of rows (descending), ``_lovasz_pack_kernel`` moves the
  sorted keys back into the key buffer and the sort indices into ``perm`` as codes
  ``4 n + 2 fg + entry`` (int32 when a row has fewer than 2^29 entries), and counts the
  foreground entries of each block of sorted positions (integers); ``_lovasz_grad_kernel``
  turns the exclusive prefix of those counts into the Lovasz gradient in closed form,
  ``g_k = 1 / U_k`` at a foreground entry and ``I_k / (U_{k-1} U_k)`` at a background one
  (``I``, ``U``: the integer intersection and union counts after k), then either sums
  ``f(e_k) g_k`` per block (the loss) or scatters ``w_r f'(e_k) g_k`` back to the entry's
  pixel (the backward). Whether an entry counts (not ignored) and is foreground is read
  from its pixel's label once, by the pack kernel, and carried in the code: the gradient
  passes gather no label, and the Lovasz-softmax backward reads no key.
- ``_lovasz_softmax_grad_kernel``: the chain through ``|fg - p|`` and the softmax.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._pixelwise_kernels import _load_labels, _load_tile
from ._region_kernels import _softmax_stats
from ._runtime import kernel_jit
from ._tiles import label_values, pixel_block


@kernel_jit
def _lovasz_errors_kernel(
    x_ptr,
    t_ptr,
    key_ptr,
    C,
    S,
    n_pblocks,
    sxb,
    sxc,
    sxs,
    stb,
    sts,
    key_b,
    key_c,
    ignore_index,
    HINGE: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    PROBS: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``key[b * key_b + c * key_c + s]``: the error of class c at pixel s of image b
    (softmax over one tile of every class with SINGLE, else streamed in chunks; with
    PROBS the input is ``p``, a counted entry outside [0, 1] a NaN key)."""
    pid = tl.program_id(0).to(tl.int64)
    b, offs_p, pmask = pixel_block(pid, n_pblocks, S, BLOCK_P)
    out = key_ptr + b * key_b + offs_p
    if HINGE:
        x = tl.load(x_ptr + b * sxb + offs_p * sxs, mask=pmask, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + b * stb + offs_p * sts, mask=pmask, other=0).to(tl.float32)
        valid = pmask
        if HAS_IGNORE:
            valid = valid & (t != ignore_index)
        bad = valid & (t != 0.0) & (t != 1.0)
        err = tl.where(bad, float("nan"), 1.0 - x * (2.0 * t - 1.0))
        tl.store(out, tl.where(valid, err, float("-inf")), mask=pmask)
    else:
        ys, valid, bad = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, C, ignore_index)
        offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
        if PROBS:
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + offs_c0
                cmask = offs_c < C
                p = _load_tile(x_ptr, b, offs_c, offs_p, cmask, pmask, sxb, sxc, sxs)
                _store_softmax_errors(out, p, offs_c, ys, valid, bad, cmask, pmask, key_c, PROBS)
        elif SINGLE:  # every class in one tile: the logits are read once
            cmask = offs_c0 < C
            x = _load_tile(x_ptr, b, offs_c0, offs_p, cmask, pmask, sxb, sxc, sxs)
            e = tl.exp(x - tl.max(x, axis=0)[None, :])
            p = e * (1.0 / tl.sum(e, axis=0))[None, :]
            _store_softmax_errors(out, p, offs_c0, ys, valid, bad, cmask, pmask, key_c, PROBS)
        else:
            m, inv_s, _ = _softmax_stats(
                x_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, BLOCK_C
            )
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + offs_c0
                cmask = offs_c < C
                x = _load_tile(x_ptr, b, offs_c, offs_p, cmask, pmask, sxb, sxc, sxs)
                p = tl.exp(x - m[None, :]) * inv_s[None, :]
                _store_softmax_errors(out, p, offs_c, ys, valid, bad, cmask, pmask, key_c, PROBS)


@triton.jit
def _store_softmax_errors(
    out, p, offs_c, ys, valid, bad, cmask, pmask, key_c, PROBS: tl.constexpr
):  # fmt: skip
    """Keys ``|[y = c] - p_c|`` of a tile: -inf where ignored, NaN for a bad label or, with
    PROBS (``p`` is the input), a counted entry outside [0, 1]."""
    fg = (offs_c[:, None] == ys[None, :]).to(tl.float32)
    err = tl.abs(fg - p)
    if PROBS:
        err = tl.where((p >= 0.0) & (p <= 1.0), err, float("nan"))
    key = tl.where(valid[None, :], err, float("-inf"))
    key = tl.where(bad[None, :], float("nan"), key)
    tl.store(out[None, :] + offs_c[:, None] * key_c, key, mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _entry_fg(
    n, t_ptr, r, kmask, C, S, stb, sts, ignore_index,
    HINGE: tl.constexpr, PER_IMAGE: tl.constexpr, HAS_IGNORE: tl.constexpr,
):  # fmt: skip
    """For the entries of row r at pixels ``n`` (int64): whether each counts (in the row,
    not ignored) and whether it is a foreground pixel of the row's class."""
    if PER_IMAGE:
        b = r // C + n // S
    else:
        b = n // S
    t = tl.load(t_ptr + b * stb + (n % S) * sts, mask=kmask, other=0)
    if HINGE:
        fg = t.to(tl.float32) == 1.0
    else:
        t = label_values(t)  # a uint32 label compared in 32 bits would wrap onto -100
        fg = t == r % C
    entry = kmask
    if HAS_IGNORE:
        entry = entry & (t != ignore_index)
    return entry, fg & entry


@kernel_jit
def _lovasz_pack_kernel(
    val_ptr, idx_ptr, key_ptr, perm_ptr, t_ptr, count_ptr, r0,
    C, S, N, n_kblocks, stb, sts, ignore_index,
    HINGE: tl.constexpr, PER_IMAGE: tl.constexpr, HAS_IGNORE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Rows ``r0 ..`` of one sort: ``key[r] = val[r - r0]``, ``perm[r] = 4 idx + 2 fg +
    entry`` (in perm's dtype: the pixel and its two flags, so later passes read no label),
    and ``count[r, j]``: foreground entries among block j's sorted positions."""
    pid = tl.program_id(0).to(tl.int64)
    i, offs_k, kmask = pixel_block(pid, n_kblocks, N, BLOCK_K)  # row r0 + i, sorted positions
    r = r0 + i
    n = tl.load(idx_ptr + i * N + offs_k, mask=kmask, other=0)
    entry, fg = _entry_fg(
        n, t_ptr, r, kmask, C, S, stb, sts, ignore_index, HINGE, PER_IMAGE, HAS_IGNORE
    )
    code = 4 * n + 2 * fg.to(tl.int64) + entry.to(tl.int64)
    tl.store(perm_ptr + r * N + offs_k, code.to(perm_ptr.dtype.element_ty), mask=kmask)
    e = tl.load(val_ptr + i * N + offs_k, mask=kmask)
    tl.store(key_ptr + r * N + offs_k, e, mask=kmask)
    tl.store(count_ptr + r0 * n_kblocks + pid, tl.sum(fg.to(tl.int32), axis=0))


@kernel_jit
def _lovasz_grad_kernel(
    perm_ptr, key_ptr, start_ptr, total_ptr, w_ptr, out_ptr, N, n_kblocks,
    HINGE: tl.constexpr, SCATTER: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Lovasz gradient ``g`` of the sorted positions of one block of row r, from the count
    of foreground entries before the block (``start``) and in the row (``total``); pixel,
    foreground and entry flags come from ``perm``'s codes.

    Not SCATTER: ``out[r, j] = sum_k f(e_k) g_k`` (f = relu for the hinge, else identity).
    SCATTER: ``out[r * N + n_k] = w_r f'(e_k) g_k``, the gradient w.r.t. the entry's error;
    for the hinge (``e = 1 - x (2 fg - 1)``) times ``de/dx = 1 - 2 fg``, i.e. dL/dx itself,
    in ``out``'s dtype. Lovasz-softmax's scatter (f' = 1) reads no key.
    """
    pid = tl.program_id(0).to(tl.int64)
    r, offs_k, kmask = pixel_block(pid, n_kblocks, N, BLOCK_K)  # row r, sorted positions
    code = tl.load(perm_ptr + r * N + offs_k, mask=kmask, other=0).to(tl.int64)
    n = code >> 2
    fg = (code & 2) != 0
    entry = (code & 1) != 0
    cum = tl.load(start_ptr + pid) + tl.cumsum(fg.to(tl.int32), axis=0)  # inclusive
    total = tl.load(total_ptr + r)
    inter = (total - cum).to(tl.float32)
    union = (total + (offs_k + 1) - cum).to(tl.float32)
    prev = tl.where(fg, union, union - 1.0)  # U_{k-1}
    g = tl.where(fg, 1.0 / union, inter / (tl.where(prev > 0, prev, 1.0) * union))
    g = tl.where(total == 0, tl.where(offs_k == 0, 1.0, 0.0), g)
    if SCATTER and not HINGE:
        df = tl.zeros_like(g) + 1.0
    else:
        e = tl.load(key_ptr + r * N + offs_k, mask=entry, other=0.0)
        if HINGE:
            f = tl.where(e <= 0, 0.0, e)  # relu that keeps a NaN
            df = tl.where(e > 0, 1.0, 0.0)
        else:
            f = e
    if SCATTER:
        grad = tl.where(entry, tl.load(w_ptr + r) * df * g, 0.0)
        if HINGE:
            grad = tl.where(fg, -grad, grad)
        tl.store(out_ptr + r * N + n, grad.to(out_ptr.dtype.element_ty), mask=kmask)
    else:
        tl.store(out_ptr + pid, tl.sum(tl.where(entry, f * g, 0.0), axis=0))


@triton.jit
def _error_grad(
    x_ptr, ge_base, b, offs_c, offs_p, pmask, ys, m, inv_s, C, sxb, sxc, sxs, key_c,
    PROBS: tl.constexpr,
):  # fmt: skip
    """``(p, dL/dp, mask)`` of a class chunk: ``dL/dp_c = ge_c sign(p_c - fg_c)``; ``p``
    the softmax, or with PROBS the input."""
    m2 = (offs_c < C)[:, None] & pmask[None, :]
    p = _load_tile(x_ptr, b, offs_c, offs_p, offs_c < C, pmask, sxb, sxc, sxs)
    if not PROBS:
        p = tl.exp(p - m[None, :]) * inv_s[None, :]
    fg = (offs_c[:, None] == ys[None, :]).to(tl.float32)
    ge = tl.load(ge_base + offs_c[:, None] * key_c, mask=m2, other=0.0)
    return p, ge * tl.where(p > fg, 1.0, tl.where(p < fg, -1.0, 0.0)), m2


@kernel_jit
def _lovasz_softmax_grad_kernel(
    x_ptr, t_ptr, ge_ptr, g_ptr, C, S, n_pblocks, sxb, sxc, sxs, stb, sts, sgb, sgc, sgs,
    key_b, key_c, ignore_index, PROBS: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):  # fmt: skip
    """``dL/dz`` from ``ge = dL/de`` (laid out as the keys): ``dp_c = ge_c sign(p_c - fg_c)``,
    ``dz_c = p_c (dp_c - sum_k p_k dp_k)``, or with PROBS (the input is ``p``) ``dp_c``."""
    pid = tl.program_id(0).to(tl.int64)
    b, offs_p, pmask = pixel_block(pid, n_pblocks, S, BLOCK_P)
    ys, valid, bad = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, C, ignore_index)
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    mean_dp = tl.zeros([BLOCK_P], tl.float32)
    m, inv_s = mean_dp, mean_dp
    ge_base = ge_ptr + b * key_b + offs_p[None, :]
    if not PROBS:
        m, inv_s, _ = _softmax_stats(x_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, BLOCK_C)
        for c0 in range(0, C, BLOCK_C):  # sum_k p_k dp_k first
            offs_c = c0 + offs_c0
            p, dp, m2 = _error_grad(x_ptr, ge_base, b, offs_c, offs_p, pmask, ys, m, inv_s, C,
                                    sxb, sxc, sxs, key_c, PROBS)  # fmt: skip
            mean_dp += tl.sum(tl.where(m2, p * dp, 0.0), axis=0)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + offs_c0
        p, dp, m2 = _error_grad(x_ptr, ge_base, b, offs_c, offs_p, pmask, ys, m, inv_s, C,
                                sxb, sxc, sxs, key_c, PROBS)  # fmt: skip
        if PROBS:
            dz = tl.where(valid[None, :], dp, 0.0)
        else:
            dz = tl.where(valid[None, :], p * (dp - mean_dp[None, :]), 0.0)
        tl.store(
            g_ptr + b * sgb + offs_c[:, None] * sgc + offs_p[None, :] * sgs,
            dz.to(g_ptr.dtype.element_ty),
            mask=m2,
        )
