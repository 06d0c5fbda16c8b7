"""Hausdorff loss by erosion (Karimi and Salcudean, IEEE TMI 2019, "HD-ER").

The squared error map of each (image, class) is eroded ``iterations`` times on the pixel
grid (2-D or 3-D); what survives the k-th erosion sits about k pixels inside a region
where prediction and target disagree, and is weighted by ``k^alpha``, so large
disagreements (the ones a Hausdorff distance sees) cost more than thin ones:

    b_0 = (p - g)^2
    d_k = w * sum of b_{k-1} over the cross   (the pixel and its 2 (2-D) or 6 (3-D) axis
                                               neighbours, 0 outside; w = 1/5 or 1/7)
    e_k = d_k - 1/2 where d_k >= 1/2, else 0
    b_k = (e_k - min e_k) / (max e_k - min e_k)   min and max over the (image, class) map;
                                                   b_k = e_k where they are equal
    L   = sum_{k=1..iterations} k^alpha b_k

This is kornia's ``HausdorffERLoss`` (2-D) and ``HausdorffERLoss3D`` (3-D), whose kernel
is ``[[0, 1, 0], [1, 1, 1], [0, 1, 0]] / 5`` (and the 7-point cross / 7), including its
choices at the kinks: a pixel with ``d_k = 1/2`` exactly passes its gradient (``e_k =
d_k - 1/2`` there), and where several pixels share the min or the max of a map the
gradient through it splits evenly among them (``torch.amax``'s rule).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ._common import (
    check_choice,
    check_mode,
    check_number,
    checks_flags,
    reduce_pixels,
    region_inputs,
)
from .cldice import _cross, _neighbours, check_iterations


def erosion_steps(bound: torch.Tensor, iterations: int) -> Iterator[torch.Tensor]:
    """Yield ``b_k`` for k = 1 .. ``iterations`` from ``b_0 = bound [B, K, *S]`` (the module
    docstring's recursion)."""
    nd = bound.dim() - 2
    offsets = _cross(nd)
    for _ in range(iterations):
        dilated = _neighbours(bound, offsets, 0.0).sum(0) / len(offsets)
        eroded = (dilated - 0.5).masked_fill(dilated < 0.5, 0.0)
        low = eroded.amin(dim=tuple(range(2, eroded.dim())), keepdim=True)
        high = eroded.amax(dim=tuple(range(2, eroded.dim())), keepdim=True)
        spread = high - low
        scaled = (eroded - low) / torch.where(spread != 0, spread, 1.0)
        bound = torch.where(spread != 0, scaled, eroded)
        yield bound


def check_hausdorff_er_options(
    logits: torch.Tensor, mode: str, alpha: object, iterations: object, reduction: str
) -> tuple[float, int]:
    """The checked ``(alpha, iterations)`` of :func:`hausdorff_er_loss`, after its mode,
    reduction and a 2-D or 3-D image: ``alpha`` a finite real number >= 0, ``iterations``
    an int >= 1."""
    check_mode(mode, logits)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    if logits.dim() not in (4, 5):
        raise ValueError(
            f"the erosion Hausdorff loss needs 2-D or 3-D images, [B, C, H, W] or "
            f"[B, C, D, H, W]; got logits of shape {tuple(logits.shape)}"
        )
    alpha = check_number("alpha", alpha)
    iterations = check_iterations(iterations)
    if iterations == 0:
        raise ValueError("iterations must be >= 1, got 0")
    return alpha, iterations


@checks_flags
def hausdorff_er_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    alpha: float = 2.0,
    iterations: int = 10,
    include_background: bool = True,
    ignore_index: float | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
) -> torch.Tensor:
    """Erosion-based Hausdorff loss (HD-ER): ``L`` of the module docstring, per entry.

    ``p`` is the softmax (multiclass) or sigmoid (binary/multilabel) of ``logits``; ``g``
    the one-hot labels, the class probabilities of a float multiclass target of the
    logits' shape, or the (hard or soft) masks. The target takes no gradient. With the
    defaults this is kornia's ``HausdorffERLoss`` / ``HausdorffERLoss3D`` (``alpha=2``,
    ``k=10``) applied to ``softmax(logits)`` and integer labels (to its input itself with
    ``from_logits=False``: kornia takes probabilities).

    alpha: exponent of the weight ``k^alpha`` of the k-th erosion (>= 0; 0 weighs every
      erosion alike).
    iterations: the number of erosions (>= 1).
    include_background: False leaves class 0 out (ignored for one channel).
    ignore_index: ignored pixels (or mask entries) have no error of their own (``p = g =
      0`` there); the erosions still run over them, but their entries of ``L`` are left
      out of the sum and of the mean's count.
    reduction: 'mean' (over the valid entries of the kept classes), 'sum', or 'none'
      (``[B, K, *S]``, ignored entries 0).
    from_logits: False reads the input as ``p`` itself, as the region losses do (see
      ``segtriton.reference.dice_loss``: a counted entry outside [0, 1] is an error, or NaN
      in a kernel without ``validate``).
    """
    alpha, iterations = check_hausdorff_er_options(logits, mode, alpha, iterations, reduction)
    p, g, valid = region_inputs(logits, target, mode, ignore_index, from_logits)
    first = 0 if include_background or logits.shape[1] == 1 else 1
    p, g, valid = (v.view(logits.shape)[:, first:] for v in (p, g, valid))
    err = p - g.detach()
    loss = torch.zeros_like(err)
    for k, bound in enumerate(erosion_steps(err * err, iterations), start=1):
        loss = loss + k**alpha * bound
    loss = loss.masked_fill(~valid, 0.0)
    return reduce_pixels(loss, reduction, valid.sum())
