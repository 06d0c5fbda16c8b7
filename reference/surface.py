"""Surface-distance metrics of a segmentation, per image and class: the Hausdorff distance
(HD, HD95), the average surface distance (ASD / ASSD) and the normalised surface Dice
(NSD), computed with scipy's exact distance transform on the CPU in float64.

Shared semantics. ``mode='multiclass'`` (default): ``preds`` are integer labels
``[B, *S]`` or logits ``[B, C, *S]`` (argmax over dim 1), ``target`` integer labels
``[B, *S]``; class c's mask is ``label == c`` over the pixels whose target is not
``ignore_index``; labels are checked against ``[0, C)`` whichever classes are measured.
``mode='multilabel'``: one independent mask per channel, which may overlap (BraTS's
whole tumour, tumour core and enhancing tumour): ``preds`` ``[B, C, *S]`` are masks
(bool, or integers 0/1) or logits (float: in the mask where positive, i.e. sigmoid above
1/2; values all in [0, 1] with some strictly between are refused as probabilities),
``target`` ``[B, C, *S]`` hard masks (0/1, any dtype) whose ``ignore_index`` entries are
in neither mask of that channel.
A mask's surface is its pixels with a face neighbour (4 in 2-D, 6 in 3-D) outside the
mask or the image (``mask & ~binary_erosion(mask)``). The distance from a surface pixel
to the other surface is Euclidean, in units of ``spacing`` per axis, to the nearest pixel
of that surface. ``classes``: the classes (channels) measured, column k for
``classes[k]`` (every class by default; a class may be listed twice). Each metric
returns float64 ``[B, K]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy  # scipy.ndimage loads at its first use (0.2 s saved at import)
import torch

from ._common import (
    check_choice,
    check_num_classes,
    check_number,
    checks_flags,
)
from .boundary import check_spacing
from .metrics import (
    MODES,
    check_mask_inputs,
    check_mask_values,
    label_inputs,
    mask_values,
    measured_classes,
)


def check_percentile(percentile: object) -> float | None:
    """``percentile`` as a float in ``[0, 100]``, or None (the maximum)."""
    if percentile is None:
        return None
    value = check_number("percentile", percentile)
    if not 0 <= value <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return value


def check_tolerance(tolerance: object, C: int) -> list[float]:
    """``tolerance`` as C finite numbers ``>= 0``: one number for every class, or C of
    them (a sequence or a CPU tensor)."""
    if isinstance(tolerance, torch.Tensor):
        tolerance = tolerance.tolist() if tolerance.device.type == "cpu" else tolerance
    values = [tolerance] * C
    if isinstance(tolerance, (Sequence, np.ndarray)) and not isinstance(tolerance, str):
        if len(tolerance) != C:
            raise ValueError(f"tolerance needs one number or {C}, one per class; got {tolerance!r}")
        values = list(tolerance)
    return [check_number("tolerance", v) for v in values]


def _edges(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` with a face neighbour outside it (or outside the image)."""
    cross = scipy.ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~scipy.ndimage.binary_erosion(mask, structure=cross, border_value=0)


def _distances(edges: np.ndarray, to: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The distance from each pixel of ``edges`` to the nearest pixel of ``to`` (inf when
    ``to`` is empty)."""
    if not to.any():
        return np.full(int(edges.sum()), math.inf)
    return scipy.ndimage.distance_transform_edt(~to, sampling=spacing)[edges]


def _label_masks(preds, target, num_classes, ignore_index):
    valid, pred = label_inputs(preds, target, num_classes, ignore_index)
    keep = valid.cpu().numpy()
    labels = [np.where(keep, t.cpu().long().numpy(), -1) for t in (pred, target)]
    return lambda b, c: tuple(x[b] == c for x in labels)


def _multilabel_masks(preds, target, num_classes, ignore_index):
    check_mask_inputs(preds, target, num_classes, ignore_index)
    check_mask_values(preds, target, ignore_index)
    pred, true = (m.cpu().numpy() for m in mask_values(preds, target, ignore_index))
    return lambda b, c: (pred[b, c], true[b, c])


Formula = tuple[Callable[[np.ndarray, np.ndarray, int], float], float]


def _per_class(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None,
    ignore_index: float | None,
    classes: Sequence[int] | None,
    mode: str,
    formulas: Sequence[Formula],
) -> torch.Tensor:
    """float64 ``[B, K, M]``: for every image and measured class c, each of the M
    ``(formula, one_sided)``: ``formula(pg, gp, c)`` of the distances from the predicted
    surface to the target's (``pg``) and back (``gp``) where both surfaces have pixels;
    ``one_sided`` where only one has (a missed or spurious class); NaN where neither."""
    check_num_classes(num_classes)
    check_choice("mode", mode, MODES)
    labels = mode == "multiclass"
    masks = (_label_masks if labels else _multilabel_masks)(
        preds, target, num_classes, ignore_index
    )
    spacing = check_spacing(spacing, target.dim() - (1 if labels else 2))
    idx = measured_classes(classes, num_classes)

    def measure(b: int, c: int) -> list[float]:
        p, g = (_edges(m) for m in masks(b, c))
        if not (p.any() and g.any()):
            return [one if p.any() or g.any() else math.nan for _, one in formulas]
        pg, gp = _distances(p, g, spacing), _distances(g, p, spacing)
        return [float(f(pg, gp, c)) for f, _ in formulas]

    out = [[measure(b, c) for c in idx] for b in range(target.shape[0])]
    return torch.tensor(out, dtype=torch.float64, device=target.device)


def _hd(percentile: float | None, directed: bool) -> Formula:
    """The maximum (or percentile) of the distances from P, or the larger of both ways."""

    def formula(pg: np.ndarray, gp: np.ndarray, c: int) -> float:
        one_way = [pg] if directed else [pg, gp]
        return max(d.max() if percentile is None else np.percentile(d, percentile) for d in one_way)

    return formula, math.inf


def _asd(directed: bool) -> Formula:
    """The mean distance over the pixels of P (and of G, unless directed)."""
    return (lambda pg, gp, c: np.concatenate([pg] if directed else [pg, gp]).mean()), math.inf


def _nsd(tau: list[float]) -> Formula:
    """The fraction of the pixels of P and G within ``tau[c]`` of the other surface."""
    return (lambda pg, gp, c: (np.concatenate([pg, gp]) <= tau[c]).mean()), 0.0


@checks_flags
def hausdorff_distance(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    percentile: float | None = None,
    directed: bool = False,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "multiclass",
) -> torch.Tensor:
    """Hausdorff distance between the predicted surface P and the target surface G of
    every image and measured class (module docstring), float64 ``[B, K]``.

    The directed distance from P to G is the maximum, or the ``percentile`` (0-100,
    linear interpolation as ``numpy.percentile``; 95 gives HD95), over the pixels of P of
    their distance to G. The result is that of prediction to target when ``directed``,
    else the larger of both directions. A class in neither mask gives NaN (left out of a
    ``nanmean``), one in only one mask inf, in either mode.
    """
    formulas = [_hd(check_percentile(percentile), directed)]
    args = (preds, target, num_classes, spacing, ignore_index, classes, mode, formulas)
    return _per_class(*args)[..., 0]


@checks_flags
def average_surface_distance(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    directed: bool = False,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "multiclass",
) -> torch.Tensor:
    """Average surface distance of every image and measured class (module docstring),
    float64 ``[B, K]``: the mean, over the pixels of the predicted surface P and the
    target surface G together, of each one's distance to the other surface (the average
    symmetric surface distance, ASSD), or with ``directed`` over the pixels of P only,
    their distance to G (ASD). A class in neither mask gives NaN, one in only one inf.
    """
    args = (preds, target, num_classes, spacing, ignore_index, classes, mode, [_asd(directed)])
    return _per_class(*args)[..., 0]


def surface_dice(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    tolerance: float | Sequence[float],
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "multiclass",
) -> torch.Tensor:
    """Normalised surface Dice (NSD) of every image and measured class (module
    docstring), float64 ``[B, K]``: the fraction of the pixels of the predicted surface P
    and the target surface G, together, that lie within ``tolerance`` (distance <= tau_c,
    in the units of ``spacing``) of the other surface. ``tolerance``: one number, or C
    (``tau_c`` for class c). A class in neither mask gives NaN, one in only one 0.
    """
    check_num_classes(num_classes)
    formulas = [_nsd(check_tolerance(tolerance, num_classes))]
    args = (preds, target, num_classes, spacing, ignore_index, classes, mode, formulas)
    return _per_class(*args)[..., 0]


def surface_metrics(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    tolerance: float | Sequence[float] | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "multiclass",
) -> dict[str, torch.Tensor]:
    """The symmetric surface metrics of every image and measured class at once (module
    docstring), float64 ``[B, K]`` each: ``hd`` (:func:`hausdorff_distance`), ``hd95``
    (its 95th percentile), ``assd`` (:func:`average_surface_distance`) and, given a
    ``tolerance``, ``nsd`` (:func:`surface_dice`), from one pair of distance sets."""
    check_num_classes(num_classes)
    named = {"hd": _hd(None, False), "hd95": _hd(95.0, False), "assd": _asd(False)}
    if tolerance is not None:
        named["nsd"] = _nsd(check_tolerance(tolerance, num_classes))
    args = (preds, target, num_classes, spacing, ignore_index, classes, mode, list(named.values()))
    out = _per_class(*args)
    return {key: out[..., i] for i, key in enumerate(named)}
