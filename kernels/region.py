"""Triton region losses: soft Dice, Jaccard, Tversky, focal Tversky, generalized Dice, MCC.

Same signatures and semantics as ``segtriton.reference`` (formulas there), plus
``validate`` and ``process_group``. How they run:

- Pass 1 (a Triton kernel) reads the logits and the target once and returns the sums
  ``I, P, T`` per (image, class) in fp32, from per-program partial rows added in a fixed
  order: no one-hot, no float atomics, bitwise deterministic. P and T come as ``F = P -
  I`` and ``M = T - I`` (and T), each summed from terms of its own, so that the soft false
  positives and negatives keep their digits near a right prediction, where a difference
  of two large float32 sums would not. A softmax over hard labels
  on contiguous pixels, up to :data:`REGION_COLUMN` classes, holds each pixel's class
  column in one thread (``_tiles.column_tiles``) in both passes; otherwise each pass
  walks the class rows.
- A one-program Triton finalize (``_finalize_kernels.py``) turns those ``[B, C]`` sums
  into the loss and ``u = dL/dI + dL/dP``, ``v = dL/dP`` per (image, class) (``dL/dp``
  of a pixel of the class, and of one not of it) in one launch, for every reduction
  (with 'none', ``u`` and ``v`` are per unit and class of the output and the backward
  multiplies them by its grad_output). :func:`region_stats` returns the
  differentiable sums themselves, for formulas of one's own.
- Pass 2 (the backward, a Triton kernel) recomputes the probabilities and writes
  ``dL/dz`` once. Nothing of pixel size is saved between the passes. With
  ``from_logits=False`` both passes read the input as the probabilities (no activation).
- No host synchronisation unless ``validate=True`` (which reads the labels / masks and
  the weight vectors and raises ``ValueError`` on bad values); without it a label outside
  ``[0, C)`` or a mask value outside [0, 1] makes the loss NaN.
- ``process_group`` (torch.distributed, scope 'batch'): the per-class sums are
  all-reduced before the finalize, as in the reference (see its docstrings); the
  gradient of the global sums is that of the local ones, so pass 2 is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from segtriton.reference import region as ref_region
from segtriton.reference._common import (
    check_choice,
    check_logits,
    check_mode,
    check_number,
    check_probability_input,
    checked_target,
    is_number,
    probability_target,
)

from ._finalize_kernels import _gdl_finalize_kernel, _region_finalize_kernel
from ._ops import op
from ._region_kernels import (
    PRODUCT,
    SOFT_MIN,
    SQUARED,
    _region_grad_kernel,
    _region_stats_kernel,
)
from ._runtime import compiled_apart, kernel_api
from ._tiles import (
    COLUMN_CLASSES,
    STAGES,
    TILES_PER_PROGRAM,
    class_blocks,
    class_fast,
    column_tiles,
    finalize_block,
    grad_like,
    ignore_arg,
    ignore_value,
    loss_views,
    next_pow2,
    num_warps_for,
    pixel_view,
    spatial_size,
    tile_chunks,
    walk_labels,
    walk_tiles,
    write_rows,
)
from .pixelwise import _class_vector

PIXEL_SOFTMAX, PIXEL_SIGMOID = 1, 2  # compound pixel terms fused into the two passes
# what pass 1 and 2 read: sigmoid over masks, softmax over labels or over class probabilities
TARGET_MASKS, TARGET_LABELS, TARGET_PROBS = 0, 1, 2
INPUT_PROBS = 4  # added to the kind when the input holds probabilities (from_logits=False)
# pass 1 / 2's pixel-term arguments (pixel, w, w2, smoothing, gamma, scale, focal) for none
_NO_PIXEL = (0, None, None, 0.0, 0.0, 1.0, False)

Weights = torch.Tensor | Sequence[float] | None


def overlap_form(squared: bool, soft_label: bool) -> int:
    """Pass 1's OVERLAP (``_region_kernels.py``) for the reference's ``squared`` and
    ``soft_label`` (the squared sums are already the L2 form: ``soft_label`` adds nothing)."""
    if squared:
        return SQUARED.value
    return SOFT_MIN.value if soft_label else PRODUCT.value


# A pass 1 that walks class rows runs one warp per program over half a chunk's pixels (8
# per thread at the default 512), a quarter with a softmax pixel term, whose walk keeps more
# per pixel: a class's sums over the tile are then shuffles within the warp, with no
# exchange across warps (three barriers per class at four warps). On sm_90 (Triton 3.6)
# Dice's pass 1 took 126 registers at 8 pixels per thread and 79 at 4; CE + Dice's, 193 in
# fp32 at 8 and 96 at 4. Four times CHUNK_PROGRAMS such programs keep as many warps in
# flight. The class sums build up in blocks of ACC_BLOCK classes, one register per thread
# per sum.
ACC_BLOCK = 32


# The region losses' column tiles (``_tiles.column_tiles``) take at most this many classes:
# pass 2 also holds ``dL/dp`` at and off the label per class. On sm_90 (Triton 3.6, bf16)
# its Dice build took 128 registers at C = 24 and 159 at 32, CE + Dice's 139 and 193.
REGION_COLUMN = min(COLUMN_CLASSES, 24)


def _column(x, kind, pixel, focal, smoothing, class_stride, pixel_stride):
    """``(smooth, column_tiles(...) or None)`` of a pass over logits ``x``: column tiles
    for a softmax over hard labels (any pixel term but a sigmoid one) on contiguous
    pixels or classes, up to :data:`REGION_COLUMN` classes; ``smooth``: a CE term with
    smoothing."""
    smooth = pixel == PIXEL_SOFTMAX and not focal and smoothing > 0
    if kind != TARGET_LABELS or pixel == PIXEL_SIGMOID:
        return smooth, None
    return smooth, column_tiles(x, smooth, class_stride, pixel_stride, REGION_COLUMN)


def _pass1_tile(C: int, pixel: int) -> tuple[int, int, bool, int, int]:
    """``(BLOCK_C, BLOCK_P, single, num_warps, more)`` of pass 1 for C classes and the
    pixel term ``pixel``, ``more`` for :func:`tile_chunks`."""
    block_c, block_p, single = class_blocks(C)
    if single or block_c > 1:
        return block_c, block_p, single, num_warps_for(block_c, block_p), 1
    share = 4 if pixel == PIXEL_SOFTMAX else 2
    return 1, max(16, block_p // share), False, 1, 4


def _pass1(logits, target, kind, ignore_index, overlap, pixel, w, w2, smoothing, gamma,
           scale, focal, count=False) -> torch.Tensor:  # fmt: skip
    """Pass 1: ``[B, 4C + 2]`` fp32 per image: ``I[C], F[C], M[C], T[C]`` (``F = P - I``
    and ``M = T - I`` summed as terms of their own), the pixel term's loss sum and 'mean'
    divisor (zeros when ``pixel`` is 0); with ``count``, ``[B, 5C + 2]`` with the counted
    pixels ``N[C]`` after T."""
    x, t, strides = loss_views(logits, target, _reads_labels(kind))
    B, C = x.shape[:2]
    S = spatial_size(x)
    smooth, column = _column(x, kind, pixel, focal, smoothing, *strides[1:3])
    if column:
        (block_c, block_p, single), vec, warps = column[5:]
        more = 1
    else:
        block_c, block_p, single, warps, more = _pass1_tile(C, pixel)
        vec = 1
    tiles_per_chunk, n_chunks = tile_chunks(S, block_p, B, more)
    row = (5 if count else 4) * C + 2
    part = torch.empty(B * n_chunks * row, dtype=torch.float32, device=x.device)
    ign, has_ignore = ignore_arg(ignore_index, _reads_labels(kind))
    _region_stats_kernel[(B * n_chunks,)](
        x,
        t,
        part,
        w,
        w2,
        C,
        S,
        n_chunks,
        tiles_per_chunk,
        *strides,
        ign,
        smoothing,
        gamma,
        scale,
        **_flags(kind, has_ignore, overlap, single, pixel, focal, w),
        COUNT=count,
        STAGES=STAGES,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        ACC=max(block_c, min(next_pow2(C), ACC_BLOCK)),
        VEC=vec,
        SMOOTH=smooth,
        NC=C if column else 0,
        CLASS_FAST=column is not None and class_fast(C, strides[1]),
        num_warps=warps,
    )
    return part.view(B, n_chunks, row).sum(1)


@op("segtriton::region_stats")
def _region_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    kind: int,
    ignore_index: float | None,
    overlap: int,
) -> torch.Tensor:
    """Pass 1 without a pixel term: the ``[B, 3, C]`` sums ``I, P, T`` (``P = I + F``)."""
    total = _pass1(logits, target, kind, ignore_index, overlap, *_NO_PIXEL)
    B, C = logits.shape[:2]
    i, f, _, t = total[:, : 4 * C].view(B, 4, C).unbind(1)
    return torch.stack([i, i + f, t], 1)


def _reads_labels(kind: int) -> bool:
    return kind % INPUT_PROBS == TARGET_LABELS


def _folds(flags: dict) -> bool:
    """Whether pass 2 takes ``sum_k p_k dL/dp_k`` in the walk that finds the softmax
    (``_region_kernels._fold_walk``): a softmax over streamed classes with the PRODUCT
    sums. Two walks over the class rows before the writes become one."""
    return flags["SOFTMAX"] and not flags["SINGLE"] and flags["OVERLAP"] == PRODUCT.value


def _flags(kind, has_ignore, overlap, single, pixel, focal, w):
    probs = kind >= INPUT_PROBS
    return {
        "SOFTMAX": kind % INPUT_PROBS != TARGET_MASKS and not probs,
        "LABELS": _reads_labels(kind),
        "HAS_IGNORE": has_ignore,
        "PROBS": probs,
        "OVERLAP": overlap,
        "SINGLE": single,
        "PIXEL": pixel,
        "IS_FOCAL": focal,
        "HAS_W": w is not None,
    }


@_region_stats.register_fake
def _(logits, target, *params):
    B, C = logits.shape[:2]
    return logits.new_empty((B, 3, C), dtype=torch.float32)


@op("segtriton::region_grad")
def _region_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    coef: torch.Tensor,
    kpix: torch.Tensor,
    kind: int,
    ignore_index: float | None,
    overlap: int,
    pixel: int,
    w: torch.Tensor | None,
    w2: torch.Tensor | None,
    smoothing: float,
    gamma: float,
    scale: float,
    focal: bool,
    share: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pass 2: ``dL/dz`` in the logits' dtype from ``coef [B, 2, C]`` (``dL/dI + dL/dP``,
    ``dL/dP``) and ``kpix [B]`` (dL / d pixel-loss sum), times each pixel's ``share``
    (fp32 ``[B, *S]``; the softmax pixel term only) when given."""
    x, t, strides = loss_views(logits, target, _reads_labels(kind))
    grad = grad_like(logits)
    g, sgb, sgc, sgs = pixel_view(grad)
    smooth, column = _column(x, kind, pixel, focal, smoothing, *strides[1:3])
    tiles = column or walk_tiles(x)
    C, S, n_pblocks, n_blocks, n_programs, (block_c, block_p, single), vec, warps = tiles
    ign, has_ignore = ignore_arg(ignore_index, _reads_labels(kind))
    flags = _flags(kind, has_ignore, overlap, single, pixel, focal, w)
    if pixel == PIXEL_SOFTMAX and not single and not _folds(flags) and strides[2] != 1:
        # the three walks of this pass (no FOLD) with channels_last logits
        t, strides = walk_labels(t, strides)
    _region_grad_kernel[(n_programs,)](
        x,
        t,
        coef,
        kpix,
        kpix if share is None else share,
        g,
        w,
        w2,
        C,
        S,
        n_pblocks,
        n_blocks,
        *strides,
        sgb,
        sgc,
        sgs,
        ign,
        smoothing,
        gamma,
        scale,
        **flags,
        SHARE=share is not None,
        FOLD=_folds(flags),
        TILES=TILES_PER_PROGRAM,
        STAGES=STAGES,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        ROWS=write_rows(strides[2], sgs),
        VEC=vec,
        SMOOTH=smooth,
        NC=C if column else 0,
        CLASS_FAST=column is not None and class_fast(C, strides[1]),
        num_warps=warps,
    )
    return grad


@_region_grad.register_fake
def _(logits, target, coef, kpix, *params):
    return grad_like(logits)


def _setup(ctx, inputs, output):
    logits, target, *ctx.params = inputs
    ctx.save_for_backward(logits, target)


def _backward(ctx, grad_sums):
    logits, target = ctx.saved_tensors
    d_i, d_p = grad_sums[:, 0].to(torch.float32), grad_sums[:, 1].to(torch.float32)
    coef = torch.stack([d_i + d_p, d_p], 1)
    # kpix (here coef) is read only with a pixel term
    grad = _region_grad(logits, target, coef, coef, *ctx.params, *_NO_PIXEL)
    return (grad,) + (None,) * (len(ctx.params) + 1)


_region_stats.register_autograd(_backward, _setup)


class Finalize(NamedTuple):
    """What the finalize kernel turns the sums into (``_finalize_kernels.py``): the index
    ``r = (a_I I + smooth_nr) / max(b_I I + b_P P + b_T T + smooth_dr, eps)`` per class,
    its loss (``log``, a ``reference.region.LOSS_*`` form: ``1 - r``, ``-log r`` or
    ``log(cosh(1 - r))``; ``** gamma`` when given), the absent policy
    and class weights, the reduction over units ('mean', 'sum', or 'none': a loss per unit
    and class, per unit for GDL), and ``lam_reg`` times that plus ``lam_pix`` times the
    pixel term ('mean' with ``pix_mean``) plus ``offset``."""

    form: tuple[float, float, float, float]
    smooth_nr: float
    smooth_dr: float
    eps: float
    log: int = 0
    gamma: float | torch.Tensor | None = None
    absent: str = "include"
    weight: torch.Tensor | None = None
    reduction: str = "mean"
    lam_reg: float = 1.0
    lam_pix: float = 0.0
    pix_mean: bool = True
    offset: float = 0.0
    gdl: tuple[str, str] | None = None  # generalized Dice: (weight_type, absent_weight)
    gamma_after_mean: bool = False  # ``gamma`` powers the class mean ('mean' only)
    mcc: bool = False  # the index is the Matthews correlation (``eps`` on each count)


DICE, JACCARD = (2.0, 0.0, 1.0, 1.0), (1.0, -1.0, 1.0, 1.0)


def tversky_form(alpha: float, beta: float) -> tuple[float, float, float, float]:
    """``I + alpha (P - I) + beta (T - I)`` as ``(a_I, b_I, b_P, b_T)`` (alpha and beta
    finite and >= 0)."""
    alpha, beta = check_number("alpha", alpha), check_number("beta", beta)
    return (1.0, 1.0 - alpha - beta, alpha, beta)


_ABSENT = {"include": 0, "exclude": 1, "zero": 2}
_GDL_WEIGHTS = ("square", "simple", "uniform")


def _loss_shape(B: int, C: int, flags: list[int]) -> tuple[int, ...]:
    """A scalar, or with reduction 'none' one value per unit (and class but for GDL)."""
    if not flags[8]:
        return ()
    units = B if flags[0] else 1
    return (units,) if flags[6] >= 0 else (units, C)


def _loss_and_coefs(
    logits, target, kind, ignore_index, overlap, pixel, w, w2, smoothing, gamma, scale,
    focal, cw, gvec, floats, flags, *, group=None,
):  # fmt: skip
    """Pass 1 and the finalize: the loss and ``[B * 2C + B]`` fp32 gradient coefficients
    for grad_output 1 (``dL/dI + dL/dP, dL/dP`` per image, then dL / d pixel-loss sum per
    image).
    ``floats``: a_I, b_I, b_P, b_T, smooth_nr, smooth_dr, eps, gamma, lam_reg, lam_pix,
    offset; ``flags``: image scope, region mean, pixel mean, log, focal power (1 per
    class, 2 after the mean), absent, generalized Dice weight type (-1: not GDL), absent
    weight 'max', reduction 'none' (then the loss is ``[units, C]``, ``[units]`` for GDL,
    and the coefficients are per unit of it), MCC (pass 1 also counts the pixels). With a
    process ``group`` (batch scope) the batch sums are all-reduced first: the coefficients
    of global sums are those of the local ones."""
    total = _pass1(
        logits, target, kind, ignore_index, overlap, pixel, w, w2, smoothing, gamma, scale,
        focal, count=bool(flags[9]),
    )  # fmt: skip
    if group is not None:
        total = total.sum(0, keepdim=True)
        dist.all_reduce(total, group=group)
    B, C = logits.shape[:2]
    loss = torch.empty(_loss_shape(B, C, flags), dtype=torch.float32, device=logits.device)
    out = torch.empty(B * 2 * C + B, dtype=torch.float32, device=logits.device)
    image, reg_mean, pix_mean, log, power, absent, gdl_type, gdl_max, none, mcc = flags
    sizes = (B, total.shape[0], C, total.shape[1])
    blocks = {
        "BLOCK_C": finalize_block(C),
        "BLOCK_B": finalize_block(B),
    }
    if gdl_type >= 0:
        _gdl_finalize_kernel[(1,)](
            total, cw, loss, out, *sizes, *floats[4:7], *floats[8:10], IMAGE=bool(image),
            MEAN=bool(reg_mean), NONE=bool(none), WEIGHT_TYPE=gdl_type, ABSENT_MAX=bool(gdl_max),
            HAS_W=cw is not None, PIXEL=pixel != 0, PIX_MEAN=bool(pix_mean), **blocks,
        )  # fmt: skip
        return loss, out
    _region_finalize_kernel[(1,)](
        total, cw, gvec, loss, out, *sizes, *floats,
        IMAGE=bool(image), REG_MEAN=bool(reg_mean), NONE=bool(none), PIXEL=pixel != 0,
        PIX_MEAN=bool(pix_mean),
        LOG=int(log), FOCAL=power, GAMMA_VEC=gvec is not None, HAS_W=cw is not None,
        ABSENT=absent, MCC=bool(mcc), **blocks,
    )  # fmt: skip
    return loss, out


@op("segtriton::region_loss")
def _region_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    kind: int,
    ignore_index: float | None,
    overlap: int,
    pixel: int,
    w: torch.Tensor | None,
    w2: torch.Tensor | None,
    smoothing: float,
    gamma: float,
    scale: float,
    focal: bool,
    cw: torch.Tensor | None,
    gvec: torch.Tensor | None,
    floats: list[float],
    flags: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_loss_and_coefs` on local sums, as a custom op (torch.compile, graphs)."""
    return _loss_and_coefs(
        logits, target, kind, ignore_index, overlap, pixel, w, w2, smoothing, gamma, scale,
        focal, cw, gvec, floats, flags,
    )  # fmt: skip


@_region_loss.register_fake
def _(logits, target, *params):
    B, C = logits.shape[:2]
    loss = logits.new_empty(_loss_shape(B, C, params[-1]), dtype=torch.float32)
    return loss, logits.new_empty((B * 2 * C + B,), dtype=torch.float32)


def _loss_setup(ctx, inputs, output):
    logits, target, *params = inputs
    ctx.params, ctx.n_inputs = params[:10], len(inputs)  # the pass-1 parameters
    ctx.per_class = params[-1][6] < 0  # 'none': a grad_output per class, but for GDL
    ctx.save_for_backward(logits, target, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _loss_backward(ctx, grad_loss, _grad_out):
    logits, target, out = ctx.saved_tensors
    B, C = logits.shape[:2]
    g = grad_loss.to(torch.float32)
    if g.dim() == 0:
        scaled = out * g
        coef, kpix = scaled[: B * 2 * C].view(B, 2, C), scaled[B * 2 * C :]
    else:  # reduction 'none': each unit's (and class's) own grad_output
        coef = out[: B * 2 * C].view(B, 2, C) * g.reshape(-1, 1, C if ctx.per_class else 1)
        kpix = out[B * 2 * C :]
    grad = _region_grad(logits, target, coef, kpix, *ctx.params)
    return (grad,) + (None,) * (ctx.n_inputs - 1)


_region_loss.register_autograd(_loss_backward, _loss_setup)


@op("segtriton::topk_region_loss")
def _topk_region_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    share: torch.Tensor,
    pix_total: torch.Tensor,
    lambda_pix: float,
    pix_div: int,
    w: torch.Tensor | None,
    smoothing: float,
    kind: int,
    ignore_index: float | None,
    overlap: int,
    cw: torch.Tensor | None,
    gvec: torch.Tensor | None,
    floats: list[float],
    flags: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A region loss (arguments as for :func:`_region_loss`, without a pixel term) plus a
    top-k cross-entropy whose value ``pix_total`` (its weight included) and per-pixel
    ``share`` were found beforehand. Pass 2 adds ``lambda_pix / pix_div`` times each
    pixel's share of the cross-entropy gradient (class weights ``w``, label
    ``smoothing``), so the region loss's two passes carry both terms."""
    loss, out = _loss_and_coefs(
        logits, target, kind, ignore_index, overlap, *_NO_PIXEL, cw, gvec, floats, flags
    )
    return loss + pix_total, out


@_topk_region_loss.register_fake
def _(logits, target, share, pix_total, *params):
    B, C = logits.shape[:2]
    return pix_total.new_empty(()), logits.new_empty((B * 2 * C + B,), dtype=torch.float32)


def _topk_setup(ctx, inputs, output):
    logits, target, share, _, lambda_pix, pix_div, w, smoothing, kind, ignore, overlap = inputs[:11]
    ctx.params = (kind, ignore, overlap, PIXEL_SOFTMAX, w, None, smoothing, 0.0, 1.0, False)
    ctx.pix_k, ctx.n_inputs = lambda_pix / pix_div, len(inputs)
    ctx.save_for_backward(logits, target, share, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _topk_backward(ctx, grad_loss, _grad_out):
    logits, target, share, out = ctx.saved_tensors
    B, C = logits.shape[:2]
    g = grad_loss.to(torch.float32)
    coef = (out[: B * 2 * C] * g).view(B, 2, C)
    kpix = (g * ctx.pix_k).expand(B).contiguous()
    grad = _region_grad(logits, target, coef, kpix, *ctx.params, share)
    return (grad,) + (None,) * (ctx.n_inputs - 1)


_topk_region_loss.register_autograd(_topk_backward, _topk_setup)


class _GlobalRegionLoss(torch.autograd.Function):
    """:func:`_loss_and_coefs` with the sums all-reduced over a process group (eager: a
    collective inside a custom op would hide it from torch.compile anyway)."""

    @staticmethod
    def forward(ctx, logits, target, group, *args):
        loss, out = _loss_and_coefs(logits, target, *args, group=group)
        ctx.params, ctx.n_inputs = args[:10], 3 + len(args)
        ctx.per_class = args[-1][6] < 0
        ctx.save_for_backward(logits, target, out)
        ctx.mark_non_differentiable(out)
        ctx.set_materialize_grads(False)
        return loss, out

    @staticmethod
    def backward(ctx, grad_loss, _grad_out):
        return _loss_backward(ctx, grad_loss, _grad_out)


@compiled_apart  # a clean graph break around the collective under torch.compile
def _global_region_loss(logits, target, group, *args):
    return _GlobalRegionLoss.apply(logits, target, group, *args)[0]


def _checked(logits, target, mode, ignore_index, scope, validate, from_logits=True):
    """``(target, kind, ignore)``: checked inputs in the form pass 1 takes; ``kind`` is a
    ``TARGET_*`` value (multiclass with a target of the logits' shape: probabilities),
    plus ``INPUT_PROBS`` when not ``from_logits`` (``validate`` then reads the input too)."""
    check_choice("scope", scope, ("batch", "image"))
    check_mode(mode, logits)
    kind = TARGET_MASKS
    if mode == "multiclass":
        kind = TARGET_PROBS if probability_target(logits, target, ignore_index) else TARGET_LABELS
    labels = kind == TARGET_LABELS
    target = checked_target(logits, target, labels, ignore_index, validate)
    if not from_logits:
        kind += INPUT_PROBS
        if validate:
            check_probability_input(logits, target, labels, ignore_index)
    return target, kind, ignore_value(ignore_index, target, labels)


def fused_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: float | None,
    scope: str,
    overlap: int,
    validate: bool,
    fin: Finalize,
    process_group: dist.ProcessGroup | None = None,
    **pixel_term: Any,
) -> torch.Tensor:
    """A region (or compound) loss as pass 1 plus the Triton finalize (one launch), with
    pass 2 as its backward. ``pixel_term``: the keywords of :func:`fused_args` after
    ``fin``; ``process_group`` (batch scope) all-reduces the sums before the finalize."""
    target, args = fused_args(
        logits, target, mode, ignore_index, scope, overlap, validate, fin, **pixel_term
    )
    if process_group is None:
        loss = _region_loss(logits, target, *args)[0]
    elif scope != "batch":
        raise ValueError("process_group needs scope='batch' (the sums run over the batch)")
    else:
        loss = _global_region_loss(logits, target, process_group, *args)
    per_class_batch = fin.reduction == "none" and scope == "batch" and not fin.gdl
    return loss[0] if per_class_batch else loss  # the reference's [C] for one unit


def fused_args(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: float | None,
    scope: str,
    overlap: int,
    validate: bool,
    fin: Finalize,
    pixel: int = 0,
    w: torch.Tensor | None = None,
    w2: torch.Tensor | None = None,
    smoothing: float = 0.0,
    gamma: float = 0.0,
    scale: float = 1.0,
    focal: bool = False,
    labels_only: bool = False,
    from_logits: bool = True,
) -> tuple[torch.Tensor, tuple]:
    """The checked target and the arguments of :func:`_region_loss` after it. The pixel
    term (``pixel``: a ``PIXEL_*`` value, 0 for none) takes class weights ``w`` (and BCE's
    ``w2``), label ``smoothing`` and the focal ``gamma``, ``scale`` and ``focal``; it (or
    ``labels_only``) needs integer labels in multiclass mode; ``from_logits=False``
    (probabilities as the input) is for the region losses, which have no pixel term."""
    target, kind, ignore = _checked(
        logits, target, mode, ignore_index, scope, validate, from_logits
    )
    if kind == TARGET_PROBS and (pixel or labels_only):
        raise ValueError(
            "the focal and top-k compound losses take integer labels; with class-probability "
            "targets use ce_dice_loss, or add a region loss and a pixel-wise one"
        )
    check_choice("absent", fin.absent, tuple(_ABSENT))
    smoothing_terms = ref_region.check_smoothing(fin.smooth_nr, fin.smooth_dr, fin.eps)
    power = 0 if fin.gamma is None else 2 if fin.gamma_after_mean else 1
    gvec = fin.gamma if isinstance(fin.gamma, torch.Tensor) else None
    floats = [
        *map(float, fin.form), *smoothing_terms,
        1.0 if fin.gamma is None or isinstance(fin.gamma, torch.Tensor) else float(fin.gamma),
        fin.lam_reg, fin.lam_pix, fin.offset,
    ]  # fmt: skip
    check_choice("reduction", fin.reduction, ("mean", "sum", "none"))
    mean, none = fin.reduction == "mean", fin.reduction == "none"
    flags = [scope == "image", mean, fin.pix_mean, fin.log, power, _ABSENT[fin.absent]]
    flags += [_GDL_WEIGHTS.index(fin.gdl[0]), fin.gdl[1] == "max"] if fin.gdl else [-1, 0]
    flags += [none, fin.mcc]
    args = (
        kind, ignore, overlap, pixel, w, w2, smoothing, gamma, scale, focal,
        fin.weight, gvec, floats, [int(f) for f in flags],
    )  # fmt: skip
    return target, args


def _region_sums(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: float | None,
    scope: str,
    overlap: int,
    validate: bool,
    process_group: dist.ProcessGroup | None,
    from_logits: bool = True,
) -> ref_region.RegionStats:
    """Checked inputs through pass 1: the region sums per unit."""
    target, kind, ignore = _checked(
        logits, target, mode, ignore_index, scope, validate, from_logits
    )
    sums = _region_stats(logits, target, kind, ignore, overlap).movedim(1, 0)
    if scope == "batch":
        sums = sums.sum(1)
    return ref_region.stats_from_sums(ref_region.global_sums(sums, scope, process_group))


def _classes(logits: torch.Tensor) -> int:
    """C of logits checked first (``[B, C, *spatial]``), as the per-class options are sized
    from it before the loss checks its inputs."""
    check_logits(logits)
    return logits.shape[1]


def _weights(weight, include_background, logits, validate):
    """The checked fp32 class weights, class 0's set to 0 without the background."""
    C = _classes(logits)
    w = _class_vector("weight", weight, C, logits, validate)
    fp32 = logits.new_empty(0, dtype=torch.float32)
    return ref_region.region_class_weight(w, C, include_background, fp32, check_values=False)


@kernel_api
def region_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: float | None,
    scope: str,
    squared: bool = False,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
    soft_label: bool = False,
    from_logits: bool = True,
) -> ref_region.RegionStats:
    """The sums of :func:`segtriton.reference.region_stats` from the Triton pass 1,
    differentiable (the backward is pass 2). See the module docstring for ``validate``
    and ``process_group``."""
    overlap = overlap_form(squared, soft_label)
    return _region_sums(
        logits, target, mode, ignore_index, scope, overlap, validate, process_group, from_logits
    )


@kernel_api
def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    squared: bool = False,
    log_loss: bool = False,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    soft_label: bool = False,
    log_cosh: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton soft Dice loss; semantics of ``segtriton.reference.dice_loss``."""
    fin = Finalize(
        DICE, smooth_nr, smooth_dr, eps, ref_region.class_loss_form(log_loss, log_cosh), None,
        absent,
        _weights(weight, include_background, logits, validate),
        reduction,
    )  # fmt: skip
    return fused_loss(
        logits, target, mode, ignore_index, scope, overlap_form(squared, soft_label), validate, fin,
        process_group=process_group, from_logits=from_logits,
    )  # fmt: skip


@kernel_api
def jaccard_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    squared: bool = False,
    log_loss: bool = False,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    soft_label: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton soft Jaccard loss; semantics of ``segtriton.reference.jaccard_loss``."""
    fin = Finalize(
        JACCARD, smooth_nr, smooth_dr, eps, ref_region.class_loss_form(log_loss), None, absent,
        _weights(weight, include_background, logits, validate),
        reduction,
    )  # fmt: skip
    return fused_loss(
        logits, target, mode, ignore_index, scope, overlap_form(squared, soft_label), validate, fin,
        process_group=process_group, from_logits=from_logits,
    )  # fmt: skip


@kernel_api
def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    soft_label: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton Tversky loss; semantics of ``segtriton.reference.tversky_loss``."""
    fin = Finalize(
        tversky_form(alpha, beta), smooth_nr, smooth_dr, eps, ref_region.LOSS_PLAIN, None, absent,
        _weights(weight, include_background, logits, validate),
        reduction,
    )  # fmt: skip
    return fused_loss(
        logits, target, mode, ignore_index, scope, overlap_form(False, soft_label), validate, fin,
        process_group=process_group, from_logits=from_logits,
    )  # fmt: skip


@kernel_api
def focal_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float | torch.Tensor | Sequence[float] = 0.75,
    gamma_after_mean: bool = False,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    soft_label: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton focal Tversky loss; semantics of ``segtriton.reference.focal_tversky_loss``."""
    ref_region.check_gamma_after_mean(gamma, gamma_after_mean, reduction)
    g: float | torch.Tensor
    if is_number(gamma):
        g = check_number("gamma", gamma)
    else:
        g = _class_vector("gamma", gamma, _classes(logits), logits, validate)
    fin = Finalize(
        tversky_form(alpha, beta), smooth_nr, smooth_dr, eps, ref_region.LOSS_PLAIN, g, absent,
        _weights(weight, include_background, logits, validate),
        reduction, gamma_after_mean=gamma_after_mean,
    )  # fmt: skip
    return fused_loss(
        logits, target, mode, ignore_index, scope, overlap_form(False, soft_label), validate, fin,
        process_group=process_group, from_logits=from_logits,
    )  # fmt: skip


@kernel_api
def generalized_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    weight_type: str = "square",
    absent_weight: str = "max",
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    scope: str = "batch",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    soft_label: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton generalized Dice loss; semantics of
    ``segtriton.reference.generalized_dice_loss``."""
    check_choice("weight_type", weight_type, _GDL_WEIGHTS)
    check_choice("absent_weight", absent_weight, ("max", "zero"))
    fin = Finalize(
        DICE, smooth_nr, smooth_dr, eps,
        weight=_weights(weight, include_background, logits, validate),
        reduction=reduction, gdl=(weight_type, absent_weight),
    )  # fmt: skip
    return fused_loss(
        logits, target, mode, ignore_index, scope, overlap_form(False, soft_label), validate, fin,
        process_group=process_group, from_logits=from_logits,
    )  # fmt: skip


@kernel_api
def mcc_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    eps: float = 1e-5,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    include_background: bool = True,
    from_logits: bool = True,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton Matthews correlation loss; semantics of ``segtriton.reference.mcc_loss``.
    Pass 1 also counts each (image, class)'s counted pixels for ``TN``."""
    fin = Finalize(
        DICE, 0.0, 0.0, eps, absent=absent,
        weight=_weights(weight, include_background, logits, validate),
        reduction=reduction, mcc=True,
    )  # fmt: skip
    return fused_loss(
        logits, target, mode, ignore_index, scope, False, validate, fin,
        process_group=process_group, from_logits=from_logits,
    )  # fmt: skip
