"""Triton kernels of the pixel-wise family (see ``pixelwise.py`` for the formulas).

A tile is ``BLOCK_P`` pixels of one image and every class: the class column is loaded once
(or streamed in chunks with an online softmax for large C), the loss and, when asked, the
gradient are computed in fp32 registers. CE and softmax focal hold a pixel's whole column
in one thread up to 32 classes (``_tiles.column_tiles``) and walk the class rows twice
above (statistics, then gradient). A program takes ``TILES`` tiles in turn (one
unless ``SEGTRITON_STAGES`` > 1 pipelines the loop, see ``_tiles.py``) and writes one
partial loss sum for a fixed-order reduction.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._runtime import kernel_jit
from ._tiles import (
    LN2,
    LOG2E,
    WALK_UNROLL,
    column_classes,
    fast_exp,
    fast_log2,
    fast_rcp,
    grad_divisor,
    ignored,
    label_values,
    load_column,
    log1p,
    log1p_atanh,
    log1p_pos,
    pixel_block,
    program_tile,
    runs_of,
    store_column,
)


@triton.jit
def _load_labels(y_ptr, b, offs_p, pmask, syb, sys_, C, ignore_index):
    """Labels of a pixel block as int32 (0 where not valid), their valid mask, and a mask
    of bad labels (outside ``[0, C)``, tested before the cast to int32)."""
    y = label_values(tl.load(y_ptr + b * syb + offs_p * sys_, mask=pmask, other=0))
    valid = pmask & ~ignored(y, ignore_index)
    bad = valid & ((y < 0) | (y >= C))
    valid = valid & ~bad
    return tl.where(valid, y, 0).to(tl.int32), valid, bad


@triton.jit
def _mask_tile(t_ptr, b, offs_c, offs_p, m2, stb, stc, sts, ignore_index, HAS_IGNORE: tl.constexpr):
    """Mask values of a ``[classes, pixels]`` tile as ``(t, valid, bad)``; t = 0 where not
    valid, bad marks values outside [0, 1] (or NaN) that are not ``ignore_index``."""
    t = tl.load(
        t_ptr + b * stb + offs_c[:, None] * stc + offs_p[None, :] * sts, mask=m2, other=0
    ).to(tl.float32)
    valid = m2
    if HAS_IGNORE:
        valid = valid & (t != ignore_index)
    bad = valid & ((t < 0.0) | (t > 1.0) | (t != t))
    valid = valid & ~bad
    return tl.where(valid, t, 0.0), valid, bad


@triton.jit
def _load_tile(x_ptr, b, offs_c, offs_p, cmask, pmask, sxb, sxc, sxs):
    """fp32 tile; classes past C read -inf, pixels past S read 0."""
    ptrs = x_ptr + b * sxb + offs_c[:, None] * sxc + offs_p[None, :] * sxs
    return _load_at(ptrs, cmask, pmask)


@triton.jit
def _load_at(ptrs, cmask, pmask):
    """:func:`_load_tile` at given pointers."""
    x = tl.load(ptrs, mask=cmask[:, None] & pmask[None, :], other=float("-inf"))
    return tl.where(pmask[None, :], x.to(tl.float32), 0.0)


@kernel_jit
def _valid_sum_kernel(
    t_ptr,
    w_ptr,
    out_ptr,
    R,
    S,
    n_pblocks,
    stb,
    str_,
    sts,
    ignore_index,
    C,
    LABELS: tl.constexpr,
    HAS_W: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Per program, over the valid entries of a ``[B, R, S]`` target: the sum of their class
    weights with HAS_W (``w[y]`` for labels, R = 1; ``w[r]`` for the masks of channel r) or
    their count. Valid: not ``ignore_index`` and, for labels, in ``[0, C)`` (bad labels are
    counted nowhere; the loss kernels turn them into NaN)."""
    pid = tl.program_id(0).to(tl.int64)
    b, offs_p, pmask = pixel_block(pid, n_pblocks, S, BLOCK_P)
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    m = (offs_r < R)[:, None] & pmask[None, :]
    t = tl.load(t_ptr + b * stb + offs_r[:, None] * str_ + offs_p[None, :] * sts, mask=m, other=0)
    if LABELS:
        t = label_values(t)
        valid = m & ~ignored(t, ignore_index) & (t >= 0) & (t < C)
        t = tl.where(valid, t, 0).to(tl.int32)
    else:
        t = t.to(tl.float32)
        valid = m & (t != ignore_index)
    if HAS_W and LABELS:
        val = tl.load(w_ptr + t, mask=valid, other=0.0).to(tl.float32)
    elif HAS_W:
        w_r = tl.load(w_ptr + offs_r, mask=offs_r < R, other=0.0).to(tl.float32)
        val = tl.where(valid, w_r[:, None], 0.0)
    else:
        val = valid.to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(tl.sum(val, axis=1), axis=0))


@triton.jit
def _store_partials(loss_ptr, pid, acc, acc_n, COUNT: tl.constexpr):
    """Program ``pid``'s partial loss (the sum of ``acc``) at ``loss_ptr + pid``; with COUNT,
    its partial 'mean' denominator (of ``acc_n``) there and the loss one program count
    further on (``pixelwise._counted``)."""
    if COUNT:
        tl.store(loss_ptr + pid, tl.sum(acc_n, axis=0))
        tl.store(loss_ptr + tl.num_programs(0) + pid, tl.sum(acc, axis=0))
    else:
        tl.store(loss_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _label_terms(x_y, m, s_other, s):
    """``(log p_y, t = 1 - p_y, log s)`` from the max ``m``, ``s = sum_c exp(x_c - m)`` and
    its part over the other classes, the first two accurate as p_y -> 1 (no ``1 - p``
    cancellation). A +inf logit makes ``s`` NaN, and log p_y too, as in
    ``F.cross_entropy`` (the gradient is NaN there, so a finite loss would hide it).
    ``log s`` by :func:`fast_log2` (s >= 1, and ``|log p_y| >= log 2`` where the label's
    logit is not the max)."""
    log_s = fast_log2(s) * LN2
    logp_y = tl.where((x_y == m) & (s == s), -log1p_pos(s_other), (x_y - m) - log_s)
    return logp_y, s_other * fast_rcp(s), log_s


@triton.jit
def _focal_terms(logp_y, t, scale_y, gamma, IS_FOCAL: tl.constexpr):
    """Per pixel: ``(loss, K)`` with ``dL/dz_c = K * (p_c - [c = y])`` (plus the smoothing
    term for CE)."""
    if IS_FOCAL:
        pos = t > 0
        pow_g = tl.where(pos, tl.exp2(gamma * fast_log2(tl.where(pos, t, 1.0))), 0.0)
        q = 1.0 - t
        r = tl.where(pos, -logp_y / tl.where(pos, t, 1.0), 1.0)
        loss = -scale_y * pow_g * logp_y
        k = scale_y * pow_g * (1.0 + gamma * q * r)
    else:
        loss = -scale_y * logp_y
        k = scale_y
    return loss, k


@triton.jit
def _class_factors(w_ptr, offs_c, cmask, HAS_W: tl.constexpr):
    """fp32 class weights of a chunk (``w_ptr``; 1 without HAS_W), 0 past C."""
    if HAS_W:
        return tl.load(w_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)
    return cmask.to(tl.float32)


@triton.jit
def _softmax_tile_sums(x, e, m, offs_c, cmask, is_y, w_ptr, HAS_W: tl.constexpr):
    """Per pixel, from a tile holding every class (``e = exp(x - m)``): ``s = sum e``, its
    part over the other classes, the label's logit, the class factors ``w_c``, their sum and
    ``sum_c w_c (m - x_c)`` (the smoothing term)."""
    s = tl.sum(e, axis=0)
    s_other = tl.sum(tl.where(is_y, 0.0, e), axis=0)
    x_y = tl.sum(tl.where(is_y, x, 0.0), axis=0)
    w_c = _class_factors(w_ptr, offs_c, cmask, HAS_W)
    w_sum = tl.sum(w_c, axis=0)
    smooth_sum = tl.sum(w_c[:, None] * tl.where(cmask[:, None], m[None, :] - x, 0.0), axis=0)
    return s, s_other, x_y, w_c, w_sum, smooth_sum


@triton.jit
def _softmax_terms(
    x_y, m, s_other, s, scale_y, smooth_sum, w_sum, eps_c, smoothing, gamma, IS_FOCAL: tl.constexpr
):
    """Per pixel ``(loss, K, t = 1 - p_y)`` of CE with label smoothing or of softmax focal;
    the gradient is :func:`_column_grad` or :func:`_softmax_grad_walk` of them (in the
    region compounds :func:`_softmax_grad_tile`), with :func:`_label_grad`."""
    logp_y, t, log_s = _label_terms(x_y, m, s_other, s)
    loss, k = _focal_terms(logp_y, t, scale_y, gamma, IS_FOCAL)
    if not IS_FOCAL:
        k = k * (1.0 - smoothing)
        # without smoothing the term is dropped, not multiplied by 0: a class masked with
        # a -inf logit makes it inf (F.cross_entropy gives a finite loss there)
        smooth = eps_c * (smooth_sum + w_sum * log_s)
        loss = (1.0 - smoothing) * loss + tl.where(eps_c > 0.0, smooth, 0.0)
    return loss, k, t


@triton.jit
def _softmax_grad_p(p, is_y, t, k, eps_c, w_c, w_sum):
    """``K (p - onehot) + eps/C (W p - w_c)`` of a tile given ``p``; the true-class term
    ``p_y - 1 = -t`` is taken from ``t``."""
    diff = tl.where(is_y, -t[None, :], p)
    return k[None, :] * diff + eps_c * (w_sum * p - w_c[:, None])


@triton.jit
def _softmax_grad_tile(x, m, inv_s, is_y, t, k, eps_c, w_c, w_sum, gscale, valid):
    """``dL/dz`` of one tile: ``g (K (p - onehot) + eps/C (W p - w_c))``, 0 where invalid,
    ``p = exp(x - m) / s`` (:func:`_softmax_grad_p`)."""
    p = fast_exp(x - m[None, :]) * inv_s[None, :]
    dx = _softmax_grad_p(p, is_y, t, k, eps_c, w_c, w_sum)
    return tl.where(valid[None, :], dx * gscale[None, :], 0.0)


# a class walk's running max starts at the lowest finite float, so that a -inf logit never
# meets a -inf max (inf - inf); it stays there only where every logit is -inf (or NaN)
WALK_MAX0 = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def _walk_start(offs_p):
    """The state of a walk over class chunks before the first for a pixel block: the
    running max (``WALK_MAX0``), and zeros for its running sums."""
    zero = tl.zeros([offs_p.shape[0]], tl.float32)
    return tl.full([offs_p.shape[0]], WALK_MAX0, tl.float32), zero, zero, zero, zero


@triton.jit
def _walk_ptrs(x_ptr, b, offs_c0, offs_p, sxb, sxc, sxs):
    """Pointers of a class walk's first chunk ``offs_c0``, the step to the next chunk and
    the first offset (0), both int64 scalars (a chunk of class strides can pass 2^31). A
    walk reads ``ptrs + off`` and adds the step to ``off``: one scalar add per chunk, not
    an address computed from the class index, nor a carried tensor of pointers (which
    Triton 3.6 passed through shared memory in the loop's remainder)."""
    ptrs = x_ptr + b * sxb + offs_c0[:, None] * sxc + offs_p[None, :] * sxs
    step = (b * 0 + offs_c0.shape[0]) * sxc
    return ptrs, step, step * 0


@triton.jit
def _chunk_ptrs(x_ptr, b, offs_p, sxb, sxc, sxs, ROWS: tl.constexpr, VEC: tl.constexpr):
    """:func:`_walk_ptrs` of a walk over chunks of ROWS class rows that keep a one-row
    walk's layout, VEC pixels a thread (:func:`_tiles.runs_of`)."""
    offs_r = tl.arange(0, ROWS).to(tl.int64)
    return _walk_ptrs(x_ptr, b, offs_r, runs_of(offs_p, VEC), sxb, sxc, sxs)


@triton.jit
def _load_walk(ptrs, offs_c, pmask, C):
    """fp32 logits of one chunk of a class walk (at ``ptrs``) and its class mask. A chunk of
    one class (always below C) is the row, pixels past S read 0; in wider chunks classes
    past C read -inf, as in :func:`_load_tile`."""
    cmask = offs_c < C
    if offs_c.shape[0] == 1:
        return tl.load(ptrs, mask=pmask[None, :], other=0.0).to(tl.float32), cmask
    return _load_at(ptrs, cmask, pmask), cmask


@triton.jit
def _row_step(m, xc):
    """A one-class chunk ``xc`` against the running max m: ``(x, d, up)``, ``d = exp(-|x -
    m|)`` (the rescale of the old sums where x is the new max, ``up``; else x's own
    term), one exponential per logit."""
    x = tl.max(xc, axis=0)
    return x, tl.exp2(tl.abs(x - m) * -LOG2E), x > m


@triton.jit
def _walk_probs(xc, m, lse2):
    """Softmax probabilities of a class chunk given its pixels' max ``m`` and ``lse2 =
    log2(s)``: ``2^((x - m) log2(e) - lse2)``, one FFMA and one MUFU.EX2 per logit."""
    return tl.exp2((xc - m[None, :]) * LOG2E - lse2[None, :])


@triton.jit
def _online_step(m, s, ptrs, offs_c, pmask, C):
    """Loads the class chunk ``offs_c`` at ``ptrs`` (fp32 ``xc``) and adds it into the
    running per-pixel max ``m`` and ``s = sum exp(x - m)``: ``(xc, its class mask, the new
    m and s, exp(xc - m), exp(m_old - m_new))``, the last the factor that rescales every other
    running sum of exponentials. For a chunk of one class the two exponentials are 1 and
    ``exp(-|x - m_old|)``, one exponential per logit."""
    xc, cmask = _load_walk(ptrs, offs_c, pmask, C)
    if offs_c.shape[0] == 1:
        x, d, up = _row_step(m, xc)
        rescale = tl.where(up, d, 1.0)
        ec = tl.where(up, 1.0, d)
        return xc, cmask, tl.maximum(m, x), s * rescale + ec, ec[None, :], rescale
    m_new = tl.maximum(m, tl.max(xc, axis=0))
    ec = fast_exp(xc - m_new[None, :])
    rescale = fast_exp(m - m_new)
    return xc, cmask, m_new, s * rescale + tl.sum(ec, axis=0), ec, rescale


@triton.jit
def _label_step(s_other, x_y, w_sum, swx, xc, ec, rescale, is_y, wc, cmask):
    """One class chunk into the running label sums of :func:`_region_kernels._fold_walk`."""
    s_other = s_other * rescale + tl.sum(tl.where(is_y, 0.0, ec), axis=0)
    x_y += tl.sum(tl.where(is_y, xc, 0.0), axis=0)
    w_sum += tl.sum(wc, axis=0)
    swx += tl.sum(wc[:, None] * tl.where(cmask[:, None], xc, 0.0), axis=0)
    return s_other, x_y, w_sum, swx


@triton.jit
def _excl_step(m, s_ex, xc):
    """One class chunk into a running max ``m`` and ``s_ex``, the sum of ``exp(x_c - m)``
    over the classes so far but one of those at the max (whose term is 1). A chunk of one
    class takes one exponential: ``d = exp(-|x - m|)``, and a new max turns the old sum
    into ``(s_ex + 1) d``. Wider chunks leave out one of their maximal classes when it is
    the new max."""
    if xc.shape[0] == 1:
        x, d, up = _row_step(m, xc)
        return tl.maximum(m, x), tl.where(up, s_ex * d, s_ex) + d
    chunk_max = tl.max(xc, axis=0)
    m_new = tl.maximum(m, chunk_max)
    up = chunk_max > m
    e = fast_exp(xc - m_new[None, :])
    # a new max: its ties leave the sum and all but one come back as 1 each (no argmax,
    # which Triton's interpreter refuses on a chunk of NaNs)
    at_max = up[None, :] & (xc == m_new[None, :])
    n_max = tl.sum(at_max.to(tl.float32), axis=0)
    # the ties but one as a whole number: (s_f + n) - 1 would keep s_f to ulps of 1 only
    rest = tl.sum(tl.where(at_max, 0.0, e), axis=0) + tl.where(up, n_max - 1.0, n_max)
    return m_new, tl.where(up, (s_ex + 1.0) * fast_exp(m - m_new), s_ex) + rest


@triton.jit
def _excl_total(m, s_ex):
    """``s = 1 + s_ex`` after a walk of :func:`_excl_step`: NaN where the max is +inf (as
    an online softmax gives, and ``F.cross_entropy``'s loss) or every logit is -inf (the
    max never left ``WALK_MAX0``), as the softmax is NaN there."""
    return tl.where((m > WALK_MAX0) & (m < float("inf")), 1.0 + s_ex, float("nan"))


@triton.jit
def _tile_excl(x, e, m):
    """``(s, s_ex)`` of a tile holding whole class columns, ``e = exp(x - m)``: ``s`` and
    ``s_ex``, ``s`` less the 1 of one maximal class, as ``s_f`` (the sum over the classes
    below the max) plus the number of maximal classes less one, which is ``s - s_f`` (each
    of their terms is exactly 1) rounded to an integer."""
    s = tl.sum(e, axis=0)
    s_f = tl.sum(tl.where(x == m[None, :], -0.0, e), axis=0)
    return s, s_f + (tl.floor(s - s_f + 0.5) - 1.0)


@triton.jit
def _other_sum(x_y, m, s, s_ex):
    """``s_other = sum_{c != y} exp(x_c - m)`` from ``s`` and ``s_ex`` (``s`` less the 1 of
    one maximal class): ``s_ex`` exactly where the label's logit is the max; elsewhere
    ``p_y <= 1/2`` and ``s - exp(x_y - m)`` loses at most a bit."""
    return tl.where(x_y == m, s_ex, s - fast_exp(x_y - m))


@triton.jit
def _label_logit(x_ptr, b, offs_p, ys, valid, sxb, sxc, sxs):
    """fp32 logit of each pixel's label (0 where not valid), read on its own: loaded before
    the class sums, its latency passes while they are taken, and no class is compared
    with the label."""
    x_y = tl.load(x_ptr + b * sxb + ys.to(tl.int64) * sxc + offs_p * sxs, mask=valid, other=0.0)
    return x_y.to(tl.float32)


@triton.jit
def _column_sums(
    x_ptr, w_ptr, b, offs_c, offs_p, pmask, ys, valid, sxb, sxc, sxs,
    HAS_W: tl.constexpr, SMOOTH: tl.constexpr, NC: tl.constexpr, CLASS_FAST: tl.constexpr,
):  # fmt: skip
    """:func:`_softmax_walk_sums` of a tile holding the whole class column of its pixels
    (``offs_c``, NC classes: a constexpr, so that the rows past it fold away; read by
    :func:`load_column`, CLASS_FAST on channels_last), plus ``e = exp(x - m)`` of the
    tile for the gradient.

    ``s_ex``, ``s`` less the 1 of one maximal class, is :func:`_tile_excl`'s. The label's
    logit is read on its own (:func:`_label_logit`). Pixels past S read 0; the rows past NC
    hold -inf and their terms -0.0, which the compiler drops from every sum (``v + -0.0 =
    v``)."""
    x_y = _label_logit(x_ptr, b, offs_p, ys, valid, sxb, sxc, sxs)
    cmask = offs_c < NC
    rows = cmask[:, None]
    x = load_column(x_ptr, b, offs_c, offs_p, cmask, pmask, sxb, sxc, sxs, CLASS_FAST)
    x = tl.where(rows, x.to(tl.float32), float("-inf"))
    m = tl.max(x, axis=0)
    e = tl.where(rows, tl.exp2((x - m[None, :]) * LOG2E), -0.0)
    s, s_ex = _tile_excl(x, e, m)
    s_other = _other_sum(x_y, m, s, s_ex)
    w_c = _class_factors(w_ptr, offs_c, cmask, HAS_W)
    w_sum = NC * 1.0
    if HAS_W:
        w_sum = tl.sum(w_c, axis=0)
    smooth_sum = 0.0
    if SMOOTH:
        smooth_sum = tl.sum(tl.where(rows, w_c[:, None] * (m[None, :] - x), -0.0), axis=0)
    return m, s, s_other, x_y, w_sum, smooth_sum, e, w_c


@triton.jit
def _column_grad(
    g_ptr, b, offs_c, offs_p, pmask, valid, e, inv_s, kg, eg, w_c, w_sum, sgb, sgc, sgs,
    SMOOTH: tl.constexpr, NC: tl.constexpr, CLASS_FAST: tl.constexpr,
):  # fmt: skip
    """Writes ``kg p_c`` (plus ``eg (W p_c - w_c)`` with SMOOTH) over a tile of
    :func:`_column_sums`, ``p = e / s``, 0 where not valid (``kg``, ``eg`` are 0 there too);
    the label's entries are written over it after (:func:`_label_grad`)."""
    # 0 at an ignored pixel, whatever its logits hold (and so its inv_s)
    q = tl.where(valid[None, :], e, 0.0)
    dx = q * tl.where(valid, inv_s * (kg + eg * w_sum), 0.0)[None, :]
    if SMOOTH:
        dx -= eg[None, :] * w_c[:, None]
    store_column(g_ptr, dx, b, offs_c, offs_p, offs_c < NC, pmask, sgb, sgc, sgs, CLASS_FAST)


@triton.jit
def _softmax_walk_sums(
    x_ptr, w_ptr, b, offs_c0, offs_p, pmask, ys, valid, C, sxb, sxc, sxs,
    HAS_W: tl.constexpr, SMOOTH: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    """:func:`_softmax_tile_sums` streamed over class chunks of BLOCK_C (online softmax,
    the loop unrolled UNROLL times): per pixel ``(m, s, s_other, x_y, W, sum_c w_c (m -
    x_c))``, ``W = sum_c w_c``, the last two 0 without SMOOTH.

    The walk reads no label: it keeps ``s_ex``, ``s`` less the 1 of one maximal class
    (:func:`_excl_step`); the label's logit is read once (where valid), before the walk,
    so that its load's latency passes while the walk runs; ``s_other`` by
    :func:`_other_sum`, ``s`` as :func:`_excl_total` gives it."""
    x_y = _label_logit(x_ptr, b, offs_p, ys, valid, sxb, sxc, sxs)
    m, s_ex, swx, _, _ = _walk_start(offs_p)
    w_sum = 0.0
    ptrs, step, off = _walk_ptrs(x_ptr, b, offs_c0, offs_p, sxb, sxc, sxs)
    for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=UNROLL):
        offs_c = c0 + offs_c0
        xc, cmask = _load_walk(ptrs + off, offs_c, pmask, C)
        off += step
        m, s_ex = _excl_step(m, s_ex, xc)
        if SMOOTH:
            wc = _class_factors(w_ptr, offs_c, cmask, HAS_W)
            w_sum += tl.sum(wc, axis=0)
            swx += tl.sum(wc[:, None] * tl.where(cmask[:, None], xc, 0.0), axis=0)
    s = _excl_total(m, s_ex)
    return m, s, _other_sum(x_y, m, s, s_ex), x_y, w_sum, w_sum * m - swx


@triton.jit
def _softmax_grad_walk(
    x_ptr, w_ptr, g_ptr, b, offs_p, pmask, ys, valid, x_y, m, lse2, t, kg, eg, w_sum,
    C, sxb, sxc, sxs, sgb, sgc, sgs,
    HAS_W: tl.constexpr, SMOOTH: tl.constexpr, ROWS: tl.constexpr, VEC: tl.constexpr,
):  # fmt: skip
    """Writes the gradient of a pixel block walking its class chunks: ``kg p_c`` (plus ``eg (W
    p_c - w_c)`` with SMOOTH), ``p_c = 2^((x_c - m) log2(e) - lse2)``, ``lse2 = log2(s)``,
    and 0 where not valid (``kg``, ``eg`` are 0 there too); the label's entries are written
    over it after (:func:`_label_grad`).

    The classes go ROWS at a time (``_tiles.WRITE_ROWS``), one chunk's loads before its
    stores, in the row walk's layout (:func:`runs_of`, VEC pixels a thread); classes past
    C read 0 and are not written."""
    ptrs, step, off = _chunk_ptrs(x_ptr, b, offs_p, sxb, sxc, sxs, ROWS, VEC)
    g_ptrs, g_step, g_off = _chunk_ptrs(g_ptr, b, offs_p, sgb, sgc, sgs, ROWS, VEC)
    for c0 in tl.range(0, C, ROWS):
        offs_c = c0 + tl.arange(0, ROWS)  # int32: the class index is never an address
        cmask = offs_c < C
        gmask = cmask[:, None] & pmask[None, :]
        xc = tl.load(ptrs + off, mask=gmask, other=0.0).to(tl.float32)
        off += step
        p = _walk_probs(xc, m, lse2)
        p = tl.where(valid[None, :], p, 0.0)  # whatever an ignored pixel's logits hold
        dx = kg[None, :] * p
        if SMOOTH:
            dx += eg[None, :] * (w_sum * p - _class_factors(w_ptr, offs_c, cmask, HAS_W)[:, None])
        tl.store(g_ptrs + g_off, dx.to(g_ptr.dtype.element_ty), mask=gmask)
        g_off += g_step
    _label_grad(
        g_ptr, w_ptr, b, offs_p, ys, valid, x_y, m, lse2, t, kg, eg, w_sum, sgb, sgc, sgs,
        HAS_W, SMOOTH,
    )  # fmt: skip


@triton.jit
def _label_grad(
    g_ptr, w_ptr, b, offs_p, ys, valid, x_y, m, lse2, t, kg, eg, w_sum, sgb, sgc, sgs,
    HAS_W: tl.constexpr, SMOOTH: tl.constexpr,
):  # fmt: skip
    """Writes each valid pixel's label entry of the gradient, ``-kg t`` (plus ``eg (W p_y -
    w_y)`` with SMOOTH), over what the class rows wrote there: ``p_y - 1 = -t`` without
    cancellation as p_y -> 1, and no class compared with the label. A barrier orders the
    two stores of an entry, which may sit in different threads."""
    dx_y = -kg * t
    if SMOOTH:
        if HAS_W:
            w_y = tl.load(w_ptr + ys, mask=valid, other=0.0).to(tl.float32)
        else:
            w_y = 1.0
        dx_y += eg * (w_sum * tl.exp2((x_y - m) * LOG2E - lse2) - w_y)
    tl.debug_barrier()
    g_y = g_ptr + b * sgb + ys.to(tl.int64) * sgc + offs_p * sgs
    tl.store(g_y, dx_y.to(g_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _softmax_tile(
    b, offs_p, pmask, x_ptr, y_ptr, w_ptr, g_ptr, loss_ptr, denom_ptr, gout_ptr, C, S,
    sxb, sxc, sxs, syb, sys_, sgb, sgc, sgs, ignore_index, smoothing, gamma, scale,
    IS_FOCAL: tl.constexpr, HAS_W: tl.constexpr, SMOOTH: tl.constexpr,
    WRITE_GRAD: tl.constexpr, WRITE_LOSS: tl.constexpr, PER_PIXEL: tl.constexpr,
    MEAN: tl.constexpr, DEFER_MEAN: tl.constexpr, COUNT: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, UNROLL: tl.constexpr, ROWS: tl.constexpr,
    VEC: tl.constexpr, NC: tl.constexpr, CLASS_FAST: tl.constexpr,
):  # fmt: skip
    """The loss of one pixel tile (0 where ignored, NaN at a bad label), written per pixel
    with PER_PIXEL, and with COUNT each pixel's share of the 'mean' denominator (CE: its
    class weight, else 1; 0 where ignored or bad), else 0; its gradient written with
    WRITE_GRAD (the statistics walk unrolled UNROLL times, the gradient walk in chunks of
    ROWS classes: see :func:`_softmax_grad_walk`). SMOOTH: CE with a label smoothing
    above 0."""
    ys, valid, bad = _load_labels(y_ptr, b, offs_p, pmask, syb, sys_, C, ignore_index)
    # the label's class factor: CE weight w_y or focal alpha_y (a vector), else a scalar
    if HAS_W:
        scale_y = tl.load(w_ptr + ys, mask=valid, other=0.0).to(tl.float32)
    else:
        scale_y = tl.zeros([BLOCK_P], tl.float32) + scale
    offs_c0 = column_classes(BLOCK_C, CLASS_FAST)
    eps_c = 0.0  # a constant where nothing is smoothed, so its terms fold away
    if SMOOTH:
        eps_c = smoothing / C
    # pass 1: max, sum of exp, the label's logit, and (smoothing) sum_c w_c x_c
    if SINGLE:
        m, s, s_other, x_y, w_sum, smooth_sum, e, w_c = _column_sums(
            x_ptr, w_ptr, b, offs_c0, offs_p, pmask, ys, valid, sxb, sxc, sxs, HAS_W, SMOOTH,
            NC, CLASS_FAST,
        )  # fmt: skip
    else:
        m, s, s_other, x_y, w_sum, smooth_sum = _softmax_walk_sums(
            x_ptr, w_ptr, b, offs_c0, offs_p, pmask, ys, valid, C, sxb, sxc, sxs, HAS_W,
            SMOOTH, BLOCK_C, UNROLL,
        )  # fmt: skip
    loss, k, t = _softmax_terms(
        x_y, m, s_other, s, scale_y, smooth_sum, w_sum, eps_c, smoothing, gamma, IS_FOCAL
    )
    inv_s = fast_rcp(s)
    loss = tl.where(valid, loss, 0.0)
    loss = tl.where(bad, float("nan"), loss)
    count = tl.zeros([BLOCK_P], tl.float32)
    if COUNT:
        if HAS_W and not IS_FOCAL:
            count = scale_y  # w_y, 0 where not valid (its masked load)
        else:
            count = valid.to(tl.float32)
    if WRITE_LOSS and PER_PIXEL:
        tl.store(loss_ptr + b * S + offs_p, loss, mask=pmask)
    if WRITE_GRAD:
        if PER_PIXEL:
            gscale = tl.load(gout_ptr + b * S + offs_p, mask=pmask, other=0.0).to(tl.float32)
        else:
            gscale = tl.zeros([BLOCK_P], tl.float32) + 1.0
        if MEAN and not COUNT:  # COUNT writes a deferred gradient, unweighted (pixelwise.py)
            gscale = gscale * (1.0 / grad_divisor(denom_ptr, DEFER_MEAN))
        kg = tl.where(valid, k * gscale, 0.0)
        eg = tl.where(valid, eps_c * gscale, 0.0)
        lse2 = fast_log2(s)
        if SINGLE:
            _column_grad(
                g_ptr, b, offs_c0, offs_p, pmask, valid, e, inv_s, kg, eg, w_c, w_sum,
                sgb, sgc, sgs, SMOOTH, NC, CLASS_FAST,
            )  # fmt: skip
            _label_grad(
                g_ptr, w_ptr, b, offs_p, ys, valid, x_y, m, lse2, t, kg, eg, w_sum,
                sgb, sgc, sgs, HAS_W, SMOOTH,
            )  # fmt: skip
        else:
            _softmax_grad_walk(
                x_ptr, w_ptr, g_ptr, b, offs_p, pmask, ys, valid, x_y, m, lse2, t, kg, eg,
                w_sum, C, sxb, sxc, sxs, sgb, sgc, sgs, HAS_W, SMOOTH, ROWS, VEC,
            )  # fmt: skip
    return loss, count


@kernel_jit
def _softmax_loss_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    g_ptr,
    loss_ptr,
    denom_ptr,
    gout_ptr,
    C,
    S,
    n_pblocks,
    n_blocks,
    sxb,
    sxc,
    sxs,
    syb,
    sys_,
    sgb,
    sgc,
    sgs,
    ignore_index,
    smoothing,
    gamma,
    scale,
    IS_FOCAL: tl.constexpr,
    HAS_W: tl.constexpr,
    SMOOTH: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    WRITE_LOSS: tl.constexpr,
    PER_PIXEL: tl.constexpr,
    MEAN: tl.constexpr,
    DEFER_MEAN: tl.constexpr,
    COUNT: tl.constexpr,
    SINGLE: tl.constexpr,
    TILES: tl.constexpr,
    STAGES: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    UNROLL: tl.constexpr,
    ROWS: tl.constexpr,
    VEC: tl.constexpr,
    NC: tl.constexpr,
    CLASS_FAST: tl.constexpr,
):
    """Softmax cross-entropy (label smoothing, class weights) or softmax focal loss.

    ``w_ptr`` holds the per-class factor: CE's class weights (which also enter the
    smoothing term), or focal's alpha vector; ``scale`` is the factor without a vector.

    SINGLE: each tile holds its pixels' NC classes (:func:`_column_sums`; VEC pixels a
    thread for ``_tiles.column_tiles``; CLASS_FAST: ``_tiles.class_fast``), else classes
    are walked in chunks of BLOCK_C. Each program takes TILES pixel tiles in turn
    (prefetched STAGES - 1 ahead; see ``_tiles.STAGES``). WRITE_LOSS: per-program partial
    sums (or per-pixel losses with PER_PIXEL) to loss_ptr; with COUNT, each program's
    partial 'mean' denominator there and its partial loss one program count further on
    (no pre-pass; denom_ptr is not read).
    WRITE_GRAD: dL/dz to g_ptr, scaled by 1/denom (MEAN; left to the backward with
    DEFER_MEAN, see ``_tiles.defers_mean``, and with COUNT) and by grad_output (per pixel
    with PER_PIXEL, else assumed 1 and applied later in place).
    """
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_P], tl.float32)
    acc_n = tl.zeros([BLOCK_P], tl.float32)
    for i in tl.range(0, TILES, num_stages=STAGES):
        b, offs_p, pmask = program_tile(
            pid, i, n_blocks, n_pblocks, S, TILES, BLOCK_P, VEC if SINGLE else 1
        )
        loss, count = _softmax_tile(
            b, offs_p, pmask, x_ptr, y_ptr, w_ptr, g_ptr, loss_ptr, denom_ptr, gout_ptr, C, S,
            sxb, sxc, sxs, syb, sys_, sgb, sgc, sgs, ignore_index, smoothing, gamma, scale,
            IS_FOCAL, HAS_W, SMOOTH, WRITE_GRAD, WRITE_LOSS, PER_PIXEL, MEAN, DEFER_MEAN,
            COUNT, SINGLE, BLOCK_C, BLOCK_P, UNROLL, ROWS, VEC, NC, CLASS_FAST,
        )  # fmt: skip
        acc += loss
        acc_n += count
    if WRITE_LOSS and not PER_PIXEL:
        _store_partials(loss_ptr, pid, acc, acc_n, COUNT)


@triton.jit
def _probs_chunk(x_ptr, t_ptr, w_ptr, b, offs_c, offs_p, pmask, C, sxb, sxc, sxs, stb, stc, sts,
                 smoothing, HAS_W: tl.constexpr):  # fmt: skip
    """A ``[classes, pixels]`` chunk: logits (-inf past C), ``w_c t'_c`` with
    ``t' = (1 - eps) t + eps / C`` (0 past C), the class mask and the bad-target mask."""
    cmask = offs_c < C
    x = _load_tile(x_ptr, b, offs_c, offs_p, cmask, pmask, sxb, sxc, sxs)
    t, _, bad = _mask_tile(
        t_ptr, b, offs_c, offs_p, cmask[:, None] & pmask[None, :], stb, stc, sts, 0.0, False
    )
    w = _class_factors(w_ptr, offs_c, cmask, HAS_W)
    wt = w[:, None] * ((1.0 - smoothing) * t + smoothing / C)
    return x, wt, cmask, bad


@triton.jit
def _probs_grad(x, wt, cmask, m, s, s_rest, wsum):
    """``dL/dz_c = W p_c - w_c t'_c``; at a maximal logit (``p_c = 1 / s``) taken as
    ``((W - w_c t'_c) - w_c t'_c (s - 1)) / s``, exact as p_c -> 1. NaN for every class
    of a pixel whose largest logit is infinite (one +inf, or all -inf), as torch's
    softmax gives there (the loss is NaN too)."""
    is_max = (x == m[None, :]) & cmask[:, None]
    inv_s = fast_rcp(s)[None, :]  # per pixel: a multiply per logit, not a division
    at_max = ((wsum[None, :] - wt) - wt * s_rest[None, :]) * inv_s
    dz = tl.where(is_max, at_max, (wsum[None, :] * inv_s) * fast_exp(x - m[None, :]) - wt)
    return tl.where(tl.abs(m[None, :]) == float("inf"), float("nan"), dz)


@triton.jit
def _probs_tile(
    b, offs_p, pmask, x_ptr, t_ptr, w_ptr, g_ptr, loss_ptr, denom_ptr, gout_ptr, C, S,
    sxb, sxc, sxs, stb, stc, sts, sgb, sgc, sgs, smoothing, HAS_W: tl.constexpr,
    WRITE_GRAD: tl.constexpr, WRITE_LOSS: tl.constexpr, PER_PIXEL: tl.constexpr,
    MEAN: tl.constexpr, DEFER_MEAN: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Cross-entropy against class probabilities of one pixel tile (NaN where a target lies
    outside [0, 1]): ``l = W log s - sum_c w_c t'_c (x_c - m)``, ``W = sum_c w_c t'_c``,
    ``s = sum_c exp(x_c - m)``; both terms are >= 0, and ``log s = log1p(s - 1)`` with
    ``s - 1`` summed without the 1 of one maximal logit. Written per pixel with PER_PIXEL;
    the gradient written with WRITE_GRAD."""
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)  # int64: c * stride_c can pass 2^31
    if SINGLE:
        x, wt, cmask, bad = _probs_chunk(
            x_ptr, t_ptr, w_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, stb, stc, sts,
            smoothing, HAS_W,
        )  # fmt: skip
        m = tl.max(x, axis=0)
        is_max = (x == m[None, :]) & cmask[:, None]
        e = fast_exp(x - m[None, :])
        s_other = tl.sum(tl.where(is_max, 0.0, e), axis=0)
        n_max = tl.sum(is_max.to(tl.float32), axis=0)
        wsum = tl.sum(wt, axis=0)
        a = tl.sum(tl.where(cmask[:, None], wt * (x - m[None, :]), 0.0), axis=0)
        pbad = tl.max(bad.to(tl.int32), axis=0) > 0
    else:
        m = tl.full([BLOCK_P], float("-inf"), tl.float32)
        s_other = tl.zeros([BLOCK_P], tl.float32)  # sum of exp(x_c - m) off the maximum
        n_max = tl.zeros([BLOCK_P], tl.float32)  # how many logits equal m
        wsum = tl.zeros([BLOCK_P], tl.float32)
        a = tl.zeros([BLOCK_P], tl.float32)  # sum_c w_c t'_c (x_c - m)
        pbad = tl.zeros([BLOCK_P], tl.int1)
        for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=WALK_UNROLL):
            xc, wtc, cmask, badc = _probs_chunk(
                x_ptr, t_ptr, w_ptr, b, c0 + offs_c0, offs_p, pmask, C, sxb, sxc, sxs,
                stb, stc, sts, smoothing, HAS_W,
            )  # fmt: skip
            m_new = tl.maximum(m, tl.max(xc, axis=0))
            up = m_new > m
            s_other = tl.where(up, (s_other + n_max) * fast_exp(m - m_new), s_other)
            n_max = tl.where(up, 0.0, n_max)
            a = tl.where(up & (wsum != 0.0), a - wsum * (m_new - m), a)
            m = m_new
            is_max = (xc == m[None, :]) & cmask[:, None]
            ec = fast_exp(xc - m[None, :])
            s_other += tl.sum(tl.where(is_max, 0.0, ec), axis=0)
            n_max += tl.sum(is_max.to(tl.float32), axis=0)
            wsum += tl.sum(wtc, axis=0)
            a += tl.sum(tl.where(cmask[:, None], wtc * (xc - m[None, :]), 0.0), axis=0)
            pbad = pbad | (tl.max(badc.to(tl.int32), axis=0) > 0)
    s_rest = s_other + (n_max - 1.0)
    s = s_other + n_max
    loss = wsum * log1p(s_rest) - a
    valid = pmask & ~pbad
    loss = tl.where(pmask, loss, 0.0)
    loss = tl.where(pbad, float("nan"), loss)
    if WRITE_LOSS and PER_PIXEL:
        tl.store(loss_ptr + b * S + offs_p, loss, mask=pmask)
    if WRITE_GRAD:
        if PER_PIXEL:
            gscale = tl.load(gout_ptr + b * S + offs_p, mask=pmask, other=0.0).to(tl.float32)
        else:
            gscale = tl.zeros([BLOCK_P], tl.float32) + 1.0
        if MEAN:
            gscale = gscale / grad_divisor(denom_ptr, DEFER_MEAN)
        g_base = g_ptr + b * sgb + offs_p[None, :] * sgs
        if SINGLE:
            dx = _probs_grad(x, wt, cmask, m, s, s_rest, wsum)
            dx = tl.where(valid[None, :], dx * gscale[None, :], 0.0)
            tl.store(
                g_base + offs_c0[:, None] * sgc,
                dx.to(g_ptr.dtype.element_ty),
                mask=cmask[:, None] & pmask[None, :],
            )
        else:
            for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=WALK_UNROLL):
                offs_c = c0 + offs_c0
                xc, wtc, cmask, _ = _probs_chunk(
                    x_ptr, t_ptr, w_ptr, b, offs_c, offs_p, pmask, C, sxb, sxc, sxs,
                    stb, stc, sts, smoothing, HAS_W,
                )  # fmt: skip
                dx = _probs_grad(xc, wtc, cmask, m, s, s_rest, wsum)
                dx = tl.where(valid[None, :], dx * gscale[None, :], 0.0)
                tl.store(
                    g_base + offs_c[:, None] * sgc,
                    dx.to(g_ptr.dtype.element_ty),
                    mask=cmask[:, None] & pmask[None, :],
                )
    return loss


@kernel_jit
def _probs_loss_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    g_ptr,
    loss_ptr,
    denom_ptr,
    gout_ptr,
    C,
    S,
    n_pblocks,
    n_blocks,
    sxb,
    sxc,
    sxs,
    stb,
    stc,
    sts,
    sgb,
    sgc,
    sgs,
    smoothing,
    HAS_W: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    WRITE_LOSS: tl.constexpr,
    PER_PIXEL: tl.constexpr,
    MEAN: tl.constexpr,
    DEFER_MEAN: tl.constexpr,
    SINGLE: tl.constexpr,
    TILES: tl.constexpr,
    STAGES: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Cross-entropy against class probabilities ``[B, C, S]`` (class weights, label
    smoothing); programs, tiles, WRITE_LOSS and WRITE_GRAD as in
    :func:`_softmax_loss_kernel`."""
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_P], tl.float32)
    for i in tl.range(0, TILES, num_stages=STAGES):
        b, offs_p, pmask = program_tile(pid, i, n_blocks, n_pblocks, S, TILES, BLOCK_P)
        acc += _probs_tile(
            b, offs_p, pmask, x_ptr, t_ptr, w_ptr, g_ptr, loss_ptr, denom_ptr, gout_ptr, C, S,
            sxb, sxc, sxs, stb, stc, sts, sgb, sgc, sgs, smoothing, HAS_W, WRITE_GRAD,
            WRITE_LOSS, PER_PIXEL, MEAN, DEFER_MEAN, SINGLE, BLOCK_C, BLOCK_P,
        )  # fmt: skip
    if WRITE_LOSS and not PER_PIXEL:
        tl.store(loss_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _exp_neg_abs(x):
    """``e = exp(-|x|)`` (in (0, 1], no overflow): one multiply and one MUFU.EX2."""
    return tl.exp2(tl.abs(x) * -LOG2E)


@triton.jit
def _pick_pq(x, e, inv):
    """``(sigmoid(x), sigmoid(-x))`` from ``e = exp(-|x|)`` and ``inv = 1 / (1 + e)``."""
    return tl.where(x >= 0, inv, e * inv), tl.where(x >= 0, e * inv, inv)


@triton.jit
def _sigmoid_pq(x):
    """``(sigmoid(x), sigmoid(-x))`` without overflow."""
    e = _exp_neg_abs(x)
    return _pick_pq(x, e, fast_rcp(1.0 + e))


@triton.jit
def _sigmoid_parts(x):
    """``(log p, log q, p, q)`` of logits x, ``p = sigmoid(x)``, ``q = 1 - p``, each
    without cancellation, from ``e = exp(-|x|)`` and one reciprocal ``r = 1 / ((1 + e)(2 +
    e))``: ``1 / (1 + e) = (2 + e) r`` gives p and q as :func:`_sigmoid_pq` does, and ``e /
    (2 + e) = e (1 + e) r`` is the argument of :func:`log1p_atanh` for ``log(1 + e)``, so
    that ``log p = min(x, 0) - log(1 + e)`` (one MUFU.EX2 and one MUFU.RCP per logit)."""
    e = _exp_neg_abs(x)
    one_e = 1.0 + e
    two_e = 2.0 + e
    r = fast_rcp(one_e * two_e)
    l1p = log1p_atanh(e * one_e * r)
    p, q = _pick_pq(x, e, two_e * r)
    return tl.minimum(x, 0.0) - l1p, tl.minimum(-x, 0.0) - l1p, p, q


@triton.jit
def _sigmoid_terms(x, t, wp, wn, gamma, IS_FOCAL: tl.constexpr, HARD: tl.constexpr = False):
    """Elementwise ``(loss, dL/dz)`` on logits ``x`` and targets ``t`` in [0, 1].

    BCE: ``-(wp t log p + wn (1 - t) log(1 - p))`` (wp = weight * pos_weight, wn = weight).
    Focal: ``a (1 - p_t)^gamma BCE`` with ``a = wp t + wn (1 - t)`` (weight times alpha and
    times 1 - alpha). HARD: every ``t`` is 0 or 1 (labels), so ``log(1 - p_t)`` and
    ``d(1 - p_t)/dz / (1 - p_t)`` are picked, not computed for soft targets too.
    """
    logp, logq, p, q = _sigmoid_parts(x)
    if IS_FOCAL:
        # u = 1 - p_t: picked in log space for t = 0 or 1 (exact where it underflows),
        # computed where t is soft; pow_g before the rest holds 72 registers, not 90 (sm_90)
        pos = t == 1.0
        log_u = tl.where(pos, logq, logp)
        bce = -(t * logp + (1.0 - t) * logq)  # NaN at an infinite logit, as in torch
        if not HARD:
            u = q * t + p * (1.0 - t)
            u_safe = tl.where(u > 0.0, u, 1.0)
            soft = ~pos & (t != 0.0)
            log_u = tl.where(soft, tl.log(u_safe), log_u)
        pow_g = tl.exp2(log_u * (gamma * LOG2E))  # the scalar product once a tile
        a = tl.where(pos, wp, wn)
        ratio = tl.where(pos, -p, q)  # du/dz / u
        p_minus_t = tl.where(pos, -q, p)
        if not HARD:
            a = wp * t + wn * (1.0 - t)
            ratio = tl.where(soft, p * q * (1.0 - 2.0 * t) / u_safe, ratio)
            p_minus_t = (1.0 - t) * p - t * q  # p - t without cancellation as p -> 1
        loss = a * pow_g * bce
        dx = a * pow_g * (gamma * ratio * bce + p_minus_t)
    else:
        loss = -(wp * t * logp + wn * (1.0 - t) * logq)
        dx = wn * (1.0 - t) * p - wp * t * q
    return loss, dx


@triton.jit
def _sigmoid_tile(
    b, offs_p, pmask, x_ptr, t_ptr, w_ptr, pw_ptr, g_ptr, loss_ptr, denom_ptr, gout_ptr, C, S,
    sxb, sxc, sxs, stb, stc, sts, sgb, sgc, sgs, ignore_index, gamma, smoothing, alpha,
    IS_FOCAL: tl.constexpr, LABELS: tl.constexpr, HAS_W: tl.constexpr, HAS_PW: tl.constexpr,
    SCALAR_ALPHA: tl.constexpr, HAS_IGNORE: tl.constexpr, SMOOTH: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    WRITE_LOSS: tl.constexpr, PER_ELEMENT: tl.constexpr, MEAN: tl.constexpr,
    DEFER_MEAN: tl.constexpr, COUNT: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):  # fmt: skip
    """The loss of one pixel tile summed over classes (per element with PER_ELEMENT, written
    there instead), and with COUNT its valid elements (the 'mean' denominator's share;
    else 0); its gradient written with WRITE_GRAD. With SMOOTH, targets are
    smoothed toward 1/2: ``t + smoothing (1 - 2 t)`` (a constexpr: the extra tile it costs
    took the one-vs-rest focal loss at [8, 19, 512, 1024] bf16 from 116 to 138 registers
    on sm_90, half the resident warps). Labels (one-vs-rest) without smoothing are hard
    targets (HARD, :func:`_sigmoid_terms`). The loss adds up per element and is summed
    over the classes once per tile."""
    HARD: tl.constexpr = LABELS and not SMOOTH
    if LABELS:
        ys, pvalid, pbad = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, C, ignore_index)
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    count = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    # logits and gradient addressed by walked pointers: the class index stays int32
    ptrs, step, off = _walk_ptrs(x_ptr, b, offs_c0, offs_p, sxb, sxc, sxs)
    if WRITE_GRAD:
        g_ptrs, g_step, g_off = _walk_ptrs(g_ptr, b, offs_c0, offs_p, sgb, sgc, sgs)
    for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=WALK_UNROLL):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        m2 = cmask[:, None] & pmask[None, :]
        x = tl.load(ptrs + off, mask=m2, other=0.0).to(tl.float32)
        off += step
        if LABELS:  # int32 class index and label: one compare per element
            t = (offs_c[:, None] == ys[None, :]).to(tl.float32)
            valid = m2 & pvalid[None, :]
            bad = m2 & pbad[None, :]
        else:
            t, valid, bad = _mask_tile(
                t_ptr, b, offs_c.to(tl.int64), offs_p, m2, stb, stc, sts, ignore_index, HAS_IGNORE
            )
        if SMOOTH:
            t = t + smoothing * (1.0 - 2.0 * t)
        if HAS_PW:  # BCE's pos_weight, or the focal loss's alpha per class
            pw = tl.load(pw_ptr + offs_c, mask=cmask, other=1.0).to(tl.float32)[:, None]
        else:
            pw = tl.full([BLOCK_C, 1], 1.0, tl.float32)
        if HAS_W:
            w = tl.load(w_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)[:, None]
        else:
            w = tl.full([BLOCK_C, 1], 1.0, tl.float32)
        if SCALAR_ALPHA:  # the focal loss's one alpha, a scalar: no per-class tile to hold
            wp = w * alpha
            wn = w * (1.0 - alpha)
        elif IS_FOCAL and HAS_PW:
            wp = w * pw
            wn = w * (1.0 - pw)
        else:
            wp = w * pw
            wn = w
        loss, dx = _sigmoid_terms(x, t, wp, wn, gamma, IS_FOCAL, HARD)
        loss = tl.where(valid, loss, 0.0)
        loss = tl.where(bad, float("nan"), loss)
        if COUNT:
            count += valid.to(tl.float32)
        if WRITE_LOSS:
            if PER_ELEMENT:
                tl.store(loss_ptr + (b * C + offs_c[:, None]) * S + offs_p[None, :], loss, mask=m2)
            else:
                acc += loss
        if WRITE_GRAD:
            if PER_ELEMENT:
                gsc = tl.load(
                    gout_ptr + (b * C + offs_c[:, None]) * S + offs_p[None, :], mask=m2, other=0.0
                ).to(tl.float32)
            else:
                gsc = tl.zeros_like(x) + 1.0
            if MEAN and not COUNT:  # COUNT writes a deferred gradient (pixelwise.py)
                gsc = gsc / grad_divisor(denom_ptr, DEFER_MEAN)
            dx = tl.where(valid, dx * gsc, 0.0)
            tl.store(g_ptrs + g_off, dx.to(g_ptr.dtype.element_ty), mask=m2)
            g_off += g_step
    return tl.sum(acc, axis=0), tl.sum(count, axis=0)


@kernel_jit
def _sigmoid_loss_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    pw_ptr,
    g_ptr,
    loss_ptr,
    denom_ptr,
    gout_ptr,
    C,
    S,
    n_pblocks,
    n_blocks,
    sxb,
    sxc,
    sxs,
    stb,
    stc,
    sts,
    sgb,
    sgc,
    sgs,
    ignore_index,
    gamma,
    smoothing,
    alpha,
    IS_FOCAL: tl.constexpr,
    LABELS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_PW: tl.constexpr,
    SCALAR_ALPHA: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    SMOOTH: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    WRITE_LOSS: tl.constexpr,
    PER_ELEMENT: tl.constexpr,
    MEAN: tl.constexpr,
    DEFER_MEAN: tl.constexpr,
    COUNT: tl.constexpr,
    TILES: tl.constexpr,
    STAGES: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Elementwise BCE (weight, pos_weight) or sigmoid focal loss over ``[B, C, S]``.

    Targets are masks ``[B, C, S]`` (soft allowed) or, with LABELS, integer labels ``[B, S]``
    read one-vs-rest (``t_c = [y = c]``). Classes are looped in chunks of BLOCK_C; each
    program takes TILES pixel tiles in turn (prefetched STAGES - 1 ahead). COUNT: each
    program's count of valid elements, the 'mean' denominator's share, at loss_ptr and
    its partial loss one program count further on, as in :func:`_softmax_loss_kernel`.
    """
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_P], tl.float32)
    acc_n = tl.zeros([BLOCK_P], tl.float32)
    for i in tl.range(0, TILES, num_stages=STAGES):
        b, offs_p, pmask = program_tile(pid, i, n_blocks, n_pblocks, S, TILES, BLOCK_P)
        loss, count = _sigmoid_tile(
            b, offs_p, pmask, x_ptr, t_ptr, w_ptr, pw_ptr, g_ptr, loss_ptr, denom_ptr, gout_ptr,
            C, S, sxb, sxc, sxs, stb, stc, sts, sgb, sgc, sgs, ignore_index, gamma, smoothing,
            alpha, IS_FOCAL, LABELS, HAS_W, HAS_PW, SCALAR_ALPHA, HAS_IGNORE, SMOOTH, WRITE_GRAD,
            WRITE_LOSS, PER_ELEMENT, MEAN, DEFER_MEAN, COUNT, BLOCK_C, BLOCK_P,
        )  # fmt: skip
        acc += loss
        acc_n += count
    if WRITE_LOSS and not PER_ELEMENT:
        _store_partials(loss_ptr, pid, acc, acc_n, COUNT)
