"""Soft clDice (Shit et al., CVPR 2021): the Dice of each mask with the other's skeleton.

The soft skeleton of a map ``x`` (probabilities, or a 0/1 or soft target) comes from
iterated grey-level morphology on the pixel grid (2-D or 3-D):

    erode(x)   = min of x over the cross: the pixel and its 2 (2-D) or 6 (3-D) axis
                 neighbours
    dilate(x)  = max of x over the 3x3 (3x3x3) cube around the pixel
    x_0 = x,  x_{k+1} = erode(x_k)
    delta_k = relu(x_k - dilate(x_{k+1}))                 for k = 0 .. iterations
    s_0 = delta_0,  s_k = s_{k-1} + relu(delta_k - s_{k-1} delta_k)

and the skeleton is ``s_iterations``. Neighbours outside the image take no part. This is
MONAI's ``soft_skel`` (and jocpae/clDice's), written with one tie rule that the Triton
kernels follow as well: where several neighbours hold the extreme value, the first in a
fixed order wins (erosion: the pixel itself, then -1 and +1 along each axis in turn;
dilation: the cube in row-major order). Max-pooling breaks ties its own way; on inputs
without ties the two give the same values and gradients.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ._common import check_choice, check_mode, check_number, checks_flags, region_inputs


def _cross(nd: int) -> list[tuple[int, ...]]:
    """The pixel, then its neighbours at -1 and +1 along each axis in turn."""
    steps = [tuple(s if a == axis else 0 for a in range(nd)) for axis in range(nd) for s in (-1, 1)]
    return [(0,) * nd, *steps]


def _cube(nd: int) -> list[tuple[int, ...]]:
    return list(itertools.product((-1, 0, 1), repeat=nd))


def _neighbours(x: torch.Tensor, offsets: list[tuple[int, ...]], fill: float) -> torch.Tensor:
    """``[len(offsets), *x.shape]``: ``x`` shifted so that entry ``k`` at a pixel holds the
    neighbour at ``offsets[k]`` (``fill`` outside the image)."""
    nd = len(offsets[0])
    size = x.shape[-nd:]
    padded = F.pad(x, (1, 1) * nd, value=fill)
    lead = (slice(None),) * (x.ndim - nd)
    views = [
        padded[lead + tuple(slice(1 + o, 1 + o + n) for o, n in zip(off, size, strict=True))]
        for off in offsets
    ]
    return torch.stack(views)


def soft_erode(x: torch.Tensor, nd: int) -> torch.Tensor:
    """Min over the cross of the last ``nd`` dims (first minimum in :func:`_cross` order)."""
    return _neighbours(x, _cross(nd), torch.inf).min(0).values


def soft_dilate(x: torch.Tensor, nd: int) -> torch.Tensor:
    """Max over the cube of the last ``nd`` dims (first maximum in row-major order)."""
    return _neighbours(x, _cube(nd), -torch.inf).max(0).values


def soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """The soft skeleton of ``x [B, C, *S]`` (S 2-D or 3-D) after ``iterations`` erosions
    (the module docstring's recursion)."""
    nd = x.dim() - 2
    eroded = soft_erode(x, nd)
    skel = F.relu(x - soft_dilate(eroded, nd))
    for _ in range(iterations):
        x = eroded
        eroded = soft_erode(x, nd)
        delta = F.relu(x - soft_dilate(eroded, nd))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def check_iterations(iterations: object) -> int:
    """``iterations`` as an int >= 0."""
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    return iterations


def check_cldice_options(
    logits: torch.Tensor,
    mode: str,
    iterations: object,
    smoothing: tuple[object, object, object],
    scope: str,
    reduction: str,
) -> tuple[int, list[float]]:
    """The checked ``iterations`` and ``(smooth_nr, smooth_dr, smooth)`` of
    :func:`cldice_loss`, after its mode, scope and reduction, and a 2-D or 3-D image.
    ``smooth_dr`` and ``smooth`` must be > 0 (a ratio of an empty skeleton is 0 / 0
    otherwise), ``smooth_nr`` >= 0."""
    check_mode(mode, logits)
    check_choice("scope", scope, ("image", "batch"))
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    if logits.dim() not in (4, 5):
        raise ValueError(
            f"clDice needs 2-D or 3-D images, [B, C, H, W] or [B, C, D, H, W]; "
            f"got logits of shape {tuple(logits.shape)}"
        )
    names = ("smooth_nr", "smooth_dr", "smooth")
    values = [check_number(n, v) for n, v in zip(names, smoothing, strict=True)]
    for name, value in zip(names[1:], values[1:], strict=True):
        if value == 0:  # an empty skeleton would divide 0 by 0
            raise ValueError(f"{name} must be > 0, got 0")
    return check_iterations(iterations), values


def cldice_ratios(
    sums: torch.Tensor, smooth_nr: float, smooth_dr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Tprec, Tsens)`` per unit from ``sums [..., 4]``: (skel(p) . g, skel(p),
    skel(g) . p, skel(g)) summed over the unit's classes and pixels."""
    tprec = (sums[..., 0] + smooth_nr) / (sums[..., 1] + smooth_dr)
    tsens = (sums[..., 2] + smooth_nr) / (sums[..., 3] + smooth_dr)
    return tprec, tsens


def cldice_from_sums(
    sums: torch.Tensor, smooth_nr: float, smooth_dr: float, smooth: float
) -> torch.Tensor:
    """``1 - clDice`` per unit from the sums of :func:`cldice_ratios`."""
    tprec, tsens = cldice_ratios(sums, smooth_nr, smooth_dr)
    return 1 - 2 * tprec * tsens / (tprec + tsens + smooth)


@checks_flags
def cldice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    iterations: int = 3,
    smooth_nr: float = 1.0,
    smooth_dr: float = 1.0,
    smooth: float = 1e-4,
    scope: str = "image",
    include_background: bool = True,
    ignore_index: float | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
) -> torch.Tensor:
    """Soft clDice loss, ``1 - clDice`` per unit (an image, or the batch)::

        Tprec = (sum skel(p) g + smooth_nr) / (sum skel(p) + smooth_dr)
        Tsens = (sum skel(g) p + smooth_nr) / (sum skel(g) + smooth_dr)
        loss  = 1 - 2 Tprec Tsens / (Tprec + Tsens + smooth)

    ``p`` is the softmax (multiclass) or sigmoid (binary/multilabel) of ``logits``, ``g``
    the one-hot labels, the class probabilities of a float multiclass target of the
    logits' shape, or the (hard or soft) masks; ``skel`` is :func:`soft_skeleton` with
    ``iterations`` erosions, the target's taking no gradient. Sums run over the unit's
    classes and pixels (one clDice per unit, not per class). MONAI's ``SoftclDiceLoss``
    with the defaults (``iter_=3``, ``smooth_nr = smooth_dr = 1``, ``smooth=1e-4``,
    per image) is this loss (from logits with its ``softmax=True`` or ``sigmoid=True``;
    on probabilities, its default, with ``from_logits=False``).

    smooth_nr, smooth_dr, smooth: >= 0, > 0 and > 0.
    scope: 'image' (one loss per image, as MONAI) or 'batch' (sums over the whole batch,
      as the original clDice code).
    include_background: False leaves class 0 out of both skeletons and the sums (ignored
      for one channel, as MONAI).
    ignore_index: ignored pixels (or mask entries) are 0 in both ``p`` and ``g`` before
      skeletonising, so they add to no sum and take no gradient.
    reduction: 'mean' or 'sum' over units, or 'none' (``[B]`` for 'image', ``[1]`` for
      'batch').
    from_logits: False reads the input as ``p`` itself, as the region losses do (see
      ``segtriton.reference.dice_loss``: a counted entry outside [0, 1] is an error, or NaN
      in a kernel without ``validate``).
    """
    iterations, (smooth_nr, smooth_dr, smooth) = check_cldice_options(
        logits, mode, iterations, (smooth_nr, smooth_dr, smooth), scope, reduction
    )
    p, g, _ = region_inputs(logits, target, mode, ignore_index, from_logits)
    first = 0 if include_background or logits.shape[1] == 1 else 1
    p = p.view(logits.shape)[:, first:]
    g = g.view(logits.shape)[:, first:]
    skel_p = soft_skeleton(p, iterations)
    skel_g = soft_skeleton(g.detach(), iterations)
    terms = torch.stack([skel_p * g, skel_p, skel_g * p, skel_g], dim=-1)
    sums = terms.flatten(0 if scope == "batch" else 1, -2).sum(-2)
    loss = cldice_from_sums(sums.view(-1, 4), smooth_nr, smooth_dr, smooth)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
