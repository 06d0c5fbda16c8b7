"""Triton kernels of the generalized Wasserstein Dice loss (formulas in
``segtriton.reference.generalized_wasserstein_dice_loss``).

Every pixel needs ``w_i = sum_c M[y_i, c] p_ic``: its softmax weighted by the row of the
``[C, C]`` distance matrix ``M`` at its label, gathered per pixel (M is small and stays in
cache). The loss of an image depends on its pixels only through, per class c,
``V_c`` (pixels labelled c) and ``W_c = sum_{i: y_i = c} w_i``, so:

- ``_wass_stats_kernel`` (pass 1) reads logits and labels once and writes one partial row
  ``(V, W)`` per program, added in a fixed order afterwards;
- ``_wass_grad_kernel`` (pass 2, the backward) gets ``k_c = dL/dW_c`` per (image, class)
  and writes ``dL/dz_ic = k_{y_i} p_ic (M[y_i, c] - w_i)``.

Ignored pixels take no part (``k = 0``, counted nowhere). A label outside ``[0, C)``
puts NaN into its image's ``W`` sums.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._pixelwise_kernels import WALK_MAX0, _load_labels, _load_tile
from ._region_kernels import _add_row
from ._runtime import kernel_jit
from ._tiles import fast_exp, program_tile


@triton.jit
def _distance_rows(m_ptr, ys, offs_c, cmask, pmask, C):
    """``M[y_i, c]`` for a ``[classes, pixels]`` tile, 0 outside it."""
    ptrs = m_ptr + ys[None, :].to(tl.int64) * C + offs_c[:, None]
    return tl.load(ptrs, mask=cmask[:, None] & pmask[None, :], other=0.0)


@triton.jit
def _softmax_distance(
    x_ptr, m_ptr, b, offs_c0, offs_p, pmask, ys, C, sxb, sxc, sxs, BLOCK_C: tl.constexpr
):
    """Per pixel ``(max logit, 1 / sum exp(x - max), w)``, one pass over the class chunks
    (online softmax; one chunk when ``BLOCK_C >= C``)."""
    mx = tl.full([offs_p.shape[0]], WALK_MAX0, tl.float32)
    s = tl.zeros([offs_p.shape[0]], tl.float32)
    acc = tl.zeros([offs_p.shape[0]], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + offs_c0
        cmask = offs_c < C
        x = _load_tile(x_ptr, b, offs_c, offs_p, cmask, pmask, sxb, sxc, sxs)
        m_new = tl.maximum(mx, tl.max(x, axis=0))
        rescale = fast_exp(mx - m_new)
        e = fast_exp(x - m_new[None, :])
        s = s * rescale + tl.sum(e, axis=0)
        acc = acc * rescale + tl.sum(e * _distance_rows(m_ptr, ys, offs_c, cmask, pmask, C), axis=0)
        mx = m_new
    inv_s = 1.0 / s
    return mx, inv_s, acc * inv_s


@triton.jit
def _hit_sums(offs_c, ys, valid, w):
    """Per class of the chunk: its valid labelled pixels and the sum of their distances
    ``w``, as one reduction over the pixels (one exchange across the warps, not two)."""
    hit = (offs_c[:, None] == ys[None, :]) & valid[None, :]
    both = tl.join(hit.to(tl.float32), tl.where(hit, w[None, :], 0.0))
    return tl.split(tl.sum(both, axis=1))


@kernel_jit
def _wass_stats_kernel(
    x_ptr, t_ptr, m_ptr, part_ptr, C, S, n_chunks, tiles_per_chunk, sxb, sxc, sxs, stb, sts,
    ignore_index,
    SINGLE: tl.constexpr, STAGES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Pass 1: program ``pid`` sums ``(V[C], W[C])`` over ``tiles_per_chunk`` pixel tiles
    of image ``pid // n_chunks`` into its row of ``part``. SINGLE (``BLOCK_C >= C``) keeps
    the row in registers; otherwise it is added to in memory chunk by chunk."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_chunks
    first_tile = (pid % n_chunks) * tiles_per_chunk
    out = part_ptr + pid * 2 * C
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    acc_v = tl.zeros([BLOCK_C], tl.float32)
    acc_w = tl.zeros([BLOCK_C], tl.float32)
    if not SINGLE:
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + offs_c0
            tl.store(out + offs_c, acc_v, mask=offs_c < C)
            tl.store(out + C + offs_c, acc_v, mask=offs_c < C)
    for tile in tl.range(first_tile, first_tile + tiles_per_chunk, num_stages=STAGES):
        offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
        pmask = offs_p < S
        ys, valid, bad = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, C, ignore_index)
        _, _, w = _softmax_distance(
            x_ptr, m_ptr, b, offs_c0, offs_p, pmask, ys, C, sxb, sxc, sxs, BLOCK_C
        )
        nan = tl.sum(tl.where(bad, float("nan"), 0.0), axis=0)
        if SINGLE:
            sum_v, sum_w = _hit_sums(offs_c0, ys, valid, w)
            acc_v += sum_v
            acc_w += sum_w + nan
        else:
            tl.debug_barrier()
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + offs_c0
                cmask = offs_c < C
                sum_v, sum_w = _hit_sums(offs_c, ys, valid, w)
                _add_row(out + offs_c, sum_v, cmask)
                _add_row(out + C + offs_c, sum_w + nan, cmask)
    if SINGLE:
        cmask = offs_c0 < C
        tl.store(out + offs_c0, acc_v, mask=cmask)
        tl.store(out + C + offs_c0, acc_w, mask=cmask)


@kernel_jit
def _wass_grad_kernel(
    x_ptr, t_ptr, m_ptr, k_ptr, g_ptr, C, S, n_pblocks, n_blocks, sxb, sxc, sxs, stb, sts,
    sgb, sgc, sgs, ignore_index,
    SINGLE: tl.constexpr, TILES: tl.constexpr, STAGES: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Pass 2: ``dL/dz_ic = k[b, y_i] p_ic (M[y_i, c] - w_i)`` (0 at an ignored pixel,
    whatever its logits) for TILES pixel tiles per program. SINGLE computes it from the
    one class tile it loaded; otherwise a first sweep over the class chunks gives the
    softmax and ``w``, a second one writes."""
    pid = tl.program_id(0).to(tl.int64)
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    for i in tl.range(0, TILES, num_stages=STAGES):
        b, offs_p, pmask = program_tile(pid, i, n_blocks, n_pblocks, S, TILES, BLOCK_P)
        ys, valid, _ = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, C, ignore_index)
        k = tl.load(k_ptr + b * C + ys, mask=valid, other=0.0)
        g_base = g_ptr + b * sgb + offs_p[None, :] * sgs
        if SINGLE:
            cmask = offs_c0 < C
            x = _load_tile(x_ptr, b, offs_c0, offs_p, cmask, pmask, sxb, sxc, sxs)
            e = tl.exp(x - tl.max(x, axis=0)[None, :])
            p = e / tl.sum(e, axis=0)[None, :]
            rows = _distance_rows(m_ptr, ys, offs_c0, cmask, pmask, C)
            w = tl.sum(p * rows, axis=0)
            dz = tl.where(valid[None, :], k[None, :] * p * (rows - w[None, :]), 0.0)
            tl.store(
                g_base + offs_c0[:, None] * sgc,
                dz.to(g_ptr.dtype.element_ty),
                mask=cmask[:, None] & pmask[None, :],
            )
        else:
            mx, inv_s, w = _softmax_distance(
                x_ptr, m_ptr, b, offs_c0, offs_p, pmask, ys, C, sxb, sxc, sxs, BLOCK_C
            )
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + offs_c0
                cmask = offs_c < C
                x = _load_tile(x_ptr, b, offs_c, offs_p, cmask, pmask, sxb, sxc, sxs)
                p = tl.exp(x - mx[None, :]) * inv_s[None, :]
                rows = _distance_rows(m_ptr, ys, offs_c, cmask, pmask, C)
                dz = tl.where(valid[None, :], k[None, :] * p * (rows - w[None, :]), 0.0)
                tl.store(
                    g_base + offs_c[:, None] * sgc,
                    dz.to(g_ptr.dtype.element_ty),
                    mask=cmask[:, None] & pmask[None, :],
                )


@triton.jit
def _wass_class_terms(v_ptr, offs_c, C, GDL: tl.constexpr):
    """Per class of a chunk: ``(cmask, v, w, a2, q)``: the sums ``V, W`` (``[2, C]`` at
    ``v_ptr``), the weight ``a2 = 2 a_c`` of ``V_c - W_c`` in ``2 TP``, and the weight
    ``q`` of ``W_c`` in ``D - 2 TP`` (see :func:`_wass_finalize_kernel`)."""
    cmask = offs_c < C
    v = tl.load(v_ptr + offs_c, mask=cmask, other=0.0)
    w = tl.load(v_ptr + C + offs_c, mask=cmask, other=0.0)
    if GDL:
        a = 1.0 / (v + 1.0)
        return cmask, v, w, 2.0 * a, a
    a2 = tl.where(offs_c != 0, 2.0, 0.0)
    return cmask, v, w, a2, tl.full(v.shape, 1.0, tl.float32)


@kernel_jit
def _wass_finalize_kernel(
    sums_ptr, loss_ptr, coef_ptr, C, smooth_nr, smooth_dr, GDL: tl.constexpr, BLOCK: tl.constexpr
):
    """Image ``pid``'s loss and ``coef[c] = dL/dW_c`` from its sums ``V, W`` (``[2, C]``).

    With ``2 TP = sum_c a2_c (V_c - W_c)`` and ``D - 2 TP = sum_c q_c W_c`` ('default':
    ``q = 1``; 'GDL': ``q = a``), ``T = D + smooth_dr`` and the ratio
    ``R = (2 TP + smooth_nr) / T``, the loss ``1 - R`` is formed as
    ``(sum_c q_c W_c + smooth_dr - smooth_nr) / T`` and the gradient as
    ``dL/dW_c = (a2_c + R (q_c - a2_c)) / T``, so neither takes ``1 - x`` of a float
    near 1 (a loss near 1 has a gradient ``~ R / T`` that ``1 - loss`` would round away)."""
    b = tl.program_id(0).to(tl.int64)
    v_ptr = sums_ptr + b * 2 * C
    dq = tl.zeros([BLOCK], tl.float32)
    tp2 = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, C, BLOCK):
        cmask, v, w, a2, q = _wass_class_terms(v_ptr, c0 + tl.arange(0, BLOCK), C, GDL)
        dq += tl.where(cmask, q * w, 0.0)
        tp2 += tl.where(cmask, a2 * (v - w), 0.0)
    rest = tl.sum(dq, axis=0)
    tp2_sum = tl.sum(tp2, axis=0)
    total = tp2_sum + rest + smooth_dr
    tl.store(loss_ptr + b, (rest + (smooth_dr - smooth_nr)) / total)
    ratio = (tp2_sum + smooth_nr) / total
    for c0 in range(0, C, BLOCK):
        offs_c = c0 + tl.arange(0, BLOCK)
        cmask, v, w, a2, q = _wass_class_terms(v_ptr, offs_c, C, GDL)
        tl.store(coef_ptr + b * C + offs_c, (a2 + ratio * (q - a2)) / total, mask=cmask)
