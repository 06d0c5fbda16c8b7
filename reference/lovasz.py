"""Lovasz hinge (binary, multilabel) and Lovasz-softmax (multiclass) losses (Berman et al. 2018).

Both sort per-pixel errors in decreasing order and take their dot product with the
Lovasz gradient of the Jaccard loss. Rows are processed in one batched ``torch.sort``;
ignored pixels are given the lowest key so they sort last with label 0, where their
Lovasz gradient is 0 and their error is masked: no boolean indexing, no dynamic shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._common import (
    _checking_values,
    acc_dtype,
    activate,
    check_choice,
    check_class_indices,
    check_class_vector,
    check_labels,
    check_masks,
    check_mode,
    checks_flags,
    class_mean,
    device_constant,
    flat,
    flat_labels,
    valid_labels,
)


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss along sorted rows ``[..., N]``.

    With ``G = sum gt``, cumulative intersections ``I_k = G - cumsum(gt)_k`` and unions
    ``U_k = G + cumsum(1 - gt)_k``, ``J_k = 1 - I_k / U_k`` and ``g = diff(J)`` with
    ``g_0 = J_0``.
    """
    gt = gt_sorted.to(torch.float64 if gt_sorted.dtype == torch.float64 else torch.float32)
    gts = gt.sum(-1, keepdim=True)
    inter = gts - gt.cumsum(-1)
    union = gts + (1 - gt).cumsum(-1)
    jac = 1 - inter / union
    return torch.cat([jac[..., :1], jac[..., 1:] - jac[..., :-1]], dim=-1)


def _sorted_dot(
    errors: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor, hinge: bool
) -> torch.Tensor:
    """Per row of ``[R, N]``: ``sum_k f(e_sorted_k) * lovasz_grad(fg_sorted)_k``."""
    keys = errors.masked_fill(~valid, float("-inf"))
    _, perm = torch.sort(keys, dim=-1, descending=True)
    grad = lovasz_grad(fg.masked_fill(~valid, 0).gather(-1, perm))
    e_sorted = errors.gather(-1, perm).masked_fill(~valid.gather(-1, perm), 0.0)
    if hinge:
        e_sorted = F.relu(e_sorted)
    return (e_sorted * grad).sum(-1)


def reduce_units(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


@checks_flags
def lovasz_hinge_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "binary",
    per_image: bool = False,
    ignore_index: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Lovasz hinge on logits ``[B, C, *S]`` and ``{0, 1}`` masks of that shape.

    ``e_i = 1 - x_i (2 t_i - 1)``; ``loss = sum_k relu(e_(k)) g_k`` over the errors sorted
    in decreasing order, ``g = lovasz_grad(t sorted alike)``. mode 'binary' takes C = 1
    (masks may also be ``[B, *S]``); 'multilabel' pools the entries of every channel into
    the unit, as smp's ``LovaszLoss('multilabel')``: the surrogate of the Jaccard index of
    all (pixel, channel) entries. ``per_image=False`` pools the batch into one sort (smp,
    mmseg); ``per_image=True`` gives one value per image (Berman, kornia).
    ignore_index: entries whose target equals it are left out of their unit (no error, no
    place in the sorted order, not in the intersection or union); a unit whose entries
    are all ignored gives 0.

    reduction over units (1 pooled, or B images): 'mean', 'sum', 'none' (``[units]``).
    """
    check_choice("mode", mode, ("binary", "multilabel"))
    check_mode(mode, logits)
    t, valid = check_masks(logits, target, ignore_index)
    if _checking_values() and bool(((t != 0) & (t != 1)).any()):
        raise ValueError("lovasz_hinge_loss needs hard {0, 1} targets, got soft values")
    units = logits.shape[0] if per_image else 1
    x, t, valid = (v.reshape(units, -1) for v in (logits.to(t.dtype), t, valid))
    errors = 1 - x * (2 * t - 1)
    return reduce_units(_sorted_dot(errors, t, valid, hinge=True), reduction)


@checks_flags
def lovasz_softmax_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
    ignore_index: int | None = None,
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
) -> torch.Tensor:
    """Multiclass Lovasz-softmax on logits ``[B, C, *S]`` and integer labels.

    Per unit (the pooled batch, or each image with ``per_image=True``) and class c:
    ``e_i = |[y_i = c] - p_i(c)|`` with ``p = softmax(logits)``, and
    ``L_c = sum_k e_(k) g_k`` (errors sorted decreasing, ``g = lovasz_grad`` of the sorted
    foreground). The unit's loss is the mean of ``L_c`` over the selected classes,
    weighted by ``weight`` when given (``sum w_c L_c / sum w_c``).

    classes: 'present' (classes with at least one valid pixel in the unit; a unit with
    none gives 0, as in Berman's code), 'all' (an absent class contributes
    ``max_i p_i(c)``), or a list of class indices.
    ignore_index: pixels with this label are left out of every unit: no error, no place in
    the sorted order, not counted in any class's intersection or union.
    reduction over units: 'mean', 'sum', 'none' (``[units]``).
    from_logits: False reads the input as ``p`` itself (Berman's ``lovasz_softmax``; smp
      0.6.0's ``LovaszLoss`` ignores its own ``from_logits``), as
      ``segtriton.reference.dice_loss`` does: a counted entry outside [0, 1] is an error,
      or NaN in a kernel without ``validate``.
    """
    valid = check_labels(logits, target, ignore_index)
    B, C = logits.shape[:2]
    labels, valid = flat_labels(target.long()), flat_labels(valid)
    p = activate(flat(logits).to(acc_dtype(logits)), valid.unsqueeze(1), True, from_logits)
    if not per_image:
        p = p.transpose(0, 1).reshape(1, C, -1)
        labels, valid = labels.reshape(1, -1), valid.reshape(1, -1)
    fg = (labels.unsqueeze(1) == torch.arange(C, device=p.device).view(1, C, 1)).to(p.dtype)
    valid = valid.unsqueeze(1).expand_as(p)
    losses = _sorted_dot((fg - p).abs(), fg, valid, hinge=False)
    present = (fg * valid).sum(-1) > 0
    return lovasz_softmax_reduce(losses, present, classes, weight, reduction)


def lovasz_hinge_grad_weights(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: float | None = None,
    **_: object,
) -> torch.Tensor:
    """Float64 weights ``w`` with ``<w, dL/dx> = L`` for the scalar Lovasz hinge loss
    ``L``, whatever order its gradient gave tied errors: ``w = -s e``.

    Within a unit, ``dL/dx_i = -s_i g_i [e_i > 0] / units`` with ``s = 2t - 1`` and
    ``e = 1 - x s``, so ``sum_i dL/dx_i (-s_i e_i) = sum_k relu(e_(k)) g_k / units = L``:
    tied errors share one ``e``, so any split of their ``g`` gives the same sum. Ignored
    pixels get ``t = 0``, so a gradient leaked into them shows. With reduction='none',
    ``L`` is the sum over units.
    """
    t, valid = check_masks(logits, target, ignore_index)
    s = 2 * t.double().masked_fill(~valid, 0) - 1
    return -s * (1 - logits.double() * s)


def lovasz_softmax_grad_weights(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = None,
    from_logits: bool = True,
    **_: object,
) -> torch.Tensor:
    """Float64 weights ``w`` with ``<w, dL/dx> = L`` for the scalar Lovasz-softmax loss
    ``L``, whatever order its gradient gave tied errors: ``w_ic = -[c = y_i] / p_iy`` on
    valid pixels, 0 elsewhere (``w = p - fg`` there with ``from_logits=False``, where the
    gradient is ``u`` itself).

    With ``u = dL/dp``, each class's term ``sum_k e_(k) g_k`` (``e = |fg - p|``) gives
    ``u_ic = (1 - 2 fg_ic) g_ic`` (tied errors share one ``e``), so
    ``L = sum_i (<u_i, p_i> - u_{i,y_i})`` over valid pixels, for any class selection or
    weights; the softmax Jacobian gives ``dL/dx_iy = p_iy (u_iy - <u_i, p_i>)``. With
    reduction='none', ``L`` is the sum over units.
    """
    valid = check_labels(logits, target, ignore_index)
    p = torch.softmax(logits.double(), dim=1) if from_logits else logits.double()
    y = valid_labels(target, valid).unsqueeze(1)
    if not from_logits:
        return (p - torch.zeros_like(p).scatter_(1, y, 1.0)) * valid.unsqueeze(1)
    w = torch.zeros_like(p)
    return w.scatter_(1, y, -(valid.unsqueeze(1) / p.gather(1, y)))


def lovasz_softmax_reduce(
    losses: torch.Tensor,
    present: torch.Tensor,
    classes: str | Sequence[int],
    weight: torch.Tensor | Sequence[float] | None,
    reduction: str,
    check_values: bool | None = None,
) -> torch.Tensor:
    """The Lovasz-softmax loss from per-(unit, class) values ``L_c`` ``[units, C]`` and
    whether each class is present in the unit (see :func:`lovasz_softmax_loss`)."""
    C = losses.shape[-1]
    if isinstance(classes, str):
        check_choice("classes", classes, ("present", "all"))
        select = present if classes == "present" else torch.ones_like(losses, dtype=torch.bool)
    else:
        chosen = set(check_class_indices("classes", classes, C))
        select = device_constant([c in chosen for c in range(C)], torch.bool, losses.device)
        select = select.expand_as(losses)
    w = check_class_vector("weight", weight, C, losses, check_values)
    w = select.to(losses.dtype) * (w if w is not None else 1.0)
    per_unit, _ = class_mean(losses, w)
    return reduce_units(per_unit, reduction)
