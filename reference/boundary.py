"""Boundary loss (Kervadec et al.) and the signed distance map it needs, and the HD-DT
loss (the surface-distance metrics are in ``surface.py``).

The map is computed on the CPU with scipy's exact Euclidean distance transform; it
carries no gradient. Pass a precomputed ``dist_map`` to skip that step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy  # scipy.ndimage loads at its first use (0.2 s saved at import)
import torch

from ._common import (
    acc_dtype,
    activate,
    check_choice,
    check_class_indices,
    check_ignore_index,
    check_label_dtype,
    check_labels,
    check_masks,
    check_mode,
    check_num_classes,
    check_number,
    check_numbers,
    check_real_tensor,
    checks_flags,
    is_finite,
    mask_shape,
    not_ignored,
)


def check_spacing(spacing: Sequence[float] | None, nd: int) -> tuple[float, ...]:
    """``spacing`` as ``nd`` floats (all 1 when None); each must be finite and positive."""
    if spacing is None:
        return (1.0,) * nd
    values = tuple(check_numbers("spacing", spacing))
    if len(values) != nd:
        raise ValueError(f"spacing needs {nd} entries, got {len(values)}")
    if not all(is_finite(v) and v > 0 for v in values):
        raise ValueError(f"spacing entries must be finite and > 0, got {list(spacing)}")
    return values


def _signed_map(mask: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float64)
    outside = scipy.ndimage.distance_transform_edt(~mask, sampling=spacing) * ~mask
    inside = (scipy.ndimage.distance_transform_edt(mask, sampling=spacing) - 1) * mask
    return outside - inside


def _each_map(
    fn: Callable, masks: np.ndarray, spacing: Sequence[float], device: torch.device
) -> torch.Tensor:
    """``fn(mask, spacing)`` of every (image, class) mask of ``[B, C, *S]``, on ``device``."""
    d = np.stack([np.stack([fn(m, spacing) for m in img]) for img in masks])
    return torch.from_numpy(d).to(device)


def check_map_target(
    target: torch.Tensor,
    num_classes: int | None,
    mode: str,
    ignore_index: float | None,
    what: str,
) -> int:
    """The target of a distance map, checked without reading values: a non-empty tensor,
    integer labels ``[B, *S]`` for 'multiclass', real masks ``[B, C, *S]`` otherwise
    (``C = 1`` for 'binary'), with at least one spatial dim; and ``ignore_index``. Returns
    the class count: ``num_classes`` (required) for labels, the masks' channels else."""
    check_choice("mode", mode, ("multiclass", "binary", "multilabel"))
    if mode == "multiclass":
        check_label_dtype(target)  # a tensor of integers, not empty
        layout, dims = "labels [B, *spatial]", 2
    else:
        check_real_tensor("target", target)
        layout, dims = "masks [B, C, *spatial]", 3
    if target.dim() < dims:
        raise ValueError(
            f"{what} takes {mode} {layout} with at least one spatial dim, "
            f"got shape {tuple(target.shape)}"
        )
    if mode == "binary" and target.shape[1] != 1:
        raise ValueError(
            f"{what} with mode='binary' takes masks [B, 1, *spatial], got shape "
            f"{tuple(target.shape)}; use mode='multilabel' for several channels"
        )
    if target.numel() == 0:
        raise ValueError(f"target is empty (shape {tuple(target.shape)})")
    check_ignore_index(ignore_index, mode == "multiclass")
    if mode == "multiclass":
        return check_num_classes(num_classes, f"{what} of multiclass labels")
    return target.shape[1]


def _class_masks(
    target: torch.Tensor, num_classes: int | None, mode: str, ignore_index: float | None, what: str
) -> np.ndarray:
    """Boolean ``[B, C, *S]`` foreground of every (image, class): ``label == c`` for
    multiclass labels, the hard mask otherwise; ignored pixels are background."""
    C = check_map_target(target, num_classes, mode, ignore_index, what)
    if mode == "multiclass":
        valid = not_ignored(target.detach(), ignore_index).cpu().numpy()
        labels = target.detach().cpu().numpy()
        masks = labels[:, None] == np.arange(C).reshape(1, -1, *([1] * (labels.ndim - 1)))
        return masks & valid[:, None]
    t = target.detach()
    if ignore_index is not None:
        t = t.masked_fill(t == ignore_index, 0)  # compared in the mask's dtype, as torch does
    values = t.cpu().double().numpy()  # NumPy has no bfloat16
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{what} needs hard {{0, 1}} masks")
    return values.astype(bool)


def signed_distance_map(
    target: torch.Tensor,
    num_classes: int | None = None,
    mode: str = "multiclass",
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
) -> torch.Tensor:
    """Signed Euclidean distance map ``phi`` of every class, ``[B, C, *spatial]`` float64.

    For the foreground mask ``m`` of one (image, class), with ``edt`` the distance to the
    nearest zero (scipy, ``sampling=spacing`` for anisotropic voxels)::

        phi = edt(~m)          outside m (distance to the object)
        phi = -(edt(m) - 1)    inside m  (0 on the inner boundary, negative deeper in)

    as in the boundary-loss authors' ``one_hot2dist``. A mask that is empty or covers the
    whole image has no boundary and gets ``phi = 0`` (scipy's value would be undefined for
    a full mask). multiclass: ``target`` holds labels ``[B, *S]`` and ``num_classes`` is
    required; ignored pixels count as background. binary/multilabel: hard masks
    ``[B, C, *S]``, ``C = 1`` for binary (values other than 0/1/ignore_index are
    rejected). An empty target, float labels or a target without a spatial dim is
    refused (``check_map_target``).
    """
    masks = _class_masks(target, num_classes, mode, ignore_index, "signed_distance_map")
    spacing = check_spacing(spacing, masks.ndim - 2)
    return _each_map(_signed_map, masks, spacing, target.device)


def check_map(dist_map: torch.Tensor, logits: torch.Tensor) -> None:
    """A given distance map must be a tensor of the logits' shape and device."""
    if not isinstance(dist_map, torch.Tensor):
        raise TypeError(f"dist_map must be a torch.Tensor, got {type(dist_map).__name__}")
    if dist_map.shape != logits.shape:
        raise ValueError(
            f"dist_map shape {tuple(dist_map.shape)} must equal logits {tuple(logits.shape)}"
        )
    if dist_map.device != logits.device:
        raise ValueError(f"dist_map is on {dist_map.device} but logits on {logits.device}")


def selected_classes(classes: Sequence[int] | None, C: int, mode: str) -> list[int]:
    """The channels that enter the boundary loss: ``classes`` checked against ``[0, C)``,
    by default every channel but the background (class 0) for multiclass, all otherwise."""
    if classes is None:
        classes = range(1 if mode == "multiclass" else 0, C)
    return check_class_indices("classes", classes, C)


@checks_flags
def boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    dist_map: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
) -> torch.Tensor:
    """Boundary loss: ``mean(p_c * phi_c)`` over pixels and the selected classes.

    ``p`` is the softmax (multiclass) or sigmoid (binary/multilabel) of ``logits`` and
    ``phi`` the signed distance map of the target (:func:`signed_distance_map`), or
    ``dist_map`` ``[B, C, *S]`` when given. The loss is negative for good predictions.

    classes: channels that enter the loss; default all but the background (class 0) for
      multiclass, every channel for binary/multilabel.
    ignore_index: ignored pixels add nothing and are not counted.
    reduction: 'mean' (over valid pixels x selected classes), 'sum', or 'none'
      (``[B, K, *S]`` with ignored entries 0).
    from_logits: False reads the input as ``p`` itself (Kervadec's code takes the
      softmax's output), as ``segtriton.reference.dice_loss`` does: a counted entry
      outside [0, 1] is an error, or NaN in a kernel without ``validate``.
    """
    check_mode(mode, logits)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    C = logits.shape[1]
    x = logits.to(acc_dtype(logits))
    multiclass = mode == "multiclass"
    if multiclass:
        valid = check_labels(logits, target, ignore_index).unsqueeze(1)
    else:
        _, valid = check_masks(logits, target, ignore_index)
    p = activate(x, valid, multiclass, from_logits)
    idx = selected_classes(classes, C, mode)
    if dist_map is None:
        dist_map = signed_distance_map(target, C, mode, spacing, ignore_index)
    else:
        check_map(dist_map, logits)
    valid = valid.expand_as(p)[:, idx]
    loss = (p[:, idx] * dist_map[:, idx].to(x.dtype)).masked_fill(~valid, 0.0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / valid.sum()


def _field(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float64)
    edt = scipy.ndimage.distance_transform_edt
    return edt(~mask, sampling=spacing) + edt(mask, sampling=spacing)


def distance_field(
    target: torch.Tensor,
    num_classes: int | None = None,
    mode: str = "multiclass",
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
) -> torch.Tensor:
    """Unsigned distance to the other side of each class's boundary, ``[B, C, *spatial]``
    float64: for the foreground ``m`` of one (image, class), ``edt(m) + edt(~m)`` (scipy,
    ``sampling=spacing``), i.e. at every pixel the distance to the nearest pixel of the
    other kind; 0 everywhere for a mask that is empty or covers the image. The target's
    map of :func:`hausdorff_dt_loss` (pass it as ``dist_map`` to reuse it). Labels, masks
    and ``ignore_index`` as in :func:`signed_distance_map` (ignored pixels are
    background)."""
    masks = _class_masks(target, num_classes, mode, ignore_index, "distance_field")
    return _each_map(_field, masks, check_spacing(spacing, masks.ndim - 2), target.device)


def check_alpha(alpha: object) -> float:
    """``alpha`` as a float; it must be a finite real number > 0."""
    value = check_number("alpha", alpha)
    if value == 0:
        raise ValueError("alpha must be > 0, got 0")
    return value


def hausdorff_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    idx: list[int],
    weight: torch.Tensor,
    ignore_index: float | None,
    reduction: str,
    from_logits: bool = True,
) -> torch.Tensor:
    """``(p - g)^2 weight`` over the valid entries of the classes ``idx``, reduced; the
    formula of :func:`hausdorff_dt_loss` once its weight map ``[B, C, *S]`` is known."""
    x = logits.to(acc_dtype(logits))
    if mode == "multiclass":  # g compared per selected class: no [B, C, *S] one-hot
        valid = check_labels(logits, target, ignore_index).unsqueeze(1)
        p = activate(x, valid, True, from_logits)[:, idx]
        labels = target.long()  # uint8 labels == 299 would compare with 43
        g = torch.stack([labels == c for c in idx], dim=1) & valid
        valid = valid.expand_as(p)
    else:
        g, valid = check_masks(logits, target, ignore_index)
        p = activate(x, valid, False, from_logits)[:, idx]
        g, valid = g[:, idx], valid[:, idx]
    err = p - g.to(x.dtype)
    loss = (err * err * weight[:, idx].to(x.dtype)).masked_fill(~valid, 0.0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / valid.sum()


@checks_flags
def hausdorff_dt_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    alpha: float = 2.0,
    dist_map: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
) -> torch.Tensor:
    """Hausdorff distance-transform loss (Karimi and Salcudean, HD-DT)::

        loss = mean over valid entries of the selected classes of
               (p_c - g_c)^2 (d_pred_c^alpha + d_true_c^alpha)

    ``p`` is the softmax (multiclass) or sigmoid (binary/multilabel) of ``logits``, ``g``
    the one-hot labels or the hard masks. ``d_true_c`` is, at every pixel, the Euclidean
    distance (with ``spacing``) to the nearest pixel on the other side of class c's
    boundary in the target (``edt(m) + edt(~m)``, scipy), and ``d_pred_c`` the same for the
    prediction's mask ``p_c > 1/2`` (sigmoid: ``logit > 0``), recomputed on every call. A
    mask that is empty or covers the image has no boundary: its distances are 0. Both maps
    are constants (no gradient). MONAI's ``HausdorffDTLoss`` with ``to_onehot_y`` and
    ``include_background=False`` is this loss with the defaults (from logits with its
    ``softmax=True``; on probabilities, its default, with ``from_logits=False``).

    classes: channels that enter the loss; default all but the background (class 0) for
      multiclass, every channel for binary/multilabel.
    alpha: exponent of the distances (> 0).
    dist_map: ``d_true`` ``[B, C, *S]`` when given (:func:`distance_field` of the target,
      computed once and reused), else computed from the target on every call.
    ignore_index: ignored pixels are background in both masks, add nothing and are not
      counted.
    reduction: 'mean' (over valid pixels x selected classes), 'sum', or 'none'
      (``[B, K, *S]`` with ignored entries 0).
    from_logits: False reads the input as ``p`` itself, as ``boundary_loss`` does; the
      prediction's mask of class c is then ``p_c > 1/2`` in every mode.
    """
    check_mode(mode, logits)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    alpha = check_alpha(alpha)
    C = logits.shape[1]
    idx = selected_classes(classes, C, mode)
    x = logits.detach().double()
    if mode == "multiclass":
        valid = check_labels(logits, target, ignore_index).unsqueeze(1)
        pred = (torch.softmax(x, dim=1) if from_logits else x) > 0.5
    else:
        target = mask_shape(logits, target)
        valid = check_masks(logits, target, ignore_index)[1]
        pred = x > (0 if from_logits else 0.5)
    spacing = check_spacing(spacing, logits.dim() - 2)
    if dist_map is None:
        true = _class_masks(target, C, mode, ignore_index, "hausdorff_dt_loss")
        dist_map = _each_map(_field, true, spacing, logits.device)
    else:
        check_map(dist_map, logits)
    d_pred = _each_map(_field, (pred & valid).cpu().numpy(), spacing, logits.device)
    weight = dist_map.to(x.dtype) ** alpha + d_pred**alpha
    return hausdorff_terms(logits, target, mode, idx, weight, ignore_index, reduction, from_logits)
