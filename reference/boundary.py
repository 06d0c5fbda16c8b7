"""Boundary loss (Kervadec et al.) and the signed distance map it needs.

The map is computed on the CPU with scipy's exact Euclidean distance transform; it
carries no gradient. Pass a precomputed ``dist_map`` to skip that step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from ._common import (
    acc_dtype,
    check_choice,
    check_class_indices,
    check_ignore_index,
    check_labels,
    check_masks,
    check_mode,
    check_num_classes,
    check_numbers,
    not_ignored,
)


def check_spacing(spacing: Sequence[float] | None, nd: int) -> tuple[float, ...]:
    """``spacing`` as ``nd`` floats (all 1 when None); each must be finite and positive."""
    if spacing is None:
        return (1.0,) * nd
    values = tuple(check_numbers("spacing", spacing))
    if len(values) != nd:
        raise ValueError(f"spacing needs {nd} entries, got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing entries must be finite and > 0, got {list(spacing)}")
    return values


def _signed_map(mask: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float64)
    outside = distance_transform_edt(~mask, sampling=spacing) * ~mask
    inside = (distance_transform_edt(mask, sampling=spacing) - 1) * mask
    return outside - inside


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
    ``[B, C, *S]`` (values other than 0/1/ignore_index are rejected).
    """
    check_choice("mode", mode, ("multiclass", "binary", "multilabel"))
    check_ignore_index(ignore_index, mode == "multiclass")
    if mode == "multiclass":
        check_num_classes(num_classes, "signed_distance_map of multiclass labels")
        valid = not_ignored(target.detach(), ignore_index).cpu().numpy()
        labels = target.detach().cpu().numpy()
        masks = labels[:, None] == np.arange(num_classes).reshape(1, -1, *([1] * (labels.ndim - 1)))
        masks &= valid[:, None]
    else:
        t = target.detach()
        if ignore_index is not None:
            t = t.masked_fill(t == ignore_index, 0)  # compared in the mask's dtype, as torch does
        t = t.cpu().double().numpy()  # NumPy has no bfloat16
        if not np.isin(t, (0, 1)).all():
            raise ValueError("signed_distance_map needs hard {0, 1} masks")
        masks = t.astype(bool)
    spacing = check_spacing(spacing, masks.ndim - 2)
    phi = np.stack([np.stack([_signed_map(m, spacing) for m in img]) for img in masks])
    return torch.from_numpy(phi).to(target.device)


def selected_classes(classes: Sequence[int] | None, C: int, mode: str) -> list[int]:
    """The channels that enter the boundary loss: ``classes`` checked against ``[0, C)``,
    by default every channel but the background (class 0) for multiclass, all otherwise."""
    if classes is None:
        classes = range(1 if mode == "multiclass" else 0, C)
    return check_class_indices("classes", classes, C)


def boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    dist_map: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
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
    """
    check_mode(mode, logits)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    C = logits.shape[1]
    x = logits.to(acc_dtype(logits))
    if mode == "multiclass":
        valid = check_labels(logits, target, ignore_index).unsqueeze(1)
        p = torch.softmax(x, dim=1)
    else:
        _, valid = check_masks(logits, target, ignore_index)
        p = torch.sigmoid(x)
    idx = selected_classes(classes, C, mode)
    if dist_map is None:
        dist_map = signed_distance_map(target, C, mode, spacing, ignore_index)
    elif dist_map.shape != logits.shape:
        raise ValueError(
            f"dist_map shape {tuple(dist_map.shape)} must equal logits {tuple(logits.shape)}"
        )
    valid = valid.expand_as(p)[:, idx]
    loss = (p[:, idx] * dist_map[:, idx].to(x.dtype)).masked_fill(~valid, 0.0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / valid.sum()
