"""Triton compound losses: CE + Dice, BCE + Dice, focal + Dice, focal + generalized Dice,
Combo, fused.

Same signatures and semantics as ``segtriton.reference`` (formulas there), plus
``validate`` and ``process_group`` (as in the reference: both terms over the global
batch). The pixel-wise term rides in the region kernels' two passes: pass 1 also sums
its loss and 'mean' divisor, pass 2 adds its gradient to the region gradient, so a
compound loss reads the logits twice and writes the gradient once, like Dice alone.
With classes streamed, the softmax term's per-pixel sums (CE, softmax focal) come from
the walk over class rows that the softmax needs anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from segtriton.reference import region as ref_region
from segtriton.reference._common import (
    check_choice,
    check_logits,
    check_number,
    probability_target,
)
from segtriton.reference.compound import (
    _scalar_reduction,
    combo_options,
    focal_background,
    term_weights,
)
from segtriton.reference.pixelwise import topk_count

from ._runtime import kernel_api
from .pixelwise import (
    _class_vector,
    _topk_share,
    cross_entropy,
    sigmoid_focal_options,
    softmax_focal_options,
)
from .region import (
    _GDL_WEIGHTS,
    DICE,
    PIXEL_SIGMOID,
    PIXEL_SOFTMAX,
    Finalize,
    _topk_region_loss,
    dice_loss,
    fused_args,
    fused_loss,
    overlap_form,
)

Weights = torch.Tensor | Sequence[float] | None


def _dice_plus(smooth_nr, smooth_dr, eps, absent, weight, reduction, lam_dice, lam_pix):
    """``lam_dice Dice + lam_pix pixel term``, both reduced by ``reduction``."""
    return Finalize(
        DICE, smooth_nr, smooth_dr, eps, absent=absent, weight=weight, reduction=reduction,
        lam_reg=lam_dice, lam_pix=lam_pix, pix_mean=reduction == "mean",
    )  # fmt: skip


def _sigmoid_weights(C, logits, w=None, pw=None, pos=1.0, neg=1.0):
    """Per-class ``(wp, wn)`` of the BCE term ``-(wp t log p + wn (1 - t) log(1 - p))``
    from the checked ``weight`` and ``pos_weight`` vectors (or None), times ``pos`` and
    ``neg`` (numbers or per-class vectors: Combo's beta, the focal term's alpha)."""
    ones = torch.full((C,), 1.0, dtype=torch.float32, device=logits.device)
    wn = ones * neg if w is None else w * neg
    wp = (ones if w is None else w) * (1.0 if pw is None else pw) * pos
    return wp, wn


@kernel_api
def ce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    lambda_ce: float = 1.0,
    lambda_dice: float = 1.0,
    weight: Weights = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    squared: bool = False,
    scope: str = "batch",
    absent: str = "include",
    include_background: bool = True,
    reduction: str = "mean",
    soft_label: bool = False,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton fused CE + Dice; semantics of ``segtriton.reference.ce_dice_loss``. For a
    class-probability target (which the fused softmax term does not read) the two losses
    run apart, added; ``process_group`` then raises ValueError."""
    _scalar_reduction(reduction)
    check_logits(logits)
    lambda_ce, lambda_dice = term_weights(lambda_ce=lambda_ce, lambda_dice=lambda_dice)
    C = logits.shape[1]
    label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    w = _class_vector("weight", weight, C, logits, validate)
    fp32 = logits.new_empty(0, dtype=torch.float32)  # w is checked and fp32 already
    dice_w = ref_region.region_class_weight(w, C, include_background, fp32, check_values=False)
    if not probability_target(logits, target, ignore_index):
        fin = _dice_plus(
            smooth_nr, smooth_dr, eps, absent, dice_w, reduction, lambda_dice, lambda_ce
        )
        return fused_loss(
            logits, target, "multiclass", ignore_index, scope, overlap_form(squared, soft_label),
            validate, fin, pixel=PIXEL_SOFTMAX, w=w, smoothing=float(label_smoothing),
            process_group=process_group,
        )  # fmt: skip
    if process_group is not None:
        raise ValueError("process_group needs integer labels (the fused softmax term)")
    ce = cross_entropy(
        logits, target, w, ignore_index, reduction, label_smoothing, validate=validate
    )
    dice = dice_loss(
        logits, target, "multiclass", smooth_nr, smooth_dr, eps, squared, scope=scope,
        absent=absent, ignore_index=ignore_index, weight=dice_w, reduction=reduction,
        soft_label=soft_label, validate=validate,
    )  # fmt: skip
    return lambda_ce * ce + lambda_dice * dice


@kernel_api
def topk_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    k: float = 10.0,
    lambda_ce: float = 1.0,
    lambda_dice: float = 1.0,
    weight: Weights = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    squared: bool = False,
    scope: str = "batch",
    absent: str = "include",
    include_background: bool = True,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Triton top-k CE + Dice; semantics of ``segtriton.reference.topk_dice_loss``.

    The cross-entropy kernel's 'none' pass gives the per-pixel losses and the radix
    select their shares (as in :func:`topk_cross_entropy`); then the Dice passes run, and
    pass 2 adds each pixel's share of the cross-entropy gradient: three passes over the
    logits (Dice alone takes two, the two losses apart four) and one gradient write.
    """
    _scalar_reduction(reduction)
    check_logits(logits)
    lambda_ce, lambda_dice = term_weights(lambda_ce=lambda_ce, lambda_dice=lambda_dice)
    C = logits.shape[1]
    label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    w = _class_vector("weight", weight, C, logits, validate)
    fp32 = logits.new_empty(0, dtype=torch.float32)  # w is checked and fp32 already
    dice_w = ref_region.region_class_weight(w, C, include_background, fp32, check_values=False)
    fin = Finalize(
        DICE, smooth_nr, smooth_dr, eps, absent=absent, weight=dice_w, reduction=reduction,
        lam_reg=lambda_dice,
    )  # fmt: skip
    target, args = fused_args(
        logits, target, "multiclass", ignore_index, scope, overlap_form(squared, False),
        validate, fin, labels_only=True,
    )  # fmt: skip
    n = topk_count(target.numel(), k)
    with torch.no_grad():
        losses = cross_entropy(logits.detach(), target, w, ignore_index, "none", label_smoothing)
        share = _topk_share(losses, n)
        # n stays an int: under torch.compile with dynamic shapes a float made from it
        # would be specialised, and every new resolution would compile again
        div = n if reduction == "mean" else 1
        pix_total = torch.dot(losses.reshape(-1), share.reshape(-1)) * (lambda_ce / div)
    kind, ignore, overlap = args[:3]
    return _topk_region_loss(
        logits, target, share, pix_total, lambda_ce, div, w, float(label_smoothing), kind,
        ignore, overlap, *args[10:],
    )[0]  # fmt: skip


@kernel_api
def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    lambda_bce: float = 1.0,
    lambda_dice: float = 1.0,
    weight: Weights = None,
    pos_weight: Weights = None,
    ignore_index: float | None = None,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    squared: bool = False,
    scope: str = "batch",
    absent: str = "include",
    reduction: str = "mean",
    soft_label: bool = False,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton fused BCE + Dice; semantics of ``segtriton.reference.bce_dice_loss``."""
    _scalar_reduction(reduction)
    check_logits(logits)
    lambda_bce, lambda_dice = term_weights(lambda_bce=lambda_bce, lambda_dice=lambda_dice)
    C = logits.shape[1]
    w = _class_vector("weight", weight, C, logits, validate)
    pw = _class_vector("pos_weight", pos_weight, C, logits, validate)
    wp, wn = _sigmoid_weights(C, logits, w, pw)
    fin = _dice_plus(smooth_nr, smooth_dr, eps, absent, w, reduction, lambda_dice, lambda_bce)
    return fused_loss(
        logits, target, "multilabel", ignore_index, scope, overlap_form(squared, soft_label),
        validate, fin, pixel=PIXEL_SIGMOID, w=wp, w2=wn,
        process_group=process_group,
    )  # fmt: skip


@kernel_api
def focal_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    lambda_focal: float = 1.0,
    lambda_dice: float = 1.0,
    alpha: float | Weights = None,
    gamma: float = 2.0,
    weight: Weights = None,
    ignore_index: float | None = None,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    scope: str = "batch",
    absent: str = "include",
    include_background: bool = True,
    sigmoid_focal: bool = False,
    reduction: str = "mean",
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton fused focal + Dice; semantics of ``segtriton.reference.focal_dice_loss``."""
    _scalar_reduction(reduction)
    check_logits(logits)
    lambda_focal, lambda_dice = term_weights(lambda_focal=lambda_focal, lambda_dice=lambda_dice)
    C = logits.shape[1]
    fp32 = logits.new_empty(0, dtype=torch.float32)
    keep, scale = focal_background(mode, sigmoid_focal, include_background, C, fp32)
    w = _class_vector("weight", weight, C, logits, validate)
    w = ref_region.region_class_weight(w, C, include_background, fp32, check_values=False)
    lam_focal = lambda_focal * scale if reduction == "mean" else lambda_focal
    fin = _dice_plus(smooth_nr, smooth_dr, eps, absent, w, reduction, lambda_dice, lam_focal)
    return _focal_compound(
        logits, target, mode, alpha, gamma, ignore_index, scope, validate, fin, process_group,
        sigmoid_focal, keep,
    )  # fmt: skip


def _focal_compound(
    logits, target, mode, alpha, gamma, ignore_index, scope, validate, fin, group,
    sigmoid_focal, keep=None,
):  # fmt: skip
    """``fin``'s region loss plus ``fin.lam_pix`` times the focal term (softmax for
    'multiclass' unless ``sigmoid_focal``, else sigmoid: one-vs-rest on the labels in
    multiclass mode, its classes weighted by ``keep``) in the region kernels' two passes."""
    softmax = mode == "multiclass" and not sigmoid_focal
    if not softmax:
        gamma, alpha = sigmoid_focal_options(gamma, alpha, logits, validate)
        pos, neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
        wp, wn = _sigmoid_weights(logits.shape[1], logits, w=keep, pos=pos, neg=neg)
        return fused_loss(
            logits, target, mode, ignore_index, scope, overlap_form(False, False), validate, fin,
            pixel=PIXEL_SIGMOID, w=wp, w2=wn, gamma=float(gamma), focal=True,
            process_group=group,
        )  # fmt: skip
    vec, scale, gamma = softmax_focal_options(alpha, gamma, logits, validate)
    return fused_loss(
        logits, target, mode, ignore_index, scope, overlap_form(False, False), validate, fin,
        pixel=PIXEL_SOFTMAX, w=vec, gamma=float(gamma), scale=float(scale), focal=True,
        process_group=group,
    )  # fmt: skip


@kernel_api
def generalized_dice_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    lambda_focal: float = 1.0,
    lambda_gdl: float = 1.0,
    alpha: float | Weights = None,
    gamma: float = 2.0,
    weight_type: str = "square",
    absent_weight: str = "max",
    ignore_index: float | None = None,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    scope: str = "batch",
    include_background: bool = True,
    sigmoid_focal: bool = False,
    reduction: str = "mean",
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton fused focal + generalized Dice; semantics of
    ``segtriton.reference.generalized_dice_focal_loss``."""
    _scalar_reduction(reduction)
    check_logits(logits)
    lambda_focal, lambda_gdl = term_weights(lambda_focal=lambda_focal, lambda_gdl=lambda_gdl)
    check_choice("weight_type", weight_type, _GDL_WEIGHTS)
    check_choice("absent_weight", absent_weight, ("max", "zero"))
    fp32 = logits.new_empty(0, dtype=torch.float32)
    keep, scale = focal_background(mode, sigmoid_focal, include_background, logits.shape[1], fp32)
    fin = Finalize(
        DICE, smooth_nr, smooth_dr, eps, weight=keep, reduction=reduction, lam_reg=lambda_gdl,
        lam_pix=lambda_focal * scale if reduction == "mean" else lambda_focal,
        pix_mean=reduction == "mean", gdl=(weight_type, absent_weight),
    )  # fmt: skip
    return _focal_compound(
        logits, target, mode, alpha, gamma, ignore_index, scope, validate, fin, process_group,
        sigmoid_focal, keep,
    )  # fmt: skip


@kernel_api
def combo_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    ignore_index: float | None = None,
    scope: str = "batch",
    reduction: str = "mean",
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton fused Combo loss; semantics of ``segtriton.reference.combo_loss``."""
    _scalar_reduction(reduction)
    check_logits(logits)
    alpha, beta, smooth = combo_options(alpha, beta, smooth)
    wp, wn = _sigmoid_weights(logits.shape[1], logits, pos=beta, neg=1.0 - beta)
    # alpha WBCE - (1 - alpha) DSC = alpha WBCE + (1 - alpha) (1 - DSC) - (1 - alpha)
    fin = Finalize(
        DICE, smooth, smooth, 1e-7, lam_reg=1.0 - alpha, lam_pix=alpha,
        pix_mean=reduction == "mean", offset=alpha - 1.0,
    )  # fmt: skip
    return fused_loss(
        logits, target, "multilabel", ignore_index, scope, overlap_form(False, False),
        validate, fin, pixel=PIXEL_SIGMOID, w=wp, w2=wn, process_group=process_group,
    )  # fmt: skip
