"""Region (overlap) losses: soft Dice, soft Jaccard, Tversky, focal Tversky, generalized Dice,
Matthews correlation (MCC).

All of them are functions of per-(unit, class) sums over pixels::

    I = sum p * g        P = sum p        T = sum g

where ``p`` is the softmax (multiclass) or sigmoid (binary/multilabel) probability and
``g`` the one-hot label or the (soft) mask; with ``squared=True`` P and T sum ``p**2``
and ``g**2`` instead (V-Net); with ``soft_label=True`` I sums ``min(p, g)`` instead; the
MCC also needs ``N``, the count of counted (not ignored) pixels. A *unit* is the whole
batch (``scope='batch'``) or one image (``scope='image'``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ._common import (
    P,
    R,
    acc_dtype,
    check_choice,
    check_class_vector,
    check_logits,
    check_number,
    checks_flags,
    class_mean,
    device_constant,
    is_number,
    region_inputs,
)

_OPTIONS = {  # the shared options, each documented where a loss has it
    "mode": """
      mode: 'multiclass' (softmax over C, integer labels ``[B, *S]``, or class
        probabilities of the logits' shape, one-hot or soft, without ignore_index),
        'binary' (sigmoid, C = 1) or 'multilabel' (sigmoid per channel, masks
        ``[B, C, *S]``, soft allowed).""",
    "scope": """
      scope: 'batch' sums over batch and space (one value per class); 'image' sums over
        space only (one value per image and class).""",
    "smooth_nr": """
      smooth_nr / smooth_dr: added to the numerator / denominator. The denominator is then
        clamped below at ``eps`` so that an empty class with no smoothing gives 0, not NaN.
        All three (and Tversky's alpha and beta) must be finite and >= 0.""",
    "absent": """
      absent: policy for a (unit, class) whose target is empty (T = 0):
        'include' keeps its formula value in the mean (for the ratio losses with zero
        smoothing, a loss of 1 for every absent class); 'exclude' drops it from the mean
        (MONAI-style 'present only'); 'zero' sets its loss to 0 but still counts it (smp).""",
    "ignore_index": """
      ignore_index: target value whose pixels are removed from both p and g (so they
        count in none of the sums, the MCC's N included).""",
    "weight": """
      weight: per-class weights w_c (weight 0 drops a class, e.g. the background).""",
    "include_background": """
      include_background: False leaves class 0 out (MONAI's ``include_background=False``;
        ignored for one class): its weight is 0, so it is in no mean, and 'none' gives it
        0 (MONAI's output has no entry for it).""",
    "from_logits": """
      from_logits: False reads the input as the probabilities ``p`` themselves (smp's
        ``from_logits=False``, MONAI's default of no activation): no softmax or sigmoid,
        and the gradient is ``dL/dp``. Every counted entry must lie in [0, 1]: the
        reference raises ``ValueError`` otherwise (the kernels with ``validate=True``;
        without it such an entry makes the loss NaN). An ignored pixel's (entry's) value
        is not read. A multiclass input is not renormalised over the classes.""",
    "process_group": """
      process_group: a torch.distributed group (scope 'batch' only): the per-class sums
        are all-reduced over it before the formula, so each rank computes the loss of the
        whole global batch; the gradient each rank gets for its logits is its slice of the
        single-process gradient (DDP averages gradients over ranks: scale the loss by the
        world size to train as one process would on the whole batch).""",
    "soft_label": """
      soft_label: ``I = sum min(p, g)`` instead of ``sum p g`` (the Dice semimetric form of
        Wang and Blaschko 2023; smp's losses always, MONAI's with ``soft_label=True``:
        ``(P + T - sum |p - g|) / 2``). With a soft target (masks, class probabilities)
        the Dice loss is then 0 exactly when ``p = g`` everywhere (the product form is
        not 0 there); with hard targets the two forms are equal.
        ``dI/dp`` is 1 where ``p < g``, 0 where ``p > g`` and 1/2 where they are equal.
        With ``squared=True`` (which is already the L2 form) it changes nothing.""",
    "reduction": """
      reduction: 'mean' is the weighted class mean ``sum w_c l_c / sum w_c`` over the
        included classes of a unit, then the mean over units that include any class
        (0 with zero gradient if none does); 'sum' is ``sum w_c l_c`` over all entries;
        'none' returns ``w_c l_c`` per entry (``[C]`` for scope 'batch', ``[B, C]`` for
        'image'; excluded entries are 0).""",
}


def _with_options(fn: Callable[P, R]) -> Callable[P, R]:
    """Append the shared options ``fn`` takes to its docstring."""
    params = inspect.signature(fn).parameters
    text = "".join(doc for name, doc in _OPTIONS.items() if name in params)
    fn.__doc__ = (fn.__doc__ or "") + "\n    Shared options:" + text + "\n"
    return fn


class RegionStats(NamedTuple):
    """Per-(unit, class) sums, each ``[C]`` (batch scope) or ``[B, C]`` (image scope);
    ``present`` is ``T > 0`` (the unit's target holds the class)."""

    inter: torch.Tensor
    psum: torch.Tensor
    tsum: torch.Tensor
    present: torch.Tensor


@checks_flags
def region_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: float | None,
    scope: str,
    squared: bool = False,
    process_group: dist.ProcessGroup | None = None,
    soft_label: bool = False,
    from_logits: bool = True,
) -> RegionStats:
    """``(I, P, T, present)`` per unit and class: ``[C]`` (batch scope) or ``[B, C]``
    (``soft_label``: I sums ``min(p, g)``; ``from_logits``: see :func:`dice_loss`)."""
    sums = _unit_sums(
        logits, target, mode, ignore_index, scope, squared, process_group,
        soft_label=soft_label, from_logits=from_logits,
    )  # fmt: skip
    return stats_from_sums(sums)


def _unit_sums(
    logits, target, mode, ignore_index, scope, squared, process_group, count=False,
    soft_label=False, from_logits=True,
):  # fmt: skip
    """Stacked ``(I, P, T)`` per unit and class (then ``N``, the counted pixels, with
    ``count``), all-reduced over ``process_group``."""
    check_choice("scope", scope, ("batch", "image"))
    p, g, valid = region_inputs(logits, target, mode, ignore_index, from_logits)
    dims = (2,) if scope == "image" else (0, 2)
    overlap = torch.minimum(p, g) if soft_label and not squared else p * g
    sums = [overlap.sum(dims), (p * p if squared else p).sum(dims)]
    sums.append((g * g if squared else g).sum(dims))
    if count:
        sums.append(valid.to(p.dtype).sum(dims))
    return global_sums(torch.stack(sums), scope, process_group)


def global_sums(
    sums: torch.Tensor, scope: str, process_group: dist.ProcessGroup | None
) -> torch.Tensor:
    """Batch sums all-reduced over ``process_group`` (unchanged without one). The value is
    the global sum; its gradient flows to the local part only."""
    if process_group is None:
        return sums
    if scope != "batch":
        raise ValueError("process_group needs scope='batch' (the sums run over the batch)")
    total = sums.detach().clone()
    dist.all_reduce(total, group=process_group)
    return sums + (total - sums.detach())


def stats_from_sums(sums: torch.Tensor) -> RegionStats:
    """``RegionStats`` from ``[3, ..., C]`` stacked sums ``(I, P, T)``."""
    inter, psum, tsum = sums.unbind(0)
    return RegionStats(inter, psum, tsum, tsum > 0)


def weight_like(logits: torch.Tensor) -> torch.Tensor:
    """An empty tensor of the dtype and device the class weights take for ``logits``."""
    check_logits(logits)
    return logits.new_empty(0, dtype=acc_dtype(logits))


def region_class_weight(
    weight: torch.Tensor | Sequence[float] | None, C: int, include_background: bool,
    like: torch.Tensor, check_values: bool | None = None,
) -> torch.Tensor | None:  # fmt: skip
    """Class weights of a region term: ``weight``, times 0 for class 0 when
    ``include_background`` is False and C > 1 (as MONAI, which ignores the flag for one
    channel; the mask is a cached device constant). Checked first
    (:func:`check_class_vector`, a tensor's values read as :func:`reads_values` says), in
    ``like``'s dtype and device."""
    w = check_class_vector("weight", weight, C, like, check_values)
    if include_background or C == 1:
        return w
    keep = device_constant([0.0] + [1.0] * (C - 1), like.dtype, like.device)
    return keep if w is None else w * keep


def loss_class_weight(
    logits: torch.Tensor, weight: torch.Tensor | Sequence[float] | None, include_background: bool
) -> torch.Tensor | None:
    """:func:`region_class_weight` for ``logits`` (checked before their shape is read)."""
    like = weight_like(logits)
    return region_class_weight(weight, logits.shape[1], include_background, like)


def _class_reduce(
    loss: torch.Tensor,
    present: torch.Tensor,
    absent: str,
    weight: torch.Tensor | Sequence[float] | None,
    reduction: str,
    check_values: bool | None = None,
) -> torch.Tensor:
    check_choice("absent", absent, ("include", "exclude", "zero"))
    w = check_class_vector("weight", weight, loss.shape[-1], loss, check_values)
    w = torch.ones_like(loss) if w is None else w.expand_as(loss)
    if absent == "zero":
        loss = loss * present
    elif absent == "exclude":
        w = w * present
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    if reduction == "none":
        return w * loss
    if reduction == "sum":
        return (w * loss).sum()
    per_unit, has = class_mean(loss.reshape(-1, loss.shape[-1]), w.reshape(-1, w.shape[-1]))
    return (per_unit * has).sum() / has.sum().clamp_min(1)


def check_smoothing(smooth_nr: object, smooth_dr: object, eps: object) -> tuple[float, ...]:
    """``(smooth_nr, smooth_dr, eps)`` as floats, each finite and >= 0 (or an error naming
    the bad one)."""
    return tuple(
        check_number(name, value)
        for name, value in (("smooth_nr", smooth_nr), ("smooth_dr", smooth_dr), ("eps", eps))
    )


def _ratio(num: torch.Tensor, den: torch.Tensor, eps: float) -> torch.Tensor:
    return num / den.clamp_min(eps)


def _safe_pow(base: torch.Tensor, exponent: torch.Tensor | float) -> torch.Tensor:
    """``base ** exponent`` for base >= 0 with a finite gradient at base = 0 (where it is 0);
    a NaN base stays NaN."""
    pos = base > 0
    power = torch.exp(exponent * torch.log(torch.where(pos, base, 1.0)))
    return torch.where(pos, power, base * 0)


# MCC: false positives and negatives up to this share of the counted pixels are a perfect
# prediction's (see :func:`mcc_loss`)
PERFECT_SHARE = 2.0**-40

LOSS_PLAIN, LOSS_LOG, LOSS_LOG_COSH = 0, 1, 2  # a class's loss: 1 - D, -log D, log cosh(1 - D)


def class_loss_form(log_loss: bool, log_cosh: bool = False) -> int:
    """Which ``LOSS_*`` form of a class's loss the two flags ask for (not both)."""
    if log_loss and log_cosh:
        raise ValueError("log_loss and log_cosh are two forms of the class loss: choose one")
    return LOSS_LOG_COSH if log_cosh else LOSS_LOG if log_loss else LOSS_PLAIN


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    """``log(cosh(x))`` as ``|x| + log(1 + exp(-2|x|)) - log 2``: ``cosh`` overflows past
    ``|x| = 710`` (a class loss ``1 - D`` reaches that when ``smooth_nr`` exceeds
    ``smooth_dr`` on an empty class). Its gradient is ``tanh(x)``."""
    a = x.abs()
    return a + F.softplus(-2 * a) - math.log(2.0)


def dice_from_stats(
    stats: RegionStats,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    log_loss: bool = False,
    absent: str = "include",
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    check_values: bool | None = None,
    log_cosh: bool = False,
) -> torch.Tensor:
    """The Dice loss from region sums (see :func:`dice_loss`)."""
    smooth_nr, smooth_dr, eps = check_smoothing(smooth_nr, smooth_dr, eps)
    form = class_loss_form(log_loss, log_cosh)
    d = _ratio(2 * stats.inter + smooth_nr, stats.psum + stats.tsum + smooth_dr, eps)
    loss = -torch.log(d.clamp_min(eps)) if form == LOSS_LOG else 1 - d
    if form == LOSS_LOG_COSH:
        loss = _log_cosh(loss)
    return _class_reduce(loss, stats.present, absent, weight, reduction, check_values)


def jaccard_from_stats(
    stats: RegionStats,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    log_loss: bool = False,
    absent: str = "include",
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    check_values: bool | None = None,
) -> torch.Tensor:
    """The Jaccard loss from region sums (see :func:`jaccard_loss`)."""
    smooth_nr, smooth_dr, eps = check_smoothing(smooth_nr, smooth_dr, eps)
    inter = stats.inter
    j = _ratio(inter + smooth_nr, stats.psum + stats.tsum - inter + smooth_dr, eps)
    loss = -torch.log(j.clamp_min(eps)) if log_loss else 1 - j
    return _class_reduce(loss, stats.present, absent, weight, reduction, check_values)


def _tversky_index(stats: RegionStats, alpha, beta, smooth_nr, smooth_dr, eps):
    alpha, beta = check_number("alpha", alpha), check_number("beta", beta)
    smooth_nr, smooth_dr, eps = check_smoothing(smooth_nr, smooth_dr, eps)
    inter = stats.inter
    fp, fn = stats.psum - inter, stats.tsum - inter
    return _ratio(inter + smooth_nr, inter + alpha * fp + beta * fn + smooth_dr, eps)


def tversky_from_stats(
    stats: RegionStats,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    absent: str = "include",
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    check_values: bool | None = None,
) -> torch.Tensor:
    """The Tversky loss from region sums (see :func:`tversky_loss`)."""
    ti = _tversky_index(stats, alpha, beta, smooth_nr, smooth_dr, eps)
    return _class_reduce(1 - ti, stats.present, absent, weight, reduction, check_values)


def check_gamma_after_mean(gamma: object, gamma_after_mean: bool, reduction: str) -> None:
    """``gamma_after_mean=True`` powers one class mean: it needs a scalar gamma and 'mean'."""
    if not gamma_after_mean:
        return
    if not is_number(gamma):
        raise ValueError("gamma_after_mean=True needs a scalar gamma")
    if reduction != "mean":
        raise ValueError(f"gamma_after_mean=True needs reduction='mean', got {reduction!r}")


def focal_tversky_from_stats(
    stats: RegionStats,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float | torch.Tensor | Sequence[float] = 0.75,
    gamma_after_mean: bool = False,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    absent: str = "include",
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    check_values: bool | None = None,
) -> torch.Tensor:
    """The focal Tversky loss from region sums (see :func:`focal_tversky_loss`)."""
    base = 1 - _tversky_index(stats, alpha, beta, smooth_nr, smooth_dr, eps)
    base = base.clamp_min(0)
    present = stats.present
    check_gamma_after_mean(gamma, gamma_after_mean, reduction)
    if gamma_after_mean:
        mean = _class_reduce(base, present, absent, weight, "mean", check_values)
        return _safe_pow(mean, check_number("gamma", gamma))
    g: float | torch.Tensor
    if is_number(gamma):
        g = check_number("gamma", gamma)
    else:
        g = check_class_vector("gamma", gamma, base.shape[-1], base, check_values)
    return _class_reduce(_safe_pow(base, g), present, absent, weight, reduction, check_values)


def generalized_dice_from_stats(
    stats: RegionStats,
    weight_type: str = "square",
    absent_weight: str = "max",
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    check_values: bool | None = None,
) -> torch.Tensor:
    """The generalized Dice loss from region sums (see :func:`generalized_dice_loss`)."""
    check_choice("weight_type", weight_type, ("square", "simple", "uniform"))
    check_choice("absent_weight", absent_weight, ("max", "zero"))
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    smooth_nr, smooth_dr, eps = check_smoothing(smooth_nr, smooth_dr, eps)
    inter, psum, tsum, present = (t.reshape(-1, t.shape[-1]) for t in stats)
    safe_t = torch.where(present, tsum, torch.ones_like(tsum))
    w = {"square": 1 / safe_t**2, "simple": 1 / safe_t, "uniform": torch.ones_like(tsum)}[
        weight_type
    ]
    w = torch.where(present, w, torch.zeros_like(w))
    cw = check_class_vector("weight", weight, w.shape[-1], w, check_values)
    if absent_weight == "max":  # over the classes that take part (class weight not 0)
        taking_part = w if cw is None else torch.where(cw != 0, w, torch.zeros_like(w))
        w = torch.where(present, w, taking_part.amax(dim=1, keepdim=True))
    if cw is not None:
        w = w * cw
    num = 2 * (w * inter).sum(1) + smooth_nr
    den = (w * (psum + tsum)).sum(1) + smooth_dr
    loss = 1 - _ratio(num, den, eps)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


@checks_flags
@_with_options
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
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    soft_label: bool = False,
    log_cosh: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Soft Dice loss per (unit, class)::

    D = (2 I + smooth_nr) / max(P + T + smooth_dr, eps)
    l = 1 - D               (default)
    l = -log(max(D, eps))   (log_loss=True)
    l = log(cosh(1 - D))    (log_cosh=True: the log-cosh Dice of Jadon 2020, whose
                             gradient is tanh(1 - D) times Dice's: at most 0.762 times
                             it where D lies in [0, 1])
    """
    weight = loss_class_weight(logits, weight, include_background)
    stats = region_stats(
        logits, target, mode, ignore_index, scope, squared, process_group, soft_label, from_logits
    )
    return dice_from_stats(
        stats, smooth_nr, smooth_dr, eps, log_loss, absent, weight, reduction, log_cosh=log_cosh
    )


@checks_flags
@_with_options
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
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    soft_label: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Soft Jaccard (IoU) loss per (unit, class)::

    J = (I + smooth_nr) / max(P + T - I + smooth_dr, eps)
    l = 1 - J  (or -log(max(J, eps)) with log_loss=True)
    """
    weight = loss_class_weight(logits, weight, include_background)
    stats = region_stats(
        logits, target, mode, ignore_index, scope, squared, process_group, soft_label, from_logits
    )
    return jaccard_from_stats(stats, smooth_nr, smooth_dr, eps, log_loss, absent, weight, reduction)


@checks_flags
@_with_options
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
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    soft_label: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Tversky loss per (unit, class), ``alpha`` weighting false positives, ``beta`` false
    negatives (Salehi et al.; alpha = beta = 0.5 is Dice, alpha = beta = 1 is Jaccard)::

        FP = P - I,  FN = T - I
        TI = (I + smooth_nr) / max(I + alpha FP + beta FN + smooth_dr, eps)
        l = 1 - TI
    """
    weight = loss_class_weight(logits, weight, include_background)
    stats = region_stats(
        logits, target, mode, ignore_index, scope, False, process_group, soft_label, from_logits
    )
    return tversky_from_stats(
        stats, alpha, beta, smooth_nr, smooth_dr, eps, absent, weight, reduction
    )


@checks_flags
@_with_options
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
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    soft_label: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Focal Tversky loss (Abraham & Khan): the Tversky loss raised to ``gamma``::

        l_c = (1 - TI_c) ** gamma_c          (gamma_after_mean=False; gamma scalar or [C])
        L   = (mean_c (1 - TI_c)) ** gamma   (gamma_after_mean=True, smp/SegLossOdyssey;
                                              scalar gamma, reduction 'mean' only)

    ``gamma`` is the exponent itself (0.75 in the author code, i.e. 1/gamma of the paper).
    The power has a zero (not infinite) gradient where ``1 - TI = 0``.
    """
    weight = loss_class_weight(logits, weight, include_background)
    stats = region_stats(
        logits, target, mode, ignore_index, scope, False, process_group, soft_label, from_logits
    )
    return focal_tversky_from_stats(
        stats,
        alpha,
        beta,
        gamma,
        gamma_after_mean,
        smooth_nr,
        smooth_dr,
        eps,
        absent,
        weight,
        reduction,
    )


@checks_flags
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
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    soft_label: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Generalized Dice loss (Sudre et al. 2017), one value per unit::

        w_c = 1 / T_c**2 ('square'), 1 / T_c ('simple') or 1 ('uniform'), times weight_c
        GDL = 1 - (2 sum_c w_c I_c + smooth_nr) / max(sum_c w_c (P_c + T_c) + smooth_dr, eps)

    The class weights come from the target only (no gradient through them).

    absent_weight: what ``w_c`` is for a class with T_c = 0 in the unit, where
      ``1/T_c`` is infinite: 'max' uses the largest finite weight of that unit among the
      classes whose ``weight`` is not 0 (MONAI; so ``weight=[0, 1, ...]`` is MONAI's
      ``include_background=False``),
      'zero' drops the class. A unit with no present class then has loss
      ``1 - smooth_nr / max(smooth_dr, eps)``.
    scope: 'batch' (one unit: the batch) or 'image' (one unit per image).
    mode, ignore_index, soft_label, include_background, from_logits, process_group: as
      for :func:`dice_loss`.
    reduction: over units: 'mean', 'sum' or 'none' (``[1]`` or ``[B]``).
    """
    weight = loss_class_weight(logits, weight, include_background)
    stats = region_stats(
        logits, target, mode, ignore_index, scope, False, process_group, soft_label, from_logits
    )
    return generalized_dice_from_stats(
        stats, weight_type, absent_weight, smooth_nr, smooth_dr, eps, weight, reduction
    )


def mcc_from_stats(
    stats: RegionStats,
    count: torch.Tensor,
    eps: float = 1e-5,
    absent: str = "include",
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    check_values: bool | None = None,
) -> torch.Tensor:
    """The MCC loss from region sums and the counted pixels ``count`` (see :func:`mcc_loss`)."""
    eps = check_number("eps", eps)
    inter, psum, tsum = stats.inter, stats.psum, stats.tsum
    tp, fp, fn = inter + eps, (psum - inter) + eps, (tsum - inter) + eps
    tn = (count - tsum) - (psum - inter) + eps
    ab, cd = (tp + fp) * (tp + fn), (tn + fp) * (tn + fn)
    near_zero = count * PERFECT_SHARE
    perfect = (psum - inter <= near_zero) & (tsum - inter <= near_zero)
    zero = (ab <= 0) | (cd <= 0) | perfect
    den = torch.sqrt(torch.where(zero, 1.0, ab)) * torch.sqrt(torch.where(zero, 1.0, cd))
    mcc = torch.where(zero, perfect.to(den.dtype), (tp * tn - fp * fn) / den)
    return _class_reduce(1 - mcc, stats.present, absent, weight, reduction, check_values)


@checks_flags
@_with_options
def mcc_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    eps: float = 1e-5,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    include_background: bool = True,
    from_logits: bool = True,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Matthews correlation coefficient loss per (unit, class) (Abhishek and Hamarneh
    2021; smp's ``MCCLoss``), from soft counts of the class against the rest::

        TP = I + eps,  FP = P - I + eps,  FN = T - I + eps,  TN = N - P - T + I + eps
        MCC = (TP TN - FP FN) / sqrt((TP + FP) (TP + FN) (TN + FP) (TN + FN))
        l = 1 - MCC

    ``N`` counts the unit's pixels that are not ignored (per channel in multilabel
    mode). ``eps`` (finite, >= 0) is added to each of the four counts, as smp does. A
    perfect prediction has MCC 1, as in MONAI: one whose soft false positives ``P - I``
    and false negatives ``T - I`` each come to at most ``N * PERFECT_SHARE`` (2^-40, about
    9e-13 a pixel: logits some 28 apart), not only exactly 0, so that float32 and float64
    draw the line at the same place (a float32 probability below 1.2e-38 is 0 on a GPU,
    whose exp flushes it, and in float64 ``T - I`` of a class filling the unit rounds to
    0 from margins of about 37; the loss of an absent or a filling class jumps there, from
    near 1, or 0.5 with ``eps > 0``, to 0). Otherwise MCC is 0 where the denominator is 0
    (possible only with ``eps=0``: a class predicted or present nowhere or everywhere);
    both with a zero gradient. ``absent`` can drop absent classes.

    Peers: smp's ``MCCLoss(eps)`` on ``sigmoid(logits)`` is ``mode='binary',
    scope='batch'`` (but for a perfect prediction, where smp's loss is about
    ``eps (1/TP + 1/TN)``, 0.5 for an absent class); MONAI's ``MCCLoss(sigmoid=True)`` is
    ``mode='multilabel', scope='image', eps=0`` (``batch=True``: scope 'batch'), up to its
    ``smooth_dr=1e-5`` under the square root.
    """
    weight = loss_class_weight(logits, weight, include_background)
    sums = _unit_sums(
        logits, target, mode, ignore_index, scope, False, process_group, True,
        from_logits=from_logits,
    )  # fmt: skip
    return mcc_from_stats(stats_from_sums(sums[:3]), sums[3], eps, absent, weight, reduction)
