"""Compound losses: weighted sums of a pixel-wise term and a region term.

Each returns a scalar; ``reduction`` ('mean' or 'sum') is passed to both terms (except
where a docstring says otherwise).
Class ``weight`` and ``ignore_index`` apply to both terms. The term weights
(``lambda_*``) must be finite and >= 0.

``process_group`` (torch.distributed, scope 'batch'): both terms run over the global
batch. The region sums, and the pixel term's sum and 'mean' divisor, are all-reduced, so
the loss equals the single-process loss on all ranks' images together and each rank's
gradient is its slice of that loss's gradient (under DDP, which averages gradients,
multiply the loss by the world size; see :func:`dice_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ._common import (
    check_choice,
    check_class_vector,
    check_masks,
    check_number,
    checks_flags,
    device_constant,
    not_ignored,
    reduce_pixels,
    valid_labels,
)
from .pixelwise import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    sigmoid_focal_loss,
    softmax_focal_loss,
    topk_cross_entropy,
)
from .region import (
    dice_loss,
    generalized_dice_loss,
    global_sums,
    loss_class_weight,
    region_class_weight,
    weight_like,
)

Weights = torch.Tensor | Sequence[float] | None


def _scalar_reduction(reduction: str) -> None:
    check_choice("reduction (compound losses return a scalar)", reduction, ("mean", "sum"))


def term_weights(**weights: object) -> tuple[float, ...]:
    """The compound loss's term weights (``lambda_ce=...``) as floats, each finite and
    >= 0 (or an error naming the bad one)."""
    return tuple(check_number(name, value) for name, value in weights.items())


def focal_background(
    mode: str, sigmoid_focal: bool, include_background: bool, C: int, like: torch.Tensor
) -> tuple[torch.Tensor | None, float]:
    """The focal term of a Dice + focal loss without the background (C > 1): class weights
    that drop class 0 (a cached device constant) and the factor ``C / (C - 1)`` that makes
    its 'mean' over the other ``C - 1`` elements of a pixel, as MONAI's ``DiceFocalLoss``
    does by cutting channel 0 before its sigmoid focal term; ``(None, 1.0)`` with the
    background. A softmax focal term has no such form (MONAI would renormalise the softmax
    over the remaining channels): ValueError."""
    if include_background or C == 1:
        return None, 1.0
    if mode == "multiclass" and not sigmoid_focal:
        raise ValueError(
            "include_background=False leaves class 0 out of a one-vs-rest focal term: "
            "pass sigmoid_focal=True with mode='multiclass' (a softmax focal term has no "
            "class to leave out)"
        )
    return device_constant([0.0] + [1.0] * (C - 1), like.dtype, like.device), C / (C - 1)


def combo_options(alpha: object, beta: object, smooth: object) -> tuple[float, float, float]:
    """Combo's ``alpha`` and ``beta`` (in [0, 1]) and ``smooth`` (finite, >= 0) as floats."""
    return (
        check_number("alpha", alpha, 0.0, 1.0),
        check_number("beta", beta, 0.0, 1.0),
        check_number("smooth", smooth),
    )


def _local(reduction: str, process_group: dist.ProcessGroup | None) -> str:
    """The pixel term's own reduction: its sum when it is made global afterwards."""
    return reduction if process_group is None else "sum"


def _global_pixel_term(
    term: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    labels: bool,
    ignore_index: float | None,
    reduction: str,
    scope: str,
    process_group: dist.ProcessGroup | None,
    weight: Weights = None,
    per_class: bool = False,
) -> torch.Tensor:
    """A pixel term given as its local sum, over the global batch: the sum and the 'mean'
    divisor (valid labels, or their class weights' sum, times C with ``per_class`` for a
    one-vs-rest term; valid mask entries) all-reduced."""
    if process_group is None:
        return term
    if labels:
        valid = not_ignored(target, ignore_index)
        w = check_class_vector("weight", weight, logits.shape[1], term)
        per_pixel = valid.to(term.dtype)
        if w is not None:
            per_pixel = per_pixel * w[valid_labels(target, valid)]
        divisor = per_pixel.sum() * (logits.shape[1] if per_class else 1)
    else:
        divisor = check_masks(logits, target, ignore_index)[1].sum().to(term.dtype)
    both = global_sums(torch.stack([term, divisor]), scope, process_group)
    return both[0] if reduction == "sum" else both[0] / both[1]


@checks_flags
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
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """``lambda_ce * cross_entropy + lambda_dice * dice_loss`` (multiclass, softmax).

    The CE term is :func:`cross_entropy` (weighted mean over valid pixels, label smoothing);
    the Dice term is :func:`dice_loss` with ``mode='multiclass'`` and the Dice options
    given here (see there for smooth_nr, smooth_dr, eps, squared, scope, absent,
    soft_label).
    ``include_background=False`` leaves class 0 out of the Dice term only, as MONAI's
    ``DiceCELoss`` and nnU-Net's ``do_bg=False`` do (ignored for one class).
    """
    _scalar_reduction(reduction)
    lambda_ce, lambda_dice = term_weights(lambda_ce=lambda_ce, lambda_dice=lambda_dice)
    dice_w = loss_class_weight(logits, weight, include_background)
    ce = cross_entropy(
        logits,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=_local(reduction, process_group),
        label_smoothing=label_smoothing,
    )
    ce = _global_pixel_term(
        ce, logits, target, True, ignore_index, reduction, scope, process_group, weight
    )
    dice = dice_loss(
        logits,
        target,
        "multiclass",
        smooth_nr,
        smooth_dr,
        eps,
        squared,
        scope=scope,
        absent=absent,
        ignore_index=ignore_index,
        weight=dice_w,
        reduction=reduction,
        soft_label=soft_label,
        process_group=process_group,
    )
    return lambda_ce * ce + lambda_dice * dice


@checks_flags
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
) -> torch.Tensor:
    """``lambda_ce * topk_cross_entropy + lambda_dice * dice_loss`` (multiclass, softmax),
    the shape of nnU-Net's ``DC_and_topk_loss``.

    The top-k term is :func:`topk_cross_entropy` (the ``k`` percent largest per-pixel
    cross-entropies of the batch; weights, label smoothing); the Dice term is
    :func:`dice_loss` with ``mode='multiclass'`` and the Dice options given here;
    ``include_background`` as for :func:`ce_dice_loss`. nnU-Net adds ``-Dice`` where this
    adds ``1 - Dice`` (the same gradient) and by default leaves the background out of its
    Dice term (``include_background=False`` here). No ``process_group``: each process
    picks its own top-k pixels, as nnU-Net's do.
    """
    _scalar_reduction(reduction)
    lambda_ce, lambda_dice = term_weights(lambda_ce=lambda_ce, lambda_dice=lambda_dice)
    dice_w = loss_class_weight(logits, weight, include_background)
    ce = topk_cross_entropy(logits, target, k, weight, ignore_index, label_smoothing, reduction)
    dice = dice_loss(
        logits,
        target,
        "multiclass",
        smooth_nr,
        smooth_dr,
        eps,
        squared,
        scope=scope,
        absent=absent,
        ignore_index=ignore_index,
        weight=dice_w,
        reduction=reduction,
    )
    return lambda_ce * ce + lambda_dice * dice


@checks_flags
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
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """``lambda_bce * BCE + lambda_dice * Dice`` on sigmoid channels (binary or multilabel).

    The BCE term is :func:`binary_cross_entropy_with_logits` (mean over valid elements,
    ``weight`` and ``pos_weight`` per class); the Dice term is :func:`dice_loss` with
    ``mode='multilabel'`` (which equals 'binary' for C = 1), class ``weight`` and
    ``soft_label`` (for soft masks; see :func:`dice_loss`).
    """
    _scalar_reduction(reduction)
    lambda_bce, lambda_dice = term_weights(lambda_bce=lambda_bce, lambda_dice=lambda_dice)
    bce = binary_cross_entropy_with_logits(
        logits,
        target,
        weight=weight,
        pos_weight=pos_weight,
        ignore_index=ignore_index,
        reduction=_local(reduction, process_group),
    )
    bce = _global_pixel_term(
        bce, logits, target, False, ignore_index, reduction, scope, process_group
    )
    dice = dice_loss(
        logits,
        target,
        "multilabel",
        smooth_nr,
        smooth_dr,
        eps,
        squared,
        scope=scope,
        absent=absent,
        ignore_index=ignore_index,
        weight=weight,
        reduction=reduction,
        soft_label=soft_label,
        process_group=process_group,
    )
    return lambda_bce * bce + lambda_dice * dice


def _focal_term(
    logits, target, mode, alpha, gamma, ignore_index, reduction, scope, group, sigmoid_focal,
    weight=None,
):  # fmt: skip
    """The focal term of a compound loss: softmax focal for 'multiclass' (one-vs-rest
    sigmoid focal with ``sigmoid_focal``), else sigmoid focal (its class ``weight``), over
    the global batch with a process group."""
    ovr = mode == "multiclass" and sigmoid_focal
    if mode == "multiclass" and not ovr:
        focal = softmax_focal_loss(
            logits,
            target,
            alpha=alpha,
            gamma=gamma,
            ignore_index=ignore_index,
            reduction=_local(reduction, group),
        )
    else:
        focal = sigmoid_focal_loss(
            logits,
            target,
            mode=mode,
            alpha=alpha,
            gamma=gamma,
            weight=weight,
            ignore_index=ignore_index,
            reduction=_local(reduction, group),
        )
    return _global_pixel_term(
        focal, logits, target, mode == "multiclass", ignore_index, reduction, scope, group,
        per_class=ovr,
    )  # fmt: skip


@checks_flags
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
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """``lambda_focal * focal + lambda_dice * Dice``.

    mode 'multiclass': :func:`softmax_focal_loss` (alpha None, scalar or per class) plus
    softmax Dice; with ``sigmoid_focal=True`` the focal term is
    :func:`sigmoid_focal_loss` one-vs-rest on the labels (``mode='multiclass'``, 'mean' over
    valid pixels times C), as MONAI's ``DiceFocalLoss(softmax=True, to_onehot_y=True)``
    computes it. 'binary' / 'multilabel': :func:`sigmoid_focal_loss` (alpha None, scalar
    or per class) plus sigmoid Dice (``sigmoid_focal`` changes nothing). ``weight`` goes to
    the Dice term.

    ``include_background=False`` (ignored for one class) leaves class 0 out of both terms,
    as MONAI's ``DiceFocalLoss(include_background=False)``: the Dice term as in
    :func:`ce_dice_loss`, the sigmoid focal term over the other C - 1 classes ('mean' over
    valid pixels times C - 1). With a softmax focal term it is a ValueError
    (:func:`focal_background`).
    """
    _scalar_reduction(reduction)
    lambda_focal, lambda_dice = term_weights(lambda_focal=lambda_focal, lambda_dice=lambda_dice)
    like = weight_like(logits)
    C = logits.shape[1]
    keep, scale = focal_background(mode, sigmoid_focal, include_background, C, like)
    focal = _focal_term(
        logits, target, mode, alpha, gamma, ignore_index, reduction, scope, process_group,
        sigmoid_focal, keep,
    )  # fmt: skip
    if reduction == "mean":
        focal = focal * scale
    dice = dice_loss(
        logits,
        target,
        mode,
        smooth_nr,
        smooth_dr,
        eps,
        scope=scope,
        absent=absent,
        ignore_index=ignore_index,
        weight=region_class_weight(weight, C, include_background, like),
        reduction=reduction,
        process_group=process_group,
    )
    return lambda_focal * focal + lambda_dice * dice


@checks_flags
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
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """``lambda_focal * focal + lambda_gdl * generalized Dice`` (MONAI's
    GeneralizedDiceFocalLoss): the focal term of :func:`focal_dice_loss` (``sigmoid_focal``
    and ``include_background`` as there; MONAI's multiclass form uses the sigmoid term)
    beside :func:`generalized_dice_loss` (``weight_type``, ``absent_weight``, smoothing,
    scope; without the background, class weight 0 for class 0).
    """
    _scalar_reduction(reduction)
    lambda_focal, lambda_gdl = term_weights(lambda_focal=lambda_focal, lambda_gdl=lambda_gdl)
    like = weight_like(logits)
    keep, scale = focal_background(mode, sigmoid_focal, include_background, logits.shape[1], like)
    focal = _focal_term(
        logits, target, mode, alpha, gamma, ignore_index, reduction, scope, process_group,
        sigmoid_focal, keep,
    )  # fmt: skip
    if reduction == "mean":
        focal = focal * scale
    gdl = generalized_dice_loss(
        logits,
        target,
        mode,
        weight_type,
        absent_weight,
        smooth_nr,
        smooth_dr,
        eps,
        scope=scope,
        ignore_index=ignore_index,
        weight=keep,
        reduction=reduction,
        process_group=process_group,
    )
    return lambda_focal * focal + lambda_gdl * gdl


def combo_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    ignore_index: float | None = None,
    scope: str = "batch",
    reduction: str = "mean",
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Combo loss (Taghanaki et al. 2019), binary or multilabel, in the paper's form::

        WBCE = mean over valid elements of -(beta t log p + (1 - beta)(1 - t) log(1 - p))
        L    = alpha * WBCE - (1 - alpha) * DSC

    where ``DSC = (2 I + smooth) / (P + T + smooth)`` is the soft Dice *coefficient*
    (class mean for multilabel), so the loss can be negative. ``reduction`` ('mean' or
    'sum') applies to the WBCE term; DSC is always the class mean. ``log p`` and
    ``log(1 - p)`` are log-sigmoids of the logits, not logs of clipped probabilities.
    (The authors' Keras code weighs the negative term by ``beta (1 - beta)``; this follows
    the paper.)
    """
    _scalar_reduction(reduction)
    alpha, beta, smooth = combo_options(alpha, beta, smooth)
    t, valid = check_masks(logits, target, ignore_index)
    x = logits.to(t.dtype)
    terms = beta * t * F.logsigmoid(x) + (1 - beta) * (1 - t) * F.logsigmoid(-x)
    wbce = reduce_pixels(
        -terms.masked_fill(~valid, 0.0), _local(reduction, process_group), valid.sum().to(x.dtype)
    )
    wbce = _global_pixel_term(
        wbce, logits, target, False, ignore_index, reduction, scope, process_group
    )
    dsc = 1 - dice_loss(
        logits,
        target,
        "multilabel",
        smooth,
        smooth,
        scope=scope,
        ignore_index=ignore_index,
        reduction="mean",
        process_group=process_group,
    )
    return alpha * wbce - (1 - alpha) * dsc


def combo_magnitude(logits: torch.Tensor, target: torch.Tensor, **options: object) -> torch.Tensor:
    """The size of Combo's two terms, ``alpha |WBCE| + (1 - alpha) |DSC|``: the scale an
    error of :func:`combo_loss` (same options) is judged against, as the loss, their
    difference, can be near 0 while the terms are not (the benchmark's loss gate). Each
    term is :func:`combo_loss` at ``alpha`` 1 or 0."""
    alpha = float(options.pop("alpha", 0.5))  # type: ignore[arg-type]
    wbce = combo_loss(logits, target, alpha=1.0, **options)  # type: ignore[arg-type]
    dsc = combo_loss(logits, target, alpha=0.0, **options)  # type: ignore[arg-type]
    return alpha * wbce.abs() + (1 - alpha) * dsc.abs()
