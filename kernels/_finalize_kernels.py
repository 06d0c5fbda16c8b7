"""Triton finalize of the region losses: one small program turns the per-(image, class)
sums of pass 1 into the loss and the gradient coefficients of pass 2, in one launch instead
of the few dozen tiny torch ops that autograd through the reference formula costs.

The per-class index is a ratio of linear forms in the sums::

    r = (a_I I + smooth_nr) / max(b_I I + b_P P + b_T T + smooth_dr, eps)

(Dice: 2, 0, 1, 1; Jaccard: 1, -1, 1, 1; Tversky: 1, 1 - alpha - beta, alpha, beta), the
class loss is ``1 - r`` (computed as ``(den - num) / den`` from ``F = P - I`` and ``M = T -
I``, which pass 1 sums as terms of their own, so nothing cancels near r = 1), ``-log(max(r,
eps))`` (LOG 1) or ``log(cosh(1 - r))`` (LOG 2), optionally ``max(1 - r, 0) ** gamma_c``
(focal Tversky; FOCAL 1) or ``max(1 - r, 0)`` with the class mean raised to ``gamma`` (FOCAL
2, ``gamma_after_mean``), the absent-class policy and class weights apply as in the
reference's ``_class_reduce``, and units (the batch, or each image) are reduced by 'mean'
(weighted class mean per unit, then the mean over units that have weight) or 'sum'. A
compound loss adds ``lam_pix`` times its pixel term (sum, or sum / divisor for 'mean'). With
MCC the index is instead the Matthews correlation of the soft counts (``_mcc``), which also
needs ``N``, the counted pixels, as a fifth row of sums (after ``I, F, M, T``).

Every clamp is written ``where(x < lo, lo, x)`` so a NaN sum (a bad label) stays NaN.
"""

from __future__ import annotations

import triton
import triton.language as tl

from segtriton.reference import region as ref_region

from ._runtime import kernel_jit
from ._tiles import log1p

TINY = tl.constexpr(1.1754943508222875e-38)  # 2^-126, float32's smallest normal
PERFECT_SHARE = tl.constexpr(ref_region.PERFECT_SHARE)  # MCC's perfect predictions


@triton.jit
def _unit_sums(tot_ptr, u, offs_c, cmask, n_rows, C, row, IMAGE: tl.constexpr, MCC: tl.constexpr):
    """``(I, F, M, T, N)`` of unit u for a class block (N with MCC, else 0): row u of
    ``tot`` (scope 'image') or the sum of its ``n_rows`` rows in order (scope 'batch': one
    row per image, or one row of sums already taken over a process group)."""
    i = tl.zeros(offs_c.shape, tl.float32)
    f = i
    m = i
    t = i
    n = i
    first = 0
    n_sum = n_rows
    if IMAGE:
        first = u
        n_sum = 1
    for b in range(first, first + n_sum):
        base = tot_ptr + b * row
        i += tl.load(base + offs_c, mask=cmask, other=0.0)
        f += tl.load(base + C + offs_c, mask=cmask, other=0.0)
        m += tl.load(base + 2 * C + offs_c, mask=cmask, other=0.0)
        t += tl.load(base + 3 * C + offs_c, mask=cmask, other=0.0)
        if MCC:
            n += tl.load(base + 4 * C + offs_c, mask=cmask, other=0.0)
    return i, f, m, t, n


@triton.jit
def _mcc(i, f, m, t, n, eps):
    """``(MCC, 1 - MCC, dMCC/dI + dMCC/dP, dMCC/dP)`` of the soft counts ``TP = I + eps``, ``FP = F
    + eps``, ``FN = M + eps``, ``TN = N - T - F + eps`` (``F = P - I``, ``M = T - I``): ``(TP TN
    - FP FN) / sqrt((TP + FP) (TP + FN) (TN + FP) (TN + FN))``, 1 where the prediction is
    perfect (F and M at most ``N PERFECT_SHARE``, as ``reference.region.mcc_loss`` says), 0
    where that denominator is 0, all with a zero gradient. Everything is formed on the
    counts scaled to sum 1 (MCC does not change), so no product overflows; 0 also where
    ``(TP + FP) (TP + FN)`` or ``(TN + FP) (TN + FN)`` scaled is below float32's normal range
    (the GPU's square root flushes it to 0, and a reciprocal of its share could overflow).
    Of the four factors only ``TP + FP = P + 2 eps`` and ``TN + FN = N - P + 2 eps`` move
    with P, none with I. TN is ``(N - T) - F``: exact for a class that fills the unit (F is 0
    there: no pixel is off the class), where the denominator is tiny. ``1 - MCC`` is ``(D^2 -
    N^2) / (D (D + N))`` for ``MCC > 0`` (numerator N, denominator D), ``D^2 - N^2 = 4 X Y +
    (X + Y) (A + B) + A B`` with ``X = TP TN``, ``Y = FP FN``, ``A = TP FN + FP TN``, ``B = TP
    FP + FN TN``: no term is negative, so near a right prediction it keeps its digits where
    ``1 - MCC`` would not."""
    tp = i + eps
    fp = f + eps
    fn = m + eps
    tn = (n - t) - f + eps
    total = tp + fp + fn + tn
    k = 1.0 / total  # inf only where nothing is counted: a perfect prediction
    near_zero = n * PERFECT_SHARE
    perfect = (f <= near_zero) & (m <= near_zero)
    tp, fp, fn, tn = tp * k, fp * k, fn * k, tn * k
    ab = (tp + fp) * (tp + fn)
    cd = (tn + fp) * (tn + fn)
    zero = perfect | (ab < TINY) | (cd < TINY)  # NaN sums are none of these: they stay NaN
    d = tl.sqrt(tl.where(zero, 1.0, ab)) * tl.sqrt(tl.where(zero, 1.0, cd))
    x = tp * tn
    y = fp * fn
    mcc = tl.where(perfect, 1.0, tl.where(zero, 0.0, (x - y) / d))
    # d log(den) / dP, in unscaled units like the two derivatives below
    d_log_den = 0.5 * k * (1.0 / (tp + fp) - 1.0 / (tn + fn))
    # dMCC/dI = (TP + FP + FN + TN) / den; with dMCC/dP that sum keeps TN + FP, small
    # where the class fills the unit, instead of a difference of two large terms
    d_ip = tl.where(zero, 0.0, k * (tn + fp) / d - mcc * d_log_den)
    d_p = tl.where(zero, 0.0, -k * (tp + fn) / d - mcc * d_log_den)
    a = tp * fn + fp * tn
    b = tp * fp + fn * tn
    whole = (4.0 * x * y + (x + y) * (a + b) + a * b) / (d * (d + (x - y)))
    gap = tl.where(perfect, 0.0, tl.where(zero, 1.0, tl.where(mcc > 0.0, whole, 1.0 - mcc)))
    return mcc, gap, d_ip, d_p


@triton.jit
def _log_cosh(x):
    """``log(cosh(x))``: its Taylor series below 1/4 (where the closed form loses the digits
    of ``x^2 / 2`` to rounding), else ``|x| + log(1 + exp(-2|x|)) - log 2``."""
    a = tl.abs(x)
    y = a * a
    series = y * (0.5 + y * (-1.0 / 12.0 + y * (1.0 / 45.0 - y * (17.0 / 2520.0))))
    closed = a + log1p(tl.exp(-2.0 * a)) - 0.6931471805599453
    return tl.where(a < 0.25, series, closed)


@triton.jit
def _tanh(x):
    """``tanh(x)``: its Taylor series below 1/4 (``1 - exp(-2|x|)`` cancels there), else
    ``sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)``."""
    a = tl.abs(x)
    y = a * a
    series = a * (1.0 + y * (-1.0 / 3.0 + y * (2.0 / 15.0 - y * (17.0 / 315.0))))
    e = tl.exp(-2.0 * a)
    t = tl.where(a < 0.25, series, (1.0 - e) / (1.0 + e))
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _class_terms(
    tot_ptr, w_ptr, gam_ptr, u, offs_c, n_rows, C, row, a_i, b_i, b_p, b_t, snr, sdr, eps, gamma,
    IMAGE: tl.constexpr, LOG: tl.constexpr, FOCAL: tl.constexpr, GAMMA_VEC: tl.constexpr,
    HAS_W: tl.constexpr, ABSENT: tl.constexpr, MCC: tl.constexpr,
):  # fmt: skip
    """Per class of unit u: ``(weight, loss, dloss/dI + dloss/dP, dloss/dP)`` (0 past C).
    ABSENT: 0 include, 1 exclude (weight 0), 2 zero (loss 0) for a class with T = 0."""
    cmask = offs_c < C
    i, f, m, t, n = _unit_sums(tot_ptr, u, offs_c, cmask, n_rows, C, row, IMAGE, MCC)
    if MCC:
        r, gap, dr_dip, dr_dp = _mcc(i, f, m, t, n, eps)
    else:
        num = a_i * i + snr
        # b_i I + b_p P + b_t T with P = I + F and T = I + M
        den_raw = (b_i + b_p + b_t) * i + b_p * f + b_t * m + sdr
        live = den_raw >= eps  # clamp_min passes the gradient where the input reaches the bound
        den = tl.where(den_raw < eps, eps, den_raw)
        r = num / den
        dr_dp = -tl.where(live, r * b_p, 0.0) / den
        dr_dip = (a_i - tl.where(live, r * (b_i + b_p), 0.0)) / den
    if MCC:
        loss = gap
    else:
        # 1 - r without cancelling near r = 1: den - num = b_p F + b_t M + smooth_dr -
        # smooth_nr, as b_i - a_i = -(b_p + b_t) for every family above
        close = (b_p * f + b_t * m + (sdr - snr)) / den
        loss = tl.where(live, close, 1.0 - r)
    dl_dr = tl.full(r.shape, -1.0, tl.float32)
    if LOG == 1:  # -log(max(r, eps)), as -log1p(-(1 - r)) near r = 1
        near = log1p(-tl.where(r > 0.5, loss, 0.0))
        loss = tl.where(r > 0.5, -near, -tl.log(tl.where(r < eps, eps, r)))
        dl_dr = tl.where(r >= eps, -1.0 / tl.where(r >= eps, r, 1.0), 0.0)
    if LOG == 2:  # log(cosh(1 - r)), whose derivative is tanh(1 - r)
        loss, dl_dr = _log_cosh(loss), dl_dr * _tanh(loss)
    if FOCAL == 2:  # max(loss, 0), powered after the class mean
        dl_dr = tl.where(loss >= 0.0, dl_dr, 0.0)
        loss = tl.where(loss < 0.0, 0.0, loss)
    if FOCAL == 1:  # max(loss, 0) ** gamma with a zero gradient at 0
        if GAMMA_VEC:
            g = tl.load(gam_ptr + offs_c, mask=cmask, other=1.0)
        else:
            g = gamma
        base = tl.where(loss < 0.0, 0.0, loss)
        pos = base > 0.0
        log_b = tl.log(tl.where(pos, base, 1.0))
        dl_dr = tl.where(pos, dl_dr * g * tl.exp((g - 1.0) * log_b), 0.0)
        loss = tl.where(pos, tl.exp(g * log_b), base * 0.0)
    if HAS_W:
        w = tl.load(w_ptr + offs_c, mask=cmask, other=0.0)
    else:
        w = cmask.to(tl.float32)
    present = (t > 0.0).to(tl.float32)
    if ABSENT == 1:
        w = w * present
    if ABSENT == 2:
        loss = loss * present
        dl_dr = dl_dr * present
    loss = tl.where(cmask, loss, 0.0)
    return w, loss, dl_dr * dr_dip, dl_dr * dr_dp


@triton.jit
def _store_coefs(out_ptr, u, B, C, offs_c, dl_dip, dl_dp, IMAGE: tl.constexpr):
    """``dL/dI + dL/dP`` and ``dL/dP`` (pass 2's ``dL/dp`` where g = 1 and g = 0) of a class
    block of unit u into ``out [B, 2, C]``: image u's row (scope 'image'), or every
    image's row (scope 'batch': they share the sums)."""
    cmask = offs_c < C
    if IMAGE:
        tl.store(out_ptr + u * 2 * C + offs_c, dl_dip, mask=cmask)
        tl.store(out_ptr + u * 2 * C + C + offs_c, dl_dp, mask=cmask)
    else:
        for b in range(B):
            tl.store(out_ptr + b * 2 * C + offs_c, dl_dip, mask=cmask)
            tl.store(out_ptr + b * 2 * C + C + offs_c, dl_dp, mask=cmask)


@triton.jit
def _store_kpix(out_ptr, B, C, kpix, BLOCK_B: tl.constexpr):
    """The pixel term's ``dL/d(loss sum of image b)``, the same for every image, after
    ``out [B, 2, C]``."""
    for b0 in range(0, B, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        kvec = tl.zeros([BLOCK_B], tl.float32) + kpix
        tl.store(out_ptr + 2 * B * C + offs_b, kvec, mask=offs_b < B)


@triton.jit
def _pixel_total(
    tot_ptr, n_rows, row, lam_pix, PIXEL: tl.constexpr, PIX_MEAN: tl.constexpr,
    BLOCK_B: tl.constexpr,
):  # fmt: skip
    """``(pixel term, dL/d(pixel-loss sum of an image))`` from the last two entries of each
    row (loss sum, divisor); ``(0, 0)`` without PIXEL."""
    pix = 0.0
    kpix = 0.0
    if PIXEL:
        pix_sum = 0.0
        div = 0.0
        for b0 in range(0, n_rows, BLOCK_B):
            offs_b = b0 + tl.arange(0, BLOCK_B)
            bmask = offs_b < n_rows
            pix_sum += tl.sum(tl.load(tot_ptr + offs_b * row + row - 2, mask=bmask, other=0.0))
            div += tl.sum(tl.load(tot_ptr + offs_b * row + row - 1, mask=bmask, other=0.0))
        if PIX_MEAN:  # a divisor of 0 (as F.cross_entropy): NaN term, kpix inf (see pass 2)
            ok = div > 0.0
            pix = tl.where(ok, pix_sum / tl.where(ok, div, 1.0), float("nan"))
            kpix = lam_pix / div
        else:
            pix = pix_sum
            kpix = lam_pix
    return pix, kpix


@triton.jit
def _unit_totals(
    tot_ptr, w_ptr, gam_ptr, u, n_rows, C, row, a_i, b_i, b_p, b_t, snr, sdr, eps, gamma,
    IMAGE: tl.constexpr, LOG: tl.constexpr, FOCAL: tl.constexpr, GAMMA_VEC: tl.constexpr,
    HAS_W: tl.constexpr, ABSENT: tl.constexpr, MCC: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``(sum_c w_c l_c, sum_c w_c)`` of unit u."""
    wl = 0.0
    ws = 0.0
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        w, loss, _, _ = _class_terms(
            tot_ptr, w_ptr, gam_ptr, u, offs_c, n_rows, C, row, a_i, b_i, b_p, b_t, snr, sdr, eps,
            gamma, IMAGE, LOG, FOCAL, GAMMA_VEC, HAS_W, ABSENT, MCC,
        )  # fmt: skip
        wl += tl.sum(w * loss, axis=0)
        ws += tl.sum(w, axis=0)
    return wl, ws


@triton.jit
def _has_weight(ws):
    """Whether a unit's class weights sum to more than 0 and so count in the 'mean' over
    units; a NaN sum counts too, so an unchecked NaN weight makes the loss NaN, not 0."""
    return ~(ws <= 0.0)


@kernel_jit
def _region_finalize_kernel(
    tot_ptr, w_ptr, gam_ptr, loss_ptr, out_ptr, B, n_rows, C, row,
    a_i, b_i, b_p, b_t, snr, sdr, eps, gamma, lam_reg, lam_pix, offset,
    IMAGE: tl.constexpr, REG_MEAN: tl.constexpr, NONE: tl.constexpr, PIXEL: tl.constexpr,
    PIX_MEAN: tl.constexpr,
    LOG: tl.constexpr, FOCAL: tl.constexpr, GAMMA_VEC: tl.constexpr, HAS_W: tl.constexpr,
    ABSENT: tl.constexpr, MCC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    """One program. ``tot [n_rows, row]``: per image (or, over a process group, for the
    global batch: ``n_rows`` 1) ``I[C], P[C], T[C]`` (MCC: then ``N[C]``), pixel-loss sum
    and divisor. Writes
    ``loss = lam_reg region + lam_pix pixel + offset`` (NONE: ``w_c l_c`` per unit and
    class, ``[units, C]``, and ``out`` per unit of it) and ``out`` for the B images:
    ``dL/dI + dL/dP [B, C]`` and ``dL/dP [B, C]`` interleaved per image (``[B, 2, C]``), then
    ``dL/d(pixel-loss sum of image b)`` ``[B]``."""
    if IMAGE:
        n_units = B
    else:
        n_units = 1
    acc = 0.0
    n_has = 0.0
    for u in range(n_units):
        wl, ws = _unit_totals(
            tot_ptr, w_ptr, gam_ptr, u, n_rows, C, row, a_i, b_i, b_p, b_t, snr, sdr, eps, gamma,
            IMAGE, LOG, FOCAL, GAMMA_VEC, HAS_W, ABSENT, MCC, BLOCK_C,
        )  # fmt: skip
        if REG_MEAN:
            has = _has_weight(ws)
            acc += tl.where(has, wl / tl.where(has, ws, 1.0), 0.0)
            n_has += has.to(tl.float32)
        else:
            acc += wl
    if REG_MEAN:
        n_has = tl.where(n_has < 1.0, 1.0, n_has)
        region = acc / n_has
        unit_scale = lam_reg / n_has
    else:
        region = acc
        unit_scale = lam_reg
    if FOCAL == 2:  # (class mean) ** gamma, with a zero gradient where the mean is 0
        pos = region > 0.0
        log_m = tl.log(tl.where(pos, region, 1.0))
        unit_scale = tl.where(pos, unit_scale * gamma * tl.exp((gamma - 1.0) * log_m), 0.0)
        region = tl.where(pos, tl.exp(gamma * log_m), region * 0.0)
    for u in range(n_units):
        k = unit_scale
        if REG_MEAN:
            _, ws = _unit_totals(
                tot_ptr, w_ptr, gam_ptr, u, n_rows, C, row, a_i, b_i, b_p, b_t, snr, sdr, eps,
                gamma, IMAGE, LOG, FOCAL, GAMMA_VEC, HAS_W, ABSENT, MCC, BLOCK_C,
            )  # fmt: skip
            has = _has_weight(ws)
            k = tl.where(has, unit_scale / tl.where(has, ws, 1.0), 0.0)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            cmask = offs_c < C
            w, loss, dl_dip, dl_dp = _class_terms(
                tot_ptr, w_ptr, gam_ptr, u, offs_c, n_rows, C, row, a_i, b_i, b_p, b_t, snr, sdr,
                eps, gamma, IMAGE, LOG, FOCAL, GAMMA_VEC, HAS_W, ABSENT, MCC,
            )  # fmt: skip
            if NONE:  # the weighted loss of each (unit, class); coefficients per unit of it
                tl.store(loss_ptr + u * C + offs_c, w * loss, mask=cmask)
            _store_coefs(out_ptr, u, B, C, offs_c, k * w * dl_dip, k * w * dl_dp, IMAGE)
    pix, kpix = _pixel_total(tot_ptr, n_rows, row, lam_pix, PIXEL, PIX_MEAN, BLOCK_B)
    _store_kpix(out_ptr, B, C, kpix, BLOCK_B)
    if not NONE:
        tl.store(loss_ptr, lam_reg * region + lam_pix * pix + offset)


@triton.jit
def _gdl_weights(t, offs_c, cw_ptr, wmax, C, WEIGHT_TYPE: tl.constexpr, HAS_W: tl.constexpr):
    """Generalized Dice class weights of a block: ``1 / T^2`` (WEIGHT_TYPE 0), ``1 / T`` (1)
    or 1 (2) for a present class, ``wmax`` for an absent one, times the class weight."""
    cmask = offs_c < C
    present = t > 0.0
    safe = tl.where(present, t, 1.0)
    if WEIGHT_TYPE == 0:
        w = 1.0 / (safe * safe)
    elif WEIGHT_TYPE == 1:
        w = 1.0 / safe
    else:
        w = tl.full(t.shape, 1.0, tl.float32)
    w = tl.where(cmask, tl.where(present, w, wmax), 0.0)
    if HAS_W:
        w = w * tl.load(cw_ptr + offs_c, mask=cmask, other=0.0)
    return w


@kernel_jit
def _gdl_finalize_kernel(
    tot_ptr, cw_ptr, loss_ptr, out_ptr, B, n_rows, C, row, snr, sdr, eps, lam_reg, lam_pix,
    IMAGE: tl.constexpr, MEAN: tl.constexpr, NONE: tl.constexpr, WEIGHT_TYPE: tl.constexpr,
    ABSENT_MAX: tl.constexpr, HAS_W: tl.constexpr, PIXEL: tl.constexpr,
    PIX_MEAN: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    """One program: the generalized Dice loss ``1 - (2 sum w I + smooth_nr) /
    max(sum w (P + T) + smooth_dr, eps)`` per unit, 'mean' or 'sum' over units, times
    ``lam_reg`` plus ``lam_pix`` times the pixel term (PIXEL), and ``out`` as in
    :func:`_region_finalize_kernel` (the weights get no gradient). An absent class weighs
    the unit's largest present weight (ABSENT_MAX) or 0."""
    if IMAGE:
        n_units = B
    else:
        n_units = 1
    if MEAN:
        scale = 1.0 / n_units
    else:
        scale = 1.0
    k = lam_reg * scale
    total = 0.0
    for u in range(n_units):
        wmax = 0.0
        if ABSENT_MAX:
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                cmask = offs_c < C
                t = _unit_sums(tot_ptr, u, offs_c, cmask, n_rows, C, row, IMAGE, False)[3]
                w = _gdl_weights(t, offs_c, cw_ptr, 0.0, C, WEIGHT_TYPE, False)
                if HAS_W:  # a class weighted 0 takes no part, not even in the max
                    cw = tl.load(cw_ptr + offs_c, mask=cmask, other=0.0)
                    w = tl.where(cw != 0.0, w, 0.0)
                wmax = tl.maximum(wmax, tl.max(w, axis=0))
        num = 0.0
        den = 0.0
        gap = 0.0  # den - num without smoothing, summed without cancelling near r = 1
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            i, f, m, t, _ = _unit_sums(tot_ptr, u, offs_c, offs_c < C, n_rows, C, row, IMAGE, False)
            w = _gdl_weights(t, offs_c, cw_ptr, wmax, C, WEIGHT_TYPE, HAS_W)
            num += tl.sum(w * i, axis=0)
            den += tl.sum(w * (2.0 * i + f + m), axis=0)  # P + T
            gap += tl.sum(w * (f + m), axis=0)
        num = 2.0 * num + snr
        den_raw = den + sdr
        live = den_raw >= eps
        den = tl.where(den_raw < eps, eps, den_raw)
        r = num / den
        loss = tl.where(live, (gap + (sdr - snr)) / den, 1.0 - r)
        total += loss
        if NONE:
            tl.store(loss_ptr + u, loss)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            cmask = offs_c < C
            t = _unit_sums(tot_ptr, u, offs_c, cmask, n_rows, C, row, IMAGE, False)[3]
            w = _gdl_weights(t, offs_c, cw_ptr, wmax, C, WEIGHT_TYPE, HAS_W)
            dl_di = -k * 2.0 * w / den
            dl_dp = tl.where(live, k * r * w / den, 0.0)
            _store_coefs(out_ptr, u, B, C, offs_c, dl_di + dl_dp, dl_dp, IMAGE)
    pix, kpix = _pixel_total(tot_ptr, n_rows, row, lam_pix, PIXEL, PIX_MEAN, BLOCK_B)
    _store_kpix(out_ptr, B, C, kpix, BLOCK_B)
    if not NONE:
        tl.store(loss_ptr, lam_reg * total * scale + lam_pix * pix)
