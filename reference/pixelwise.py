"""Pixel-wise losses: cross-entropy, binary cross-entropy, focal (sigmoid and softmax).

Every loss here is a sum of independent per-pixel (or per-element) terms, computed in
log space (``log_softmax``, ``logsigmoid``) so that confident predictions never produce
``log(0)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._common import (
    _is_int,
    acc_dtype,
    check_choice,
    check_class_vector,
    check_ignore_index,
    check_labels,
    check_masks,
    check_mode,
    check_no_ignore,
    check_number,
    checks_flags,
    holds_probabilities,
    is_number,
    reduce_pixels,
    valid_labels,
)


def sigmoid_focal_options(
    gamma: float,
    alpha: float | Sequence[float] | torch.Tensor | None,
    C: int,
    like: torch.Tensor,
    check_values: bool | None = None,
) -> tuple[float, float | torch.Tensor | None]:
    """The sigmoid focal loss's ``gamma`` (finite, >= 0) and ``alpha``: None, a float in
    [0, 1], or a per-class ``[C]`` tensor of ``like``'s dtype and device with entries in
    [0, 1] (:func:`check_class_vector`; a tensor's values read as :func:`reads_values`
    says); otherwise an error naming the bad one."""
    gamma = check_number("gamma", gamma)
    if alpha is None or is_number(alpha):
        return gamma, check_number("alpha", alpha, 0.0, 1.0, none_ok=True)
    return gamma, check_class_vector("alpha", alpha, C, like, check_values, high=1.0)


@checks_flags
def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    avg_non_ignore: bool = True,
) -> torch.Tensor:
    """Pixel-wise multiclass cross-entropy, the semantics of ``F.cross_entropy``.

    For a valid pixel i with label y (``log p = log_softmax(logits, dim=1)``)::

        l_i = (1 - eps) * w_y * (-log p_y) + (eps / C) * sum_c w_c * (-log p_c)

    with ``eps = label_smoothing`` and ``w = weight`` (all ones when None). Pixels whose
    label is ``ignore_index`` give 0 (None: no pixel is ignored; so in every loss here).

    reduction:
      - 'mean': ``sum_i l_i / sum_{i valid} w_{y_i}`` (exactly ``F.cross_entropy``; NaN
        when every pixel is ignored, as in PyTorch). With ``avg_non_ignore=False`` the
        divisor is the number of pixels *including* ignored ones (mmseg's default).
      - 'sum': ``sum_i l_i``;  'none': ``l`` with shape ``[B, *spatial]``.

    A floating target of the logits' shape holds class probabilities, as in
    ``F.cross_entropy`` (a bool one, a one-hot map, is read as 0 and 1, where torch
    refuses it): see :func:`cross_entropy_probs` (``avg_non_ignore`` does not apply
    to it, and ``ignore_index`` must be None or the default -100: ValueError otherwise, as
    torch refuses it too; there are no labels to ignore).
    """
    if is_probs(logits, target):
        check_probs_ignore(target, ignore_index)
        return cross_entropy_probs(logits, target, weight, reduction, label_smoothing)
    valid = check_labels(logits, target, ignore_index)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    C = logits.shape[1]
    logp = F.log_softmax(logits.to(acc_dtype(logits)), dim=1)
    w = check_class_vector("weight", weight, C, logp)
    labels = target.long()
    # 'mean' and 'sum' of the NLL term go through F.nll_loss so that float64 results are
    # bit-identical to F.cross_entropy (same summation order).
    inner = reduction if avg_non_ignore else "none"
    # None ignores nothing: check_labels has refused any label -100 then
    ignore = -100 if ignore_index is None else ignore_index
    nll = F.nll_loss(logp, labels, weight=w, ignore_index=ignore, reduction=inner)
    if label_smoothing > 0:
        w_c = w.view(1, C, *([1] * (logp.dim() - 2))) if w is not None else 1.0
        smooth = -(logp * w_c).sum(1).masked_fill(~valid, 0.0)
        if inner == "mean":
            # the divisor summed as PyTorch sums it: over the valid pixels' weights only
            den = w.gather(0, labels.masked_select(valid)).sum() if w is not None else valid.sum()
            smooth = smooth.sum() / den
        elif inner == "sum":
            smooth = smooth.sum()
        nll = (1 - label_smoothing) * nll + smooth * (label_smoothing / C)
    if avg_non_ignore or reduction == "none":
        return nll
    return reduce_pixels(nll, reduction, torch.tensor(float(nll.numel()), dtype=nll.dtype))


def check_min_kept(min_kept: object) -> int:
    """``min_kept`` as an int >= 0 (not a bool), or an error naming it."""
    if not _is_int(min_kept):
        raise TypeError(f"min_kept must be an int, got {min_kept!r}")
    if min_kept < 0:
        raise ValueError(f"min_kept must be >= 0, got {min_kept}")
    return int(min_kept)


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int = 100000,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (online hard example mining), the semantics
    of mmsegmentation's ``OhemCrossEntropy`` (from PIDNet).

    With ``p_i`` the softmax probability of pixel i's label, over the n valid pixels (those
    whose label is not ``ignore_index``), sorted ascending into ``q``::

        t = max(q[min(min_kept, n - 1)], thresh),   kept = {valid i : p_i < t}
        l_i = w_{y_i} * (-log p_i)  for kept pixels, 0 otherwise

    so at least ``min_kept`` pixels (when there are that many; ties at ``t`` excepted)
    and every pixel less sure than ``thresh`` are kept. ``w = weight`` (ones when None).
    The selection carries no gradient. A pixel whose ``p`` is NaN (a label outside
    ``[0, C)``, an infinite logit) is kept, so the loss is NaN rather than the pixel
    silently dropped (mmseg drops it).

    reduction: 'mean': ``sum_i l_i / |kept|`` (the weights are not the divisor, as in
    mmseg; NaN when nothing is kept, e.g. every pixel ignored); 'sum'; 'none': ``l``
    with shape ``[B, *spatial]``.
    """
    valid = check_labels(logits, target, ignore_index)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    thresh = check_number("thresh", thresh, 0.0, 1.0)
    min_kept = check_min_kept(min_kept)
    logp = F.log_softmax(logits.to(acc_dtype(logits)), dim=1)
    w = check_class_vector("weight", weight, logits.shape[1], logp)
    labels = valid_labels(target, valid).unsqueeze(1)
    nll = -logp.gather(1, labels).squeeze(1)
    if w is not None:
        nll = nll * w[labels.squeeze(1)]
    p = logp.detach().gather(1, labels).squeeze(1).exp()
    q = p[valid].sort().values
    t = max(float(q[min(min_kept, q.numel() - 1)]), thresh) if q.numel() else thresh
    kept = valid & ~(p >= t)  # p < t, and a NaN p is kept: the loss is then NaN
    loss = nll.masked_fill(~kept, 0.0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / kept.sum()


def recall_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Recall loss (Tian et al., 2021): cross-entropy with each class weighted by how much of
    it the batch's own predictions miss.

    From the arg-max prediction ``q_i`` (the first largest logit) over the valid pixels
    (label not ``ignore_index``) of the whole batch, per class c::

        G_c = #{i : y_i = c},   F_c = #{i : y_i = c, q_i != c},   w_c = F_c / G_c

    (``1 - recall_c``; 0 for a class no valid pixel has). The weights carry no gradient.
    A valid pixel gives ``l_i = w_{y_i} * (-log p_{y_i})``, an ignored one 0.

    reduction: 'mean': ``sum_i l_i / #valid`` (NaN when every pixel is ignored; the
    authors' code divides by every pixel, ignored ones included); 'sum'; 'none': ``l``
    with shape ``[B, *spatial]``.
    """
    valid = check_labels(logits, target, ignore_index)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    logp = F.log_softmax(logits.to(acc_dtype(logits)), dim=1)
    labels = valid_labels(target, valid)
    hit = valid & (logits.detach().argmax(1) == labels)
    counts = torch.zeros(2, logits.shape[1], dtype=logp.dtype, device=logp.device)
    counts[0].scatter_add_(0, labels.flatten(), valid.flatten().to(logp.dtype))
    counts[1].scatter_add_(0, labels.flatten(), hit.flatten().to(logp.dtype))
    gt, tp = counts
    w = torch.where(gt > 0, (gt - tp) / gt.clamp_min(1), 0.0)
    nll = -logp.gather(1, labels.unsqueeze(1)).squeeze(1)
    loss = (w[labels] * nll).masked_fill(~valid, 0.0)
    return reduce_pixels(loss, reduction, valid.sum().to(loss.dtype))


def topk_count(N: int, k: object) -> int:
    """How many of ``N`` pixels :func:`topk_cross_entropy` keeps: ``int(N * k / 100)`` (as
    nnU-Net counts), at least 1. ``k`` is a percentage in (0, 100], else an error."""
    if is_number(k) and not isinstance(k, bool) and not 0 < k <= 100:  # NaN too
        raise ValueError(f"k must be in (0, 100], got {k}")
    k = check_number("k", k, 0.0, 100.0)
    return max(1, int(N * k / 100))


def topk_share(losses: torch.Tensor, n: int) -> torch.Tensor:
    """Each pixel's share of the ``n`` largest ``losses`` (no gradient): 1 above the n-th
    largest value ``t``, ``(n - #above) / #tied`` for the values equal to ``t``, 0 below;
    a NaN ranks with +inf, above every finite value."""
    key = losses.detach().nan_to_num(nan=math.inf, posinf=math.inf)
    t = key.flatten().topk(n).values[-1]
    above, tied = key > t, key == t
    left = (n - above.sum()).to(key.dtype)  # int / int would divide in float32
    return above.to(key.dtype) + tied * (left / tied.sum())


def topk_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    k: float = 10.0,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy over the ``k`` percent largest per-pixel losses, the semantics of
    nnU-Net's ``TopKLoss`` (also SegLossOdyssey's).

    ``l`` is :func:`cross_entropy` with ``reduction='none'`` (``weight`` and
    ``label_smoothing`` as there; an ignored pixel's loss is 0). Over all N pixels of the
    batch, ignored ones included, ``n = max(1, int(N * k / 100))`` pixels with the largest
    ``l`` are kept, each with share ``s_i = 1``. Pixels tied at the n-th largest value
    share what is left equally (:func:`topk_share`): the loss is the same whichever of
    them a sort would keep, and the gradient is the mean over those choices (a
    deterministic subgradient; nnU-Net's ``torch.topk`` keeps an arbitrary subset).
    Where fewer than n valid pixels have a positive loss, ignored pixels fill the top n
    with zeros. The selection carries no gradient.

    reduction: 'mean': ``sum_i s_i l_i / n`` (the divisor is n, not the weights);
    'sum': ``sum_i s_i l_i``; 'none': ``s * l`` with shape ``[B, *spatial]``.
    """
    check_labels(logits, target, ignore_index)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    n = topk_count(target.numel(), k)
    losses = cross_entropy(logits, target, weight, ignore_index, "none", label_smoothing)
    loss = losses * topk_share(losses, n)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / n


def check_probs_ignore(target: torch.Tensor, ignore_index: object) -> None:
    """``cross_entropy``'s ``ignore_index`` beside a class-probability ``target``: None or
    the default -100 (unset), as ``F.cross_entropy`` takes; another value is refused."""
    check_ignore_index(ignore_index, labels=True)
    check_no_ignore(target, None if ignore_index == -100 else ignore_index)


def is_probs(logits: object, target: object) -> bool:
    """Whether ``cross_entropy`` reads ``target`` as class probabilities: a floating (or
    bool: a one-hot map) tensor with the logits' number of dims (labels have one fewer),
    as the multiclass region losses read one."""
    return (
        isinstance(logits, torch.Tensor)
        and holds_probabilities(target)
        and target.dim() == logits.dim()
    )


def cross_entropy_probs(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy against class probabilities ``target [B, C, *spatial]`` (soft labels:
    mixup, distillation), the semantics of ``F.cross_entropy`` with a probability target.

    For pixel i (``log p = log_softmax(logits, dim=1)``)::

        l_i = -sum_c w_c t'_ic log p_ic,    t' = (1 - eps) t + eps / C

    with ``eps = label_smoothing`` and ``w = weight`` (all ones when None). Target values
    must lie in [0, 1] (a ValueError names one that does not); each pixel's need not sum
    to 1, as in torch. There is no ignore_index: a pixel whose target is all zeros adds 0
    (with eps = 0) but still counts in the mean.

    reduction: 'mean': ``sum_i l_i / (B * prod(spatial))``, every pixel counted and the
    weights left out of the divisor, as in torch; 'sum': ``sum_i l_i``; 'none': ``l``
    with shape ``[B, *spatial]``.
    """
    t, _ = check_masks(logits, target, None)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    x = logits.to(acc_dtype(logits))
    w = check_class_vector("weight", weight, logits.shape[1], x)
    return F.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=label_smoothing)


def binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | Sequence[float] | None = None,
    pos_weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Binary / multilabel BCE on logits, per element of ``[B, C, *spatial]``.

    ``l = -w_c * (pw_c * t * logsigmoid(x) + (1 - t) * logsigmoid(-x))`` with ``w = weight``
    and ``pw = pos_weight`` (per class, ones when None); ``t`` may be soft in [0, 1].
    ``label_smoothing`` ``s`` in [0, 1] moves every target toward 1/2 first:
    ``t <- t (1 - s) + (1 - t) s`` (smp's ``SoftBCEWithLogitsLoss(smooth_factor=s)``).
    Elements whose target equals ``ignore_index`` (compared before smoothing) give 0.

    reduction: 'mean' divides the sum by the number of valid elements (as
    ``F.binary_cross_entropy_with_logits``: weights are multipliers, not part of the
    divisor; NaN when all are ignored); 'sum'; 'none' returns ``[B, C, *spatial]``.
    """
    t, valid = check_masks(logits, target, ignore_index)
    s = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    t = t * (1 - s) + (1 - t) * s if s else t
    x = logits.to(t.dtype)
    C = x.shape[1]
    shape = (1, C, *([1] * (x.dim() - 2)))
    w = check_class_vector("weight", weight, C, x)
    pw = check_class_vector("pos_weight", pos_weight, C, x)
    pos = t * F.logsigmoid(x) * (pw.view(shape) if pw is not None else 1.0)
    loss = -(pos + (1 - t) * F.logsigmoid(-x))
    if w is not None:
        loss = loss * w.view(shape)
    loss = loss.masked_fill(~valid, 0.0)
    return reduce_pixels(loss, reduction, valid.sum().to(loss.dtype))


def sigmoid_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "binary",
    alpha: float | torch.Tensor | Sequence[float] | None = 0.25,
    gamma: float = 2.0,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), per element of ``[B, C, *spatial]``.

    With ``p = sigmoid(x)``, ``p_t = p*t + (1-p)*(1-t)``, ``a_t = a_c*t + (1-a_c)*(1-t)``::

        l = w_c * a_t * (1 - p_t) ** gamma * BCE(x, t)

    ``alpha`` (``a_c``: one number in [0, 1] for every class, or one per class, as mmseg's
    ``FocalLoss`` takes it) weighs positives, ``1 - a_c`` negatives; ``alpha=None`` means no
    weighting. ``weight`` (``w_c``, per class, finite and >= 0; MONAI's ``FocalLoss``
    ``weight``) multiplies every element of class c; it is not part of the 'mean' divisor.
    ``gamma`` is finite and >= 0.
    ``(1 - p_t) ** gamma`` is evaluated as ``exp(gamma * log(1 - p_t))`` with
    ``log(1 - p_t)`` built from log-sigmoids, so gamma < 1 and p -> 1 stay finite.

    mode: 'binary' (C = 1 mask), 'multilabel' (``[B, C, *S]`` masks) or 'multiclass'
    (integer labels ``[B, *S]``, one-vs-rest: ``t_c = [y == c]``; an ignored pixel drops
    all C of its elements). Targets may be soft for binary/multilabel.

    reduction: 'mean' over valid elements (NaN when all are ignored), 'sum', 'none'
    (``[B, C, *spatial]``, ignored elements 0).
    """
    check_mode(mode, logits)
    C = logits.shape[1]
    dtype = acc_dtype(logits)
    like = logits.new_empty(0, dtype=dtype)
    gamma, alpha = sigmoid_focal_options(gamma, alpha, C, like)
    w = check_class_vector("weight", weight, C, like)
    if mode == "multiclass":
        valid = check_labels(logits, target, ignore_index)
        labels = valid_labels(target, valid)
        t = F.one_hot(labels, C).movedim(-1, 1).to(dtype)
        valid = valid.unsqueeze(1).expand_as(t)
    else:
        t, valid = check_masks(logits, target, ignore_index)
    x = logits.to(t.dtype)
    log_p, log_1mp = F.logsigmoid(x), F.logsigmoid(-x)
    bce = -(t * log_p + (1 - t) * log_1mp)
    # log(1 - p_t) = log(t * (1 - p) + (1 - t) * p); log(0) = -inf drops a term exactly.
    log_1m_pt = torch.logaddexp(torch.log(t) + log_1mp, torch.log1p(-t) + log_p)
    loss = torch.exp(gamma * log_1m_pt) * bce
    per_class = (C,) + (1,) * (logits.dim() - 2)
    if alpha is not None:
        a = alpha.view(per_class) if isinstance(alpha, torch.Tensor) else alpha
        loss = loss * (a * t + (1 - a) * (1 - t))
    if w is not None:
        loss = loss * w.view(per_class)
    loss = loss.masked_fill(~valid, 0.0)
    return reduce_pixels(loss, reduction, valid.sum().to(loss.dtype))


def softmax_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float | torch.Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multiclass softmax focal loss on integer labels ``[B, *spatial]``.

    For a valid pixel with label y, ``log p = log_softmax(logits)``::

        l = -alpha_y * (1 - p_y) ** gamma * log p_y

    ``alpha``: None (1 for every class), a scalar (the same factor for every class) or a
    per-class vector, finite and >= 0 (as is ``gamma``). MONAI/kornia's scalar convention
    ``[1 - a, a, a, ...]`` is that vector. ``1 - p_y`` is ``-expm1(log p_y)`` (accurate as
    p_y -> 1); where it is exactly 0 the term and its gradient are 0, so gamma < 1 is safe.

    reduction: 'mean' over valid pixels (alpha is a multiplier, not part of the divisor;
    NaN when all are ignored), 'sum', 'none' (``[B, *spatial]``).
    """
    valid = check_labels(logits, target, ignore_index)
    gamma = check_number("gamma", gamma)
    C = logits.shape[1]
    logp = F.log_softmax(logits.to(acc_dtype(logits)), dim=1)
    labels = valid_labels(target, valid)
    logp_y = logp.gather(1, labels.unsqueeze(1)).squeeze(1)
    one_minus = -torch.expm1(logp_y)
    positive = one_minus > 0
    focal = torch.where(
        positive, torch.exp(gamma * torch.log(torch.where(positive, one_minus, 1.0))), 0.0
    )
    loss = -focal * logp_y
    if alpha is not None:
        if is_number(alpha):
            a = torch.full((C,), check_number("alpha", alpha), dtype=logp.dtype, device=logp.device)
        else:
            a = check_class_vector("alpha", alpha, C, logp)
        loss = loss * a[labels]
    loss = loss.masked_fill(~valid, 0.0)
    return reduce_pixels(loss, reduction, valid.sum().to(loss.dtype))
