"""Generalized Wasserstein Dice loss (Fidon et al. 2017): a Dice whose errors are weighted
by how far apart the classes are, given a ``[C, C]`` distance matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._common import (
    acc_dtype,
    check_choice,
    check_labels,
    check_number,
    device_constant,
    flat,
    flat_labels,
    is_finite,
    reads_values,
    valid_labels,
)


def class_distances(
    dist_matrix: torch.Tensor | Sequence[Sequence[float]] | None,
    C: int,
    like: torch.Tensor,
    check_values: bool | None = None,
) -> torch.Tensor:
    """``dist_matrix`` as a ``[C, C]`` tensor of ``like``'s dtype and device, divided by its
    largest entry (as MONAI does), so the largest distance is 1.

    None gives distance 1 between every two different classes (0 on the diagonal), made
    on the device. A nested list or a NumPy array is checked on the host and cached on
    the device, but read again at every call (milliseconds of host time at C = 150: pass
    a tensor on the logits' device when C is large); a tensor's values are read only as
    :func:`reads_values` says. Under ``torch.compile`` a NumPy array is
    traced as a tensor input, so it takes the tensor's path there. The entries must be
    finite and non-negative, with a positive largest one.
    """
    if dist_matrix is None:
        if C < 2:
            raise ValueError("dist_matrix=None needs C >= 2 classes (one class has no distance)")
        return 1 - torch.eye(C, dtype=like.dtype, device=like.device)
    if isinstance(dist_matrix, (str, bytes)):
        raise TypeError(f"dist_matrix must be a [C, C] matrix of numbers, got {dist_matrix!r}")
    if isinstance(dist_matrix, np.ndarray):
        # torch.compile traces an array (and any NumPy call) as tensors, whose values are
        # no constants there; elsewhere it is read as a list, checked in plain Python
        compiling = torch.compiler.is_compiling()
        dist_matrix = torch.as_tensor(dist_matrix) if compiling else dist_matrix.tolist()
    if not isinstance(dist_matrix, torch.Tensor):
        try:
            rows = [[float(v) for v in row] for row in dist_matrix]
        except (TypeError, ValueError) as err:
            raise TypeError(f"dist_matrix must be a [C, C] matrix of numbers: {err}") from None
        widths = sorted({len(row) for row in rows})
        if len(widths) > 1:
            raise TypeError(f"dist_matrix must be a [C, C] matrix of numbers: rows of {widths}")
        _check_distance_shape((len(rows), *widths), C)
        flat_ = [v for row in rows for v in row]
        if not (all(is_finite(v) and v >= 0 for v in flat_) and max(flat_) > 0):
            raise ValueError("dist_matrix must be finite and non-negative, with a positive entry")
        top = max(flat_)
        return device_constant([v / top for v in flat_], like.dtype, like.device).view(C, C)
    _check_distance_shape(tuple(dist_matrix.shape), C)
    m = dist_matrix.to(dtype=like.dtype, device=like.device)
    if reads_values(check_values) and not bool(
        torch.isfinite(m).all() & (m >= 0).all() & (m.max() > 0)
    ):
        raise ValueError("dist_matrix must be finite and non-negative, with a positive entry")
    return m / m.max()


def _check_distance_shape(shape: tuple[int, ...], C: int) -> None:
    if tuple(shape) != (C, C):
        raise ValueError(f"dist_matrix must be [C, C] = [{C}, {C}] for C={C}, got {list(shape)}")


def generalized_wasserstein_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dist_matrix: torch.Tensor | Sequence[Sequence[float]] | None = None,
    weighting_mode: str = "default",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Generalized Wasserstein Dice loss (Fidon et al. 2017; MONAI's
    ``GeneralizedWassersteinDiceLoss``), multiclass, one value per image::

        M    = dist_matrix / max(dist_matrix)            C x C distances between classes
        w_i  = sum_c M[y_i, c] p_ic                      pixel i's distance to its label
        a_c  = 0 for c = 0, else 1          ('default': the background earns nothing)
             = 1 / (V_c + 1)                ('GDL': V_c pixels of the image labelled c)
        TP   = sum_i a_{y_i} (1 - w_i)
        D    = 2 TP + sum_i w_i             ('default')
             = sum_i a_{y_i} (2 - w_i)      ('GDL', Tilborghs et al. 2020)
        loss = 1 - (2 TP + smooth_nr) / (D + smooth_dr)

    ``p`` is the softmax over classes and ``i`` runs over the image's pixels. A mistake
    costs the distance from the label to where the probability went, so confusing two
    close classes costs less than confusing far ones.

    dist_matrix: ``[C, C]`` non-negative distances (need not be symmetric), a tensor,
      nested list or array; None puts every two different classes at distance 1. Under
      ``torch.compile`` the values of a tensor or array are not checked.
    weighting_mode: 'default' or 'GDL', as above; the weights come from the target
      only (no gradient through them).
    ignore_index: pixels with this label take no part in any sum (MONAI has no such
      option); an image with every pixel ignored has loss ``1 - smooth_nr / smooth_dr``.
    reduction: over images: 'mean', 'sum' or 'none' (``[B]``).
    """
    check_choice("weighting_mode", weighting_mode, ("default", "GDL"))
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    smooth_nr = check_number("smooth_nr", smooth_nr)
    smooth_dr = check_number("smooth_dr", smooth_dr)
    valid = check_labels(logits, target, ignore_index)
    x = flat(logits).to(acc_dtype(logits))
    m = class_distances(dist_matrix, logits.shape[1], x)
    p = torch.softmax(x, dim=1)
    y = flat_labels(valid_labels(target, valid))
    v = flat_labels(valid).to(x.dtype)
    # elementwise, not a matmul: under torch.autocast a matmul would run in bf16 / fp16
    w = (m[y] * p.transpose(1, 2)).sum(2)
    # not 0 * w: a NaN loss (an all-ignored image with no smoothing) must leave ignored
    # pixels a zero gradient, as torch's cross-entropy does
    w = torch.where(v > 0, w, 0.0)
    if weighting_mode == "default":
        a = (y != 0).to(x.dtype)
    else:
        counts = torch.zeros_like(x[:, :, 0]).scatter_add_(1, y, v)
        a = (1 / (counts + 1)).gather(1, y)
    tp = (v * a * (1 - w)).sum(1)
    den = 2 * tp + (v * w).sum(1) if weighting_mode == "default" else (v * a * (2 - w)).sum(1)
    loss = 1 - (2 * tp + smooth_nr) / (den + smooth_dr)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
