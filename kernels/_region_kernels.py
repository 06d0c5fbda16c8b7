"""Triton kernels of the region family (see ``region.py`` for the formulas).

Two passes over the logits, no one-hot:

- ``_region_stats_kernel``: each program walks a range of pixel tiles of one image and sums,
  per class, ``I = sum p g`` (``min(p, g)``), ``F = P - I`` and ``M = T - I`` with ``P =
  sum p`` (``p^2``) and ``T = sum g`` (``g^2``), F and M from terms of their own
  (:func:`_overlap_terms`: ``1 - p`` taken whole, where the softmax or sigmoid gives it,
  so that near a right prediction they are not differences of sums near the pixel
  count), T and, with COUNT, ``N`` the counted pixels (the MCC) in fp32; it writes one
  partial row per program, added in a fixed order afterwards.
- ``_region_grad_kernel``: given ``u = dL/dI + dL/dP`` and ``v = dL/dP`` per (image,
  class), ``dL/dp`` where ``g = 1`` and where ``g = 0``, recomputes ``p`` tile by tile
  (``TILES`` tiles per program) and writes ``dL/dz``: ``dL/dp_c = u_c g_c + v_c (1 - g_c)``
  (``(u_c - v_c) g_c + 2 v_c p_c`` when squared), then through the softmax
  ``dz_c = p_c (dL/dp_c - sum_k p_k dL/dp_k)`` or the sigmoid ``dz = dL/dp p (1 - p)``.
  ``u`` comes from the finalize whole, not as a sum of two large terms that nearly
  cancel (the MCC of a class that fills its unit). With classes streamed, the softmax
  needs a walk over the class rows before any is written; with the product sums (FOLD)
  that walk also takes ``sum_k p_k dL/dp_k``, else a second walk does. With hard
  labels (and no BCE / sigmoid focal term) ``dL/dp_c`` is picked as ``u_c`` at the label
  and ``v_c`` elsewhere (:func:`_dp_rows`), in that walk and in the write loop.

SOFTMAX means multiclass (a softmax over classes), else a sigmoid per element, or with
PROBS none: the input is ``p`` (``from_logits=False``) and ``dL/dz = dL/dp``. LABELS
means integer labels ``[B, S]`` (multiclass), else masks ``[B, C, S]``: in multiclass
mode, class probabilities (one-hot or soft) as the target. Ignored entries have
``p = g = 0``; a bad label or mask value, or with PROBS an input outside [0, 1], puts NaN
into its image's T and M sums, so the loss is NaN.

Compound losses (PIXEL = 1: CE or softmax focal; PIXEL = 2: BCE or sigmoid focal) ride
along: pass 1 also sums the pixel loss and its 'mean' divisor per image, and pass 2 adds
``k_b`` times the pixel term's gradient, ``k_b`` the gradient of the total loss with
respect to image b's pixel-loss sum. With classes streamed, the softmax term's per-pixel
sums come from the walk that finds ``(m, 1/s)``, so it costs no extra pass.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._pixelwise_kernels import (
    _chunk_ptrs,
    _class_factors,
    _column_sums,
    _excl_step,
    _excl_total,
    _label_step,
    _load_labels,
    _load_walk,
    _mask_tile,
    _online_step,
    _sigmoid_pq,
    _sigmoid_terms,
    _softmax_grad_p,
    _softmax_grad_tile,
    _softmax_terms,
    _softmax_tile_sums,
    _softmax_walk_sums,
    _tile_excl,
    _walk_probs,
    _walk_ptrs,
    _walk_start,
)
from ._runtime import kernel_jit
from ._tiles import (
    WALK_UNROLL,
    column_classes,
    fast_exp,
    fast_log2,
    fast_rcp,
    program_tile,
    runs_of,
    store_column,
)

# OVERLAP, how pass 1 forms the sums: PRODUCT ``I = sum p g``, ``P = sum p``,
# ``T = sum g``; SQUARED: P and T sum ``p^2`` and ``g^2``; SOFT_MIN: I sums ``min(p, g)``
PRODUCT, SQUARED, SOFT_MIN = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _softmax_stats(x_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, BLOCK_C: tl.constexpr):
    """Per pixel ``(m, 1/s, q_top)``: the max logit, the inverse sum of ``exp(x - m)`` and
    ``1 - p`` of a class at the max (``s_ex / s``, whole as p -> 1), streamed over class
    chunks (online softmax)."""
    m, s_ex, _, _, _ = _walk_start(offs_p)
    ptrs, step, off = _walk_ptrs(x_ptr, b, offs_c0, offs_p, sxb, sxc, sxs)
    for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=WALK_UNROLL):
        xc, cmask = _load_walk(ptrs + off, c0 + offs_c0, pmask, C)
        m, s_ex = _excl_step(m, s_ex, xc)
        off += step
    inv_s = fast_rcp(_excl_total(m, s_ex))
    return m, inv_s, s_ex * inv_s


@triton.jit
def _load_x(x_ptr, b, offs_c, offs_p, pmask, C, sxb, sxc, sxs, SOFTMAX: tl.constexpr):
    """fp32 logits tile: classes past C read -inf for the softmax, else 0; pixels past S
    read 0 (a chunk of one class, always below C, is loaded as the row)."""
    ptrs = x_ptr + b * sxb + offs_c[:, None] * sxc + offs_p[None, :] * sxs
    if SOFTMAX or offs_c.shape[0] == 1:
        return _load_walk(ptrs, offs_c, pmask, C)[0]
    return tl.load(ptrs, mask=(offs_c < C)[:, None] & pmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _chunk_terms(
    z,
    t_ptr,
    b,
    offs_c,
    offs_p,
    pmask,
    ys,
    pvalid,
    pbad,
    inv_s,
    C,
    stb,
    stc,
    sts,
    ignore_index,
    SOFTMAX: tl.constexpr,
    LABELS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    PROBS: tl.constexpr,
):
    """``(p, g, valid, bad)`` of a ``[classes, pixels]`` tile, p and g 0 where not valid.
    ``z`` is ``exp(x - m)`` (SOFTMAX: ``p = z / s``), the logits (sigmoid) or, with PROBS,
    the probabilities themselves (a counted entry outside [0, 1] is bad)."""
    m2 = (offs_c < C)[:, None] & pmask[None, :]
    if LABELS:
        valid = m2 & pvalid[None, :]
        bad = m2 & pbad[None, :]
        # int32 (ys is): one compare, where the int64 class index took two
        g = tl.where(valid & (offs_c.to(tl.int32)[:, None] == ys[None, :]), 1.0, 0.0)
    else:
        g, valid, bad = _mask_tile(
            t_ptr, b, offs_c, offs_p, m2, stb, stc, sts, ignore_index, HAS_IGNORE
        )
    if SOFTMAX:
        p = tl.where(valid, z * inv_s[None, :], 0.0)
    elif PROBS:
        p = tl.where(valid, z, 0.0)
        bad = bad | (valid & ~((z >= 0.0) & (z <= 1.0)))
    else:
        p = tl.where(valid, _sigmoid_pq(z)[0], 0.0)
    return p, g, valid, bad


@triton.jit
def _complement(x, z, p, m, q_top, SOFTMAX: tl.constexpr, PROBS: tl.constexpr):
    """``q = 1 - p`` of a tile, whole as p -> 1: the softmax's ``q_top`` (:func:`_softmax_stats`)
    at a class at the max (elsewhere ``p <= 1/2``), the sigmoid's ``sigmoid(-x)``, or
    with PROBS ``1 - p`` of the input itself (exact for p >= 1/2)."""
    if SOFTMAX:
        return tl.where(x == m[None, :], q_top[None, :], 1.0 - p)
    if PROBS:
        return 1.0 - z
    return _sigmoid_pq(z)[1]


@triton.jit
def _overlap_terms(p, q, g, OVERLAP: tl.constexpr):
    """Per entry ``(i, f, m)``: the terms of ``I``, ``F = P - I`` and ``M = T - I`` (the
    soft false positives and negatives), each formed on its own so that F and M keep their
    digits where the prediction is right: PRODUCT ``(p g, p (1 - g), g q)``, SQUARED ``(p
    g, p d, -g d)``, SOFT_MIN ``(min(p, g), max(d, 0), max(-d, 0))`` with ``d = p - g``
    taken as ``(1 - g) - q`` where ``g >= 1/2``. ``q = 1 - p`` (:func:`_complement`) is
    read only where ``g > 0``."""
    d = tl.where(g >= 0.5, (1.0 - g) - q, p - g)
    if OVERLAP == SQUARED:
        return p * g, p * d, -g * d
    if OVERLAP == SOFT_MIN:
        return tl.minimum(p, g), tl.maximum(d, 0.0), tl.maximum(-d, 0.0)
    return p * g, p * (1.0 - g), g * q


@triton.jit
def _hard_terms(p, q, is_y, OVERLAP: tl.constexpr):
    """:func:`_overlap_terms` of hard labels (``g = [c = y]``, ``is_y``), ``-0.0`` for an
    absent term (a row that is all ``-0.0`` folds away from the sums): at the label ``(p,
    0, q)``, ``(p, -p q, q)`` SQUARED, ``(min(p, 1), max(p - 1, 0), q)`` SOFT_MIN; elsewhere
    ``(0, p, 0)`` (``p^2`` SQUARED). ``q`` is read at the label only."""
    i = tl.where(is_y, p, -0.0)
    f_y = tl.zeros_like(p)
    pp = p
    if OVERLAP == SQUARED:
        f_y = -p * q
        pp = p * p
    if OVERLAP == SOFT_MIN:
        i = tl.where(is_y, tl.minimum(p, 1.0), -0.0)
        f_y = tl.maximum(p - 1.0, 0.0)
    return i, tl.where(is_y, f_y, pp), tl.where(is_y, q, -0.0)


@triton.jit
def _tile_sums(p, q, g, valid, bad, OVERLAP: tl.constexpr):
    """Per-class sums of one tile: ``(I, F, M, T, N)`` (:func:`_overlap_terms`, q read
    where valid only; ``T = sum g``, ``g^2`` SQUARED), N the valid entries; T and M are
    NaN for a class seeing a bad value. I, F, M and T are one reduction over the pixels
    (a ``[classes, pixels, 2, 2]`` join): one exchange across the tile's warps where
    separate sums took one each (on sm_90, Dice pass 1 at C = 19: 10 barriers in the
    kernel, not 18)."""
    i, f, m = _overlap_terms(p, tl.where(valid, q, 0.0), g, OVERLAP)
    gg = g
    if OVERLAP == SQUARED:
        gg = g * g
    gg = tl.where(bad, float("nan"), gg)
    m = tl.where(bad, float("nan"), m)
    sums = tl.sum(tl.join(tl.join(i, f), tl.join(m, gg)), axis=1)
    pairs, rest = tl.split(sums)
    si, sf = tl.split(pairs)
    sm, st = tl.split(rest)
    return si, sf, sm, st, tl.sum(valid.to(tl.float32), axis=1)


@triton.jit
def _pixel_setup(
    x_ptr, t_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, stb, sts, ignore_index,
    SOFTMAX: tl.constexpr, LABELS: tl.constexpr, SINGLE: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Per pixel: labels, valid and bad masks (LABELS) and the softmax ``(m, 1/s)``
    (SOFTMAX); with SINGLE also the whole class tile ``x`` and ``z`` (``exp(x - m)`` or
    ``x``)."""
    x = tl.zeros([BLOCK_C, offs_p.shape[0]], tl.float32)
    if SINGLE:
        x = _load_x(x_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, SOFTMAX)
    z = x
    ys = offs_p
    pvalid = pmask
    pbad = pmask
    m = tl.zeros([offs_p.shape[0]], tl.float32)
    inv_s = m
    if LABELS:
        ys, pvalid, pbad = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, C, ignore_index)
    if SOFTMAX:
        if SINGLE:
            m = tl.max(x, axis=0)
            z = fast_exp(x - m[None, :])
            inv_s = fast_rcp(tl.sum(z, axis=0))
        else:
            m, inv_s, _ = _softmax_stats(
                x_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, BLOCK_C
            )
    return x, z, ys, pvalid, pbad, m, inv_s


@triton.jit
def _load_chunk(
    x_ptr, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s, C,
    sxb, sxc, sxs, stb, stc, sts, ignore_index,
    SOFTMAX: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr, PROBS: tl.constexpr,
):  # fmt: skip
    """A class chunk streamed from memory: ``(x, z, p, g, valid, bad)`` (see
    :func:`_chunk_terms`; ``z = exp(x - m)`` for the softmax, else ``x``)."""
    x = _load_x(x_ptr, b, offs_c, offs_p, pmask, C, sxb, sxc, sxs, SOFTMAX)
    z = x
    if SOFTMAX:
        z = fast_exp(x - m[None, :])
    p, g, valid, bad = _chunk_terms(
        z, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, inv_s, C,
        stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
    )  # fmt: skip
    return x, z, p, g, valid, bad


@triton.jit
def _softmax_pixel(
    x_y, m, s_other, s, smooth_sum, w_sum, ys, pvalid, pbad, C, w_ptr, smoothing, gamma, scale,
    IS_FOCAL: tl.constexpr, HAS_W: tl.constexpr, SMOOTH: tl.constexpr = True,
):  # fmt: skip
    """The softmax pixel term (CE or focal, see :func:`_pixel_term`) per pixel from its
    class sums (``_softmax_tile_sums``): ``(loss, divisor, K, t, eps / C)``, the last
    three for :func:`_softmax_grad_tile`; loss and divisor 0 where not valid. Without
    SMOOTH (known: no label smoothing) ``eps / C`` is the constant 0."""
    if HAS_W:
        scale_y = tl.load(w_ptr + ys, mask=pvalid, other=0.0).to(tl.float32)
    else:
        scale_y = tl.zeros_like(m) + scale
    eps_c = 0.0
    if SMOOTH and not IS_FOCAL:
        eps_c = smoothing / C
    loss, k, t = _softmax_terms(
        x_y, m, s_other, s, scale_y, smooth_sum, w_sum, eps_c, smoothing, gamma, IS_FOCAL
    )
    loss = tl.where(pbad, float("nan"), tl.where(pvalid, loss, 0.0))
    if HAS_W and not IS_FOCAL:  # CE's weighted mean divides by the weights
        den = tl.where(pvalid, scale_y, 0.0)
    else:
        den = pvalid.to(tl.float32)
    return loss, den, k, t, eps_c


@triton.jit
def _pixel_term(
    x, z, m, inv_s, ys, pvalid, pbad, g, valid, bad, offs_c, C, w_ptr, w2_ptr,
    smoothing, gamma, scale, kpix,
    PIXEL: tl.constexpr, LABELS: tl.constexpr, IS_FOCAL: tl.constexpr, HAS_W: tl.constexpr,
):  # fmt: skip
    """The compound loss's pixel term on a tile (with PIXEL 1, one holding every class):
    per pixel ``(loss, divisor)`` and the tile of its gradient times ``kpix`` (per pixel),
    0 where not valid (``kpix`` is inf for a 'mean' whose divisor is 0: then an entry of
    weight 0 gets NaN, as in torch). PIXEL 1: CE (``w_ptr`` class weights, label
    smoothing) or softmax focal (``w_ptr`` alpha, else ``scale``); PIXEL 2: BCE
    (``w_ptr`` = weight * pos_weight and ``w2_ptr`` = weight per class) or sigmoid focal
    (``w_ptr`` = alpha and ``w2_ptr`` = 1 - alpha per class; LABELS: hard targets)."""
    cmask = offs_c < C
    if PIXEL == 1:
        is_y = offs_c[:, None] == ys[None, :]
        s, s_other, x_y, w_c, w_sum, smooth_sum = _softmax_tile_sums(
            x, z, m, offs_c, cmask, is_y, w_ptr, HAS_W
        )
        loss, den, k, t, eps_c = _softmax_pixel(
            x_y, m, s_other, s, smooth_sum, w_sum, ys, pvalid, pbad, C, w_ptr,
            smoothing, gamma, scale, IS_FOCAL, HAS_W,
        )  # fmt: skip
        dx = _softmax_grad_tile(x, m, inv_s, is_y, t, k, eps_c, w_c, w_sum, kpix, pvalid)
    else:
        wp = tl.load(w_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)[:, None]
        wn = tl.load(w2_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)[:, None]
        loss, dx = _sigmoid_terms(x, g, wp, wn, gamma, IS_FOCAL, LABELS)
        loss = tl.where(bad, float("nan"), tl.where(valid, loss, 0.0))
        loss = tl.sum(loss, axis=0)
        den = tl.sum(valid.to(tl.float32), axis=0)
        dx = tl.where(valid, dx * kpix[None, :], 0.0)
    return loss, den, dx


@triton.jit
def _softmax_walk_term(
    x_ptr, w_ptr, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, C, sxb, sxc, sxs,
    smoothing, gamma, scale, IS_FOCAL: tl.constexpr, HAS_W: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """The softmax pixel term with classes streamed: one walk gives the softmax ``(m, 1/s)``
    and the term's ``(loss, divisor, K, t, eps / C, W)`` per pixel (:func:`_softmax_pixel`;
    ``W`` the sum of the class factors)."""
    m, s, s_other, x_y, w_sum, smooth_sum = _softmax_walk_sums(
        x_ptr, w_ptr, b, offs_c0, offs_p, pmask, ys, pvalid, C, sxb, sxc, sxs, HAS_W, True,
        BLOCK_C, WALK_UNROLL,
    )  # fmt: skip
    loss, den, k, t, eps_c = _softmax_pixel(
        x_y, m, s_other, s, smooth_sum, w_sum, ys, pvalid, pbad, C, w_ptr,
        smoothing, gamma, scale, IS_FOCAL, HAS_W,
    )  # fmt: skip
    return m, fast_rcp(s), loss, den, k, t, eps_c, w_sum


@triton.jit
def _pixel_weight(kpix_ptr, share_ptr, b, offs_p, pmask, S, SHARE: tl.constexpr):
    """Per pixel, the weight of the pixel term's gradient: ``kpix[b]``, times the pixel's
    ``share[b, s]`` with SHARE (top-k)."""
    kpix = tl.zeros([offs_p.shape[0]], tl.float32) + tl.load(kpix_ptr + b)
    if SHARE:
        kpix = kpix * tl.load(share_ptr + b * S + offs_p, mask=pmask, other=0.0)
    return kpix


@triton.jit
def _add_row(ptrs, value, mask):
    tl.store(ptrs, tl.load(ptrs, mask=mask) + value, mask=mask)


@triton.jit
def _add_at(acc, offs_a, c0, s):
    """``acc[c0 + j] += s[j]``: a class chunk's sums ``s`` into the accumulator of a class
    block (``offs_a``, its int32 class indices), in registers."""
    if s.shape[0] == 1:
        return tl.where(offs_a == c0, acc + tl.sum(s), acc)
    offs_c = c0 + tl.arange(0, s.shape[0])
    return acc + tl.sum(tl.where(offs_a[:, None] == offs_c[None, :], s[None, :], 0.0), axis=1)


@triton.jit
def _label_row_sums(ptrs, c0, pmask, y_in, pvalid, m, log2_s, q_top, C, OVERLAP: tl.constexpr):
    """Softmax over labels: per class of the chunk at ``ptrs`` (classes ``c0 + j``),
    ``(I, F, M)`` of the tile (:func:`_hard_terms`), ``p = 2^((x - m) log2 e - log2 s)``
    where counted (else 0), ``q = 1 - p`` whole where the label's logit is the max
    (``q_top``: 1 - p of the label there; :func:`_complement`), and ``g = [y = c]``
    (``y_in`` is -1 where not counted). T, N and bad labels do not depend on the class's
    logits: the caller takes them once per tile. The class index is int32 and no address
    derives from it, so each label test is one compare."""
    offs_c = c0 + tl.arange(0, ptrs.shape[0])
    x = _load_walk(ptrs, offs_c, pmask, C)[0]
    p = tl.where(pvalid[None, :], _walk_probs(x, m, log2_s), 0.0)
    q = _complement(x, x, p, m, q_top, True, False)
    i, f, mm = _hard_terms(p, q, offs_c[:, None] == y_in[None, :], OVERLAP)
    return tl.sum(i, axis=1), tl.sum(f, axis=1), tl.sum(mm, axis=1)


@triton.jit
def _column_terms(p, l_y, q_y, is_y, OVERLAP: tl.constexpr):
    """Per entry of a column tile ``(l, f)``: ``l_y`` (the label's ``p`` where ``p <=
    1/2``, else ``-q``) at the label, and F's term, ``p`` (``p^2`` SQUARED) off it, 0 at it
    (``-p q`` SQUARED); ``-0.0`` for an absent term (see :func:`_hard_terms`)."""
    l = tl.where(is_y, l_y[None, :], -0.0)
    if OVERLAP == SQUARED:
        return l, tl.where(is_y, -p * q_y[None, :], p * p)
    return l, tl.where(is_y, -0.0, p)


@triton.jit
def _per_thread(t, VEC: tl.constexpr):
    """A ``[classes, pixels, 2]`` tile of :func:`runs_of` VEC pixels a thread summed over
    each thread's pixels: ``[classes, pixels / VEC, 2]``, with no exchange between
    threads."""
    return tl.sum(tl.reshape(t, [t.shape[0], t.shape[1] // VEC, VEC, 2]), axis=2)


@triton.jit
def _column_stats(
    x_ptr, t_ptr, w_ptr, out, b, first_tile, tiles_per_chunk, S, sxb, sxc, sxs, stb, sts,
    ignore_index, smoothing, gamma, scale,
    OVERLAP: tl.constexpr, PIXEL: tl.constexpr, IS_FOCAL: tl.constexpr, HAS_W: tl.constexpr,
    COUNT: tl.constexpr, SMOOTH: tl.constexpr, STAGES: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr, VEC: tl.constexpr, NC: tl.constexpr, CLASS_FAST: tl.constexpr,
):  # fmt: skip
    """Pass 1 of a softmax over hard labels on tiles holding the whole class column of
    their pixels (``_tiles.column_tiles``: NC classes, VEC pixels a thread; CLASS_FAST
    on channels_last, ``_tiles.class_fast``), the logits read once. Each thread adds, per
    class, F's terms and ``L``, the sum of ``p_y`` over its pixels of the class with ``p_y
    <= 1/2`` less that of ``q_y = 1 - p_y`` (from ``s_other``) over the others
    (:func:`_column_terms`), the two joined, into registers over the program's tiles; the
    sums leave the threads once, at the end. Histograms of each tile's labels, all and
    those with ``p_y > 1/2``, count T and ``T_hi`` (``T_lo = T - T_hi``), so that ``I =
    T_hi + L`` and ``M = T_lo - L``: each is at least as large as every sum in it, so
    neither loses its digits, from two accumulators where I, F and M took three (sm_90,
    Triton 3.6, bf16 Dice at C = 19: 128 registers, 175 with three). Rows past NC add -0.0
    (folded away); a bad label makes the program's T and M NaN, as in the class walks."""
    offs_c = column_classes(BLOCK_C, CLASS_FAST)
    rows = (offs_c < NC)[:, None]
    acc_lf = tl.zeros([BLOCK_C, BLOCK_P // VEC, 2], tl.float32)
    acc_t = tl.zeros([BLOCK_C], tl.int32)
    acc_hi = acc_t
    acc_n = tl.zeros([BLOCK_P], tl.float32)
    acc_bad = acc_n
    acc_loss = acc_n
    acc_den = acc_n
    for tile in tl.range(first_tile, first_tile + tiles_per_chunk, num_stages=STAGES):
        offs_p = tile * BLOCK_P + runs_of(tl.arange(0, BLOCK_P), VEC).to(tl.int64)
        pmask = offs_p < S
        ys, pvalid, pbad = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, NC, ignore_index)
        m, s, s_other, x_y, w_sum, smooth_sum, e, w_c = _column_sums(
            x_ptr, w_ptr, b, offs_c, offs_p, pmask, ys, pvalid, sxb, sxc, sxs, HAS_W, SMOOTH,
            NC, CLASS_FAST,
        )  # fmt: skip
        counted = rows & pvalid[None, :]
        is_y = counted & (offs_c.to(tl.int32)[:, None] == ys[None, :])
        inv_s = fast_rcp(s)
        p = tl.where(counted, e * inv_s[None, :], -0.0)
        q_y = s_other * inv_s
        hi = q_y < 0.5
        l_y = tl.where(hi, -q_y, fast_exp(x_y - m) * inv_s)
        lane_l, lane_f = _column_terms(p, l_y, q_y, is_y, OVERLAP)
        acc_lf += _per_thread(tl.join(lane_l, lane_f), VEC)
        acc_t += tl.histogram(ys, BLOCK_C, mask=pvalid)
        acc_hi += tl.histogram(ys, BLOCK_C, mask=pvalid & hi)
        acc_n += pvalid.to(tl.float32)
        acc_bad = tl.maximum(acc_bad, pbad.to(tl.float32))
        if PIXEL == 1:
            loss, den, _, _, _ = _softmax_pixel(
                x_y, m, s_other, s, smooth_sum, w_sum, ys, pvalid, pbad, NC, w_ptr,
                smoothing, gamma, scale, IS_FOCAL, HAS_W, SMOOTH,
            )  # fmt: skip
            acc_loss += loss
            acc_den += den
    bad = tl.max(acc_bad, axis=0) > 0.0
    sl, sf = tl.split(tl.sum(acc_lf, axis=1))
    sm = tl.where(bad, float("nan"), (acc_t - acc_hi).to(tl.float32) - sl)
    st = tl.where(bad, float("nan"), acc_t.to(tl.float32))
    cmask = offs_c < NC
    tl.store(out + offs_c, acc_hi.to(tl.float32) + sl, mask=cmask)
    tl.store(out + NC + offs_c, sf, mask=cmask)
    tl.store(out + 2 * NC + offs_c, sm, mask=cmask)
    tl.store(out + 3 * NC + offs_c, st, mask=cmask)
    n_stats = 4
    if COUNT:
        n_stats = 5
        tl.store(out + 4 * NC + offs_c, tl.zeros_like(st) + tl.sum(acc_n, axis=0), mask=cmask)
    tl.store(out + n_stats * NC, tl.sum(acc_loss, axis=0))
    tl.store(out + n_stats * NC + 1, tl.sum(acc_den, axis=0))


@kernel_jit
def _region_stats_kernel(
    x_ptr,
    t_ptr,
    part_ptr,
    w_ptr,
    w2_ptr,
    C,
    S,
    n_chunks,
    tiles_per_chunk,
    sxb,
    sxc,
    sxs,
    stb,
    stc,
    sts,
    ignore_index,
    smoothing,
    gamma,
    scale,
    SOFTMAX: tl.constexpr,
    LABELS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    PROBS: tl.constexpr,
    OVERLAP: tl.constexpr,
    SINGLE: tl.constexpr,
    PIXEL: tl.constexpr,
    IS_FOCAL: tl.constexpr,
    HAS_W: tl.constexpr,
    COUNT: tl.constexpr,
    STAGES: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
    VEC: tl.constexpr,
    SMOOTH: tl.constexpr,
    NC: tl.constexpr,
    CLASS_FAST: tl.constexpr,
):
    """Partial sums ``part[b, chunk, :]`` = ``I[C], F[C], M[C], T[C]`` (then ``N[C]`` with
    COUNT), pixel loss, its divisor, over the chunk's pixel tiles.

    SINGLE: all classes in one tile, sums kept in registers. Otherwise classes stream in
    chunks of BLOCK_C, in blocks of ACC classes: a block's sums over the tile build up in
    registers, then are added into the program's partial row (its earlier value loaded
    before the block's walk, so no load waits on a store in the walk). With labels and a
    softmax, T (a histogram of the tile's labels), N and the bad-label flag do not depend
    on the logits and are taken once per tile: a class row costs the reductions of I, F
    and M (:func:`_label_row_sums`). The tile loop prefetches STAGES - 1 tiles ahead.

    NC > 0: column tiles of NC classes, VEC pixels a thread (:func:`_column_stats`;
    SMOOTH: the CE term has label smoothing; CLASS_FAST: channels_last).
    """
    # hard labels under a softmax, whose class loop takes I, F and M alone (a BCE or
    # sigmoid focal term streams with the classes in the general loop)
    HARD: tl.constexpr = LABELS and SOFTMAX and PIXEL != 2
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_chunks
    first_tile = (pid % n_chunks) * tiles_per_chunk
    n_stats = 4 + COUNT
    out = part_ptr + pid * (n_stats * C + 2)
    if NC > 0:
        _column_stats(
            x_ptr, t_ptr, w_ptr, out, b, first_tile, tiles_per_chunk, S, sxb, sxc, sxs, stb, sts,
            ignore_index, smoothing, gamma, scale, OVERLAP, PIXEL, IS_FOCAL, HAS_W, COUNT, SMOOTH,
            STAGES, BLOCK_C, BLOCK_P, VEC, NC, CLASS_FAST,
        )  # fmt: skip
    else:
        offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
        acc_i = tl.zeros([BLOCK_C], tl.float32)
        acc_f = acc_i
        acc_m = acc_i
        acc_t = acc_i
        acc_n = acc_i
        acc_loss = tl.zeros([BLOCK_P], tl.float32)
        acc_den = tl.zeros([BLOCK_P], tl.float32)
        ones = tl.full([BLOCK_P], 1.0, tl.float32)  # pass 1 weighs the pixel term's gradient 1
        for tile in tl.range(first_tile, first_tile + tiles_per_chunk, num_stages=STAGES):
            offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
            pmask = offs_p < S
            x, z, ys, pvalid, pbad, m, inv_s = _pixel_setup(
                x_ptr, t_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, stb, sts, ignore_index,
                SOFTMAX and SINGLE, LABELS, SINGLE, BLOCK_C,
            )  # fmt: skip
            q_top = m  # 1 - p of a class at the max (_complement)
            if SOFTMAX and SINGLE:
                q_top = _tile_excl(x, z, m)[1] * inv_s
            elif PIXEL == 1:  # its walk gives the softmax (m, 1/s) and t = 1 - p_y
                m, inv_s, loss, den, k, q_top, eps_c, w_sum = _softmax_walk_term(
                    x_ptr, w_ptr, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, C, sxb, sxc, sxs,
                    smoothing, gamma, scale, IS_FOCAL, HAS_W, BLOCK_C,
                )  # fmt: skip
                acc_loss += loss
                acc_den += den
            elif SOFTMAX:
                m, inv_s, q_top = _softmax_stats(
                    x_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, BLOCK_C
                )
            if SINGLE:
                p, g, valid, bad = _chunk_terms(
                    z, t_ptr, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, inv_s, C,
                    stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
                )  # fmt: skip
                q = _complement(x, z, p, m, q_top, SOFTMAX, PROBS)
                si, sf, sm, st, sn = _tile_sums(p, q, g, valid, bad, OVERLAP)
                acc_i += si
                acc_f += sf
                acc_m += sm
                acc_t += st
                acc_n += sn
                if PIXEL != 0:
                    loss, den, dx = _pixel_term(
                        x, z, m, inv_s, ys, pvalid, pbad, g, valid, bad, offs_c0, C, w_ptr, w2_ptr,
                        smoothing, gamma, scale, ones, PIXEL, LABELS, IS_FOCAL, HAS_W,
                    )  # fmt: skip
                    acc_loss += loss
                    acc_den += den
            else:
                if HARD:  # T, N and bad labels once per tile, not per class
                    y_in = tl.where(pvalid, ys, -1)
                    log2_s = -fast_log2(inv_s)
                    ptrs, step, off = _walk_ptrs(x_ptr, b, offs_c0, offs_p, sxb, sxc, sxs)
                    n_tile = tl.sum(pvalid.to(tl.float32), axis=0)
                    bad_tile = tl.max(pbad.to(tl.int32), axis=0) > 0
                for cb in range(0, C, ACC):
                    offs_a = cb + tl.arange(0, ACC)
                    amask = offs_a < C
                    # the sums of the program's earlier tiles (a where: the interpreter's scalar
                    # compare of the loop index is int32, not a mask)
                    seen = tl.where(tile > first_tile, amask, False)
                    row = out + offs_a
                    prev_i = tl.load(row, mask=seen, other=0.0)
                    prev_f = tl.load(row + C, mask=seen, other=0.0)
                    prev_m = tl.load(row + 2 * C, mask=seen, other=0.0)
                    prev_t = tl.load(row + 3 * C, mask=seen, other=0.0)
                    prev_n = prev_t
                    if COUNT:
                        prev_n = tl.load(row + 4 * C, mask=seen, other=0.0)
                    add_i = tl.zeros([ACC], tl.float32)
                    add_f = add_i
                    add_m = add_i
                    add_t = add_i
                    add_n = add_i
                    if HARD:
                        in_block = (y_in >= cb) & (y_in < cb + ACC)
                        add_t = tl.histogram(y_in - cb, ACC, mask=in_block).to(tl.float32)
                        add_t = tl.where(bad_tile, float("nan"), add_t)
                        add_m = tl.where(bad_tile, float("nan"), add_m)
                        add_n = add_n + n_tile
                        off = (step * 0 + cb) * sxc
                    c_end = tl.minimum(cb + ACC, C)
                    for c0 in tl.range(cb, c_end, BLOCK_C, loop_unroll_factor=WALK_UNROLL):
                        if HARD:
                            si, sf, sm = _label_row_sums(
                                ptrs + off, c0, pmask, y_in, pvalid, m, log2_s, q_top, C, OVERLAP
                            )
                            off += step
                        else:
                            offs_c = c0 + offs_c0
                            xc, zc, p, g, valid, bad = _load_chunk(
                                x_ptr, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s,
                                C, sxb, sxc, sxs, stb, stc, sts, ignore_index, SOFTMAX, LABELS,
                                HAS_IGNORE, PROBS,
                            )  # fmt: skip
                            q = _complement(xc, zc, p, m, q_top, SOFTMAX, PROBS)
                            si, sf, sm, st, sn = _tile_sums(p, q, g, valid, bad, OVERLAP)
                            add_t = _add_at(add_t, offs_a, c0, st)
                            add_n = _add_at(add_n, offs_a, c0, sn)
                            if PIXEL == 2:  # elementwise, so it streams with the classes
                                loss, den, dx = _pixel_term(
                                    xc, zc, m, inv_s, ys, pvalid, pbad, g, valid, bad, offs_c, C,
                                    w_ptr, w2_ptr, smoothing, gamma, scale, ones, PIXEL, LABELS,
                                    IS_FOCAL, HAS_W,
                                )  # fmt: skip
                                acc_loss += loss
                                acc_den += den
                        add_i = _add_at(add_i, offs_a, c0, si)
                        add_f = _add_at(add_f, offs_a, c0, sf)
                        add_m = _add_at(add_m, offs_a, c0, sm)
                    tl.store(row, prev_i + add_i, mask=amask)
                    tl.store(row + C, prev_f + add_f, mask=amask)
                    tl.store(row + 2 * C, prev_m + add_m, mask=amask)
                    tl.store(row + 3 * C, prev_t + add_t, mask=amask)
                    if COUNT:
                        tl.store(row + 4 * C, prev_n + add_n, mask=amask)
        if SINGLE:
            cmask = offs_c0 < C
            tl.store(out + offs_c0, acc_i, mask=cmask)
            tl.store(out + C + offs_c0, acc_f, mask=cmask)
            tl.store(out + 2 * C + offs_c0, acc_m, mask=cmask)
            tl.store(out + 3 * C + offs_c0, acc_t, mask=cmask)
            if COUNT:
                tl.store(out + 4 * C + offs_c0, acc_n, mask=cmask)
        tl.store(out + n_stats * C, tl.sum(acc_loss, axis=0))
        tl.store(out + n_stats * C + 1, tl.sum(acc_den, axis=0))


@triton.jit
def _dl_dp(p, g, coef, offs_c, C, OVERLAP: tl.constexpr):
    """``dL/dp = u g + v (1 - g)``, exactly u or v for a hard label; ``(u - v) g + 2 v p``
    when SQUARED; with SOFT_MIN, ``dI/dp`` (1 where ``p < g``, 1/2 where equal, else 0)
    in place of g. ``u, v`` per class from ``coef``."""
    cmask = offs_c < C
    u = tl.load(coef + offs_c, mask=cmask, other=0.0)[:, None]
    v = tl.load(coef + C + offs_c, mask=cmask, other=0.0)[:, None]
    if OVERLAP == SQUARED:
        return (u - v) * g + 2.0 * v * p
    if OVERLAP == SOFT_MIN:
        h = tl.where(p < g, 1.0, tl.where(p == g, 0.5, 0.0))
        return (u - v) * h + v
    return u * g + v * (1.0 - g)


@triton.jit
def _tile_grad(z, p, dp, valid, mean_dp, SOFTMAX: tl.constexpr, PROBS: tl.constexpr):
    """``dL/dz`` of a tile; ``mean_dp = sum_k p_k dL/dp_k`` per pixel (softmax only); with
    PROBS, z is p and ``dL/dz = dL/dp``."""
    if SOFTMAX:
        dz = p * (dp - mean_dp[None, :])
    elif PROBS:
        dz = dp
    else:
        sp, sq = _sigmoid_pq(z)
        dz = dp * sp * sq
    return tl.where(valid, dz, 0.0)


@triton.jit
def _fold_walk(
    x_ptr, t_ptr, w_ptr, coef, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, C,
    sxb, sxc, sxs, stb, stc, sts, ignore_index,
    LABELS: tl.constexpr, PICK: tl.constexpr, HAS_IGNORE: tl.constexpr, PIXEL: tl.constexpr,
    HAS_W: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Pass 2's one walk before its writes (softmax, PRODUCT sums, classes streamed): per
    pixel the softmax's ``(m, s)`` and ``a = sum_k exp(x_k - m) dL/dp_k``, kept against
    the running max as s is, so that ``sum_k p_k dL/dp_k = a / s`` without a walk of its
    own; with PIXEL 1 also the pixel term's label sums (as :func:`_softmax_walk_sums`).
    With PICK, ``dL/dp_k`` is :func:`_dp_rows` (``a`` is then not 0 at a pixel that is
    not counted: its writes are). Returns ``(m, s, a, s_other, x_y, W, sum_c w_c (m -
    x_c))``."""
    m, s, s_other, x_y, swx = _walk_start(offs_p)
    a = tl.zeros_like(s)
    w_sum = 0.0
    ones = tl.full([offs_p.shape[0]], 1.0, tl.float32)  # p as exp(x - m), unnormalised
    y_in = tl.where(pvalid, ys, -1)
    ptrs, step, off = _walk_ptrs(x_ptr, b, offs_c0, offs_p, sxb, sxc, sxs)
    for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=WALK_UNROLL):
        if PICK:
            dp, offs_c, cmask = _dp_rows(coef, c0, y_in, C, BLOCK_C)
            coef += BLOCK_C
            is_y = offs_c[:, None] == y_in[None, :]
        else:
            offs_c = c0 + offs_c0
        xc, cmask, m, s, ec, rescale = _online_step(m, s, ptrs + off, offs_c, pmask, C)
        off += step
        if PICK:
            a = a * rescale + tl.sum(ec * dp, axis=0)
        else:
            e, g, valid, bad = _chunk_terms(
                ec, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, ones, C,
                stb, stc, sts, ignore_index, True, LABELS, HAS_IGNORE, False,
            )  # fmt: skip
            a = a * rescale + tl.sum(e * _dl_dp(e, g, coef, offs_c, C, PRODUCT), axis=0)
            is_y = g > 0.0
        if PIXEL == 1:
            s_other, x_y, w_sum, swx = _label_step(
                s_other, x_y, w_sum, swx, xc, ec, rescale, is_y,
                _class_factors(w_ptr, offs_c, cmask, HAS_W), cmask,
            )  # fmt: skip
    return m, s, a, s_other, x_y, w_sum, w_sum * m - swx


@triton.jit
def _dp_rows(coef_at, c0, y_in, C, BLOCK_C: tl.constexpr):
    """``dL/dp`` of a class chunk ``c0 + j`` for hard labels (PRODUCT sums): ``u_c`` at
    the label, else ``v_c`` (``y_in`` is -1 where not counted), by an int32 compare;
    ``coef_at`` points at ``u_c0`` (a pointer walked apart from c0, so that c0 never
    widens to 64 bits, nor the compare with it)."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    u = tl.load(coef_at + tl.arange(0, BLOCK_C), mask=cmask, other=0.0)[:, None]
    v = tl.load(coef_at + C + tl.arange(0, BLOCK_C), mask=cmask, other=0.0)[:, None]
    return tl.where(offs_c[:, None] == y_in[None, :], u, v), offs_c, cmask


@triton.jit
def _region_grad_tile(
    b, offs_p, pmask, x_ptr, t_ptr, coef_ptr, kpix_ptr, share_ptr, g_ptr, w_ptr, w2_ptr, C,
    S, sxb, sxc, sxs, stb, stc, sts, sgb, sgc, sgs, ignore_index, smoothing, gamma, scale,
    SOFTMAX: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr, PROBS: tl.constexpr,
    OVERLAP: tl.constexpr,
    SINGLE: tl.constexpr, PIXEL: tl.constexpr, IS_FOCAL: tl.constexpr, HAS_W: tl.constexpr,
    SHARE: tl.constexpr, FOLD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ROWS: tl.constexpr, VEC: tl.constexpr,
):  # fmt: skip
    """Writes ``dL/dz`` of one pixel tile (see :func:`_region_grad_kernel`); on labels
    with FOLD, in chunks of ROWS classes (VEC: :func:`_tiles.runs_of`)."""
    # dL/dp_c picked by the label (_dp_rows). Not with a BCE / sigmoid focal term: its write
    # loop tests labels in _chunk_terms, and Triton 3.6 cannot build the pick walk beside
    # that loop on 8- or 16-bit labels (_runtime.WALK_LABEL_BUG)
    PICK: tl.constexpr = FOLD and LABELS and PIXEL != 2
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    coef = coef_ptr + b * 2 * C
    g_base = g_ptr + b * sgb + offs_p[None, :] * sgs
    # the walks of FOLD and of a streamed softmax pixel term give the softmax (m, 1/s)
    x, z, ys, pvalid, pbad, m, inv_s = _pixel_setup(
        x_ptr, t_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, stb, sts, ignore_index,
        SOFTMAX and (SINGLE or (PIXEL != 1 and not FOLD)), LABELS, SINGLE, BLOCK_C,
    )  # fmt: skip
    if PIXEL != 0:
        kpix = _pixel_weight(kpix_ptr, share_ptr, b, offs_p, pmask, S, SHARE)
    mean_dp = tl.zeros([BLOCK_P], tl.float32)
    if FOLD:
        m, s, a, s_other, x_y, w_sum, smooth_sum = _fold_walk(
            x_ptr, t_ptr, w_ptr, coef, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, C,
            sxb, sxc, sxs, stb, stc, sts, ignore_index, LABELS, PICK, HAS_IGNORE, PIXEL,
            HAS_W, BLOCK_C,
        )  # fmt: skip
        inv_s = fast_rcp(s)
        mean_dp = a * inv_s
        if PIXEL == 1:
            loss, den, k, t, eps_c = _softmax_pixel(
                x_y, m, s_other, s, smooth_sum, w_sum, ys, pvalid, pbad, C, w_ptr,
                smoothing, gamma, scale, IS_FOCAL, HAS_W,
            )  # fmt: skip
    elif PIXEL == 1 and not SINGLE:
        m, inv_s, loss, den, k, t, eps_c, w_sum = _softmax_walk_term(
            x_ptr, w_ptr, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, C, sxb, sxc, sxs,
            smoothing, gamma, scale, IS_FOCAL, HAS_W, BLOCK_C,
        )  # fmt: skip
    if SINGLE:
        p, g, valid, bad = _chunk_terms(
            z, t_ptr, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, inv_s, C,
            stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
        )  # fmt: skip
        dp = _dl_dp(p, g, coef, offs_c0, C, OVERLAP)
        if SOFTMAX:
            mean_dp = tl.sum(p * dp, axis=0)
        dz = _tile_grad(z, p, dp, valid, mean_dp, SOFTMAX, PROBS)
        if PIXEL != 0:
            loss, den, dx = _pixel_term(
                x, z, m, inv_s, ys, pvalid, pbad, g, valid, bad, offs_c0, C, w_ptr, w2_ptr,
                smoothing, gamma, scale, kpix, PIXEL, LABELS, IS_FOCAL, HAS_W,
            )  # fmt: skip
            dz += dx
        cmask = offs_c0 < C
        tl.store(
            g_base + offs_c0[:, None] * sgc,
            dz.to(g_ptr.dtype.element_ty),
            mask=cmask[:, None] & pmask[None, :],
        )
    elif PICK:  # classes ROWS at a time, loads before stores (``_tiles.WRITE_ROWS``)
        y_in = tl.where(pvalid, ys, -1)
        log2_s = fast_log2(s)
        ptrs, step, off = _chunk_ptrs(x_ptr, b, offs_p, sxb, sxc, sxs, ROWS, VEC)
        g_ptrs, g_step, g_off = _chunk_ptrs(g_ptr, b, offs_p, sgb, sgc, sgs, ROWS, VEC)
        for c0 in tl.range(0, C, ROWS):
            dp, offs_c, cmask = _dp_rows(coef, c0, y_in, C, ROWS)
            coef += ROWS
            gmask = cmask[:, None] & pmask[None, :]
            xc = tl.load(ptrs + off, mask=gmask, other=0.0).to(tl.float32)  # past C: unwritten
            p = _walk_probs(xc, m, log2_s)
            dz = p * (dp - mean_dp[None, :])
            if PIXEL == 1:  # p computed once for both terms
                dx = _softmax_grad_p(
                    p, offs_c[:, None] == y_in[None, :], t, k, eps_c,
                    _class_factors(w_ptr, offs_c, cmask, HAS_W), w_sum,
                )  # fmt: skip
                dz += dx * kpix[None, :]
            dz = tl.where(pvalid[None, :], dz, 0.0)
            tl.store(g_ptrs + g_off, dz.to(g_ptr.dtype.element_ty), mask=gmask)
            off += step
            g_off += g_step
    else:
        if SOFTMAX and not FOLD:  # sum_k p_k dL/dp_k is needed before any class is written
            for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=WALK_UNROLL):
                offs_c = c0 + offs_c0
                xc, zc, p, g, valid, bad = _load_chunk(
                    x_ptr, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s, C,
                    sxb, sxc, sxs, stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
                )  # fmt: skip
                mean_dp += tl.sum(p * _dl_dp(p, g, coef, offs_c, C, OVERLAP), axis=0)
        for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=WALK_UNROLL):
            offs_c = c0 + offs_c0
            cmask = offs_c < C
            xc, zc, p, g, valid, bad = _load_chunk(
                x_ptr, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s, C,
                sxb, sxc, sxs, stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
            )  # fmt: skip
            dp = _dl_dp(p, g, coef, offs_c, C, OVERLAP)
            dz = _tile_grad(zc, p, dp, valid, mean_dp, SOFTMAX, PROBS)
            if PIXEL == 1:  # g is the label's one-hot where valid
                dz += _softmax_grad_tile(
                    xc, m, inv_s, g > 0.0, t, k, eps_c,
                    _class_factors(w_ptr, offs_c, cmask, HAS_W), w_sum, kpix, pvalid,
                )  # fmt: skip
            if PIXEL == 2:
                loss, den, dx = _pixel_term(
                    xc, zc, m, inv_s, ys, pvalid, pbad, g, valid, bad, offs_c, C, w_ptr, w2_ptr,
                    smoothing, gamma, scale, kpix, PIXEL, LABELS, IS_FOCAL, HAS_W,
                )  # fmt: skip
                dz += dx
            tl.store(
                g_base + offs_c[:, None] * sgc,
                dz.to(g_ptr.dtype.element_ty),
                mask=cmask[:, None] & pmask[None, :],
            )


@triton.jit
def _region_column_tile(
    b, offs_p, pmask, x_ptr, t_ptr, coef_ptr, kpix_ptr, share_ptr, g_ptr, w_ptr, S,
    sxb, sxc, sxs, stb, sts, sgb, sgc, sgs, ignore_index, smoothing, gamma, scale,
    OVERLAP: tl.constexpr, PIXEL: tl.constexpr, IS_FOCAL: tl.constexpr, HAS_W: tl.constexpr,
    SHARE: tl.constexpr, SMOOTH: tl.constexpr, BLOCK_C: tl.constexpr, NC: tl.constexpr,
    CLASS_FAST: tl.constexpr,
):  # fmt: skip
    """Pass 2 of a softmax over hard labels on a tile holding the whole class column of
    its pixels (``_tiles.column_tiles``: NC classes, a constexpr, VEC pixels a thread;
    CLASS_FAST on channels_last): the logits are read once, and ``(m, s)``, ``sum_k p_k
    dL/dp_k`` and the pixel term's sums stay in the thread's registers
    (:func:`_column_sums`). ``dL/dp_c`` is
    :func:`_dp_rows` with PRODUCT sums, else :func:`_dl_dp` of the label's one-hot. The
    pixel term adds ``kpix (K (p - onehot) + eps/C (W p - w_c))``
    (:func:`_softmax_grad_p`). Rows past NC are neither loaded nor written, and add -0.0
    to the sums over classes (folded away)."""
    offs_c = column_classes(BLOCK_C, CLASS_FAST)
    cmask = offs_c < NC
    rows = cmask[:, None]
    ys, pvalid, pbad = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, NC, ignore_index)
    m, s, s_other, x_y, w_sum, smooth_sum, e, w_c = _column_sums(
        x_ptr, w_ptr, b, offs_c, offs_p, pmask, ys, pvalid, sxb, sxc, sxs, HAS_W, SMOOTH, NC,
        CLASS_FAST,
    )  # fmt: skip
    p = e * fast_rcp(s)[None, :]
    is_y = offs_c.to(tl.int32)[:, None] == ys[None, :]  # one compare: the class is a constant
    coef = coef_ptr + b * 2 * NC
    if OVERLAP == PRODUCT:
        dp, _, _ = _dp_rows(coef, 0, ys, NC, BLOCK_C)
    else:
        dp = _dl_dp(p, tl.where(is_y, 1.0, 0.0), coef, offs_c, NC, OVERLAP)
    dz = p * (dp - tl.sum(tl.where(rows, p * dp, -0.0), axis=0)[None, :])
    if PIXEL == 1:
        kpix = _pixel_weight(kpix_ptr, share_ptr, b, offs_p, pmask, S, SHARE)
        _, _, k, t, eps_c = _softmax_pixel(
            x_y, m, s_other, s, smooth_sum, w_sum, ys, pvalid, pbad, NC, w_ptr,
            smoothing, gamma, scale, IS_FOCAL, HAS_W, SMOOTH,
        )  # fmt: skip
        dz += (k * kpix)[None, :] * tl.where(is_y, -t[None, :], p)
        if SMOOTH:  # else eps/C is 0 and the term is left out
            dz += (eps_c * kpix)[None, :] * (w_sum * p - w_c[:, None])
    dz = tl.where(pvalid[None, :], dz, 0.0)
    store_column(g_ptr, dz, b, offs_c, offs_p, cmask, pmask, sgb, sgc, sgs, CLASS_FAST)


@kernel_jit
def _region_grad_kernel(
    x_ptr,
    t_ptr,
    coef_ptr,
    kpix_ptr,
    share_ptr,
    g_ptr,
    w_ptr,
    w2_ptr,
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
    smoothing,
    gamma,
    scale,
    SOFTMAX: tl.constexpr,
    LABELS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    PROBS: tl.constexpr,
    OVERLAP: tl.constexpr,
    SINGLE: tl.constexpr,
    PIXEL: tl.constexpr,
    IS_FOCAL: tl.constexpr,
    HAS_W: tl.constexpr,
    SHARE: tl.constexpr,
    FOLD: tl.constexpr,
    TILES: tl.constexpr,
    STAGES: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ROWS: tl.constexpr,
    VEC: tl.constexpr,
    SMOOTH: tl.constexpr,
    NC: tl.constexpr,
    CLASS_FAST: tl.constexpr,
):
    """``dL/dz`` of TILES pixel tiles per program (prefetched STAGES - 1 ahead) from
    ``coef[b, 0, c] = dL/dI + dL/dP``, ``coef[b, 1, c] = dL/dP`` and (PIXEL) ``kpix[b]``,
    the weight of the pixel term's gradient; with SHARE (the softmax pixel term) each
    pixel's weight is also times ``share[b, s]`` (fp32, contiguous).

    NC > 0: column tiles of NC classes (:func:`_region_column_tile`, VEC pixels a thread;
    SMOOTH: the CE term has label smoothing; CLASS_FAST: channels_last). Else
    :func:`_region_grad_tile`."""
    pid = tl.program_id(0).to(tl.int64)
    for i in tl.range(0, TILES, num_stages=STAGES):
        if NC > 0:
            b, offs_p, pmask = program_tile(pid, i, n_blocks, n_pblocks, S, TILES, BLOCK_P, VEC)
            _region_column_tile(
                b, offs_p, pmask, x_ptr, t_ptr, coef_ptr, kpix_ptr, share_ptr, g_ptr, w_ptr, S,
                sxb, sxc, sxs, stb, sts, sgb, sgc, sgs, ignore_index, smoothing, gamma, scale,
                OVERLAP, PIXEL, IS_FOCAL, HAS_W, SHARE, SMOOTH, BLOCK_C, NC, CLASS_FAST,
            )  # fmt: skip
        else:
            b, offs_p, pmask = program_tile(pid, i, n_blocks, n_pblocks, S, TILES, BLOCK_P)
            _region_grad_tile(
                b, offs_p, pmask, x_ptr, t_ptr, coef_ptr, kpix_ptr, share_ptr, g_ptr, w_ptr,
                w2_ptr, C, S, sxb, sxc, sxs, stb, stc, sts, sgb, sgc, sgs, ignore_index,
                smoothing, gamma, scale, SOFTMAX, LABELS, HAS_IGNORE, PROBS, OVERLAP, SINGLE,
                PIXEL, IS_FOCAL, HAS_W, SHARE, FOLD, BLOCK_C, BLOCK_P, ROWS, VEC,
            )  # fmt: skip
