"""Deep supervision: one loss over the outputs of a network at several resolutions.

A U-Net trained the nnU-Net way (or MONAI's DynUNet; BraTS, KiTS, ...) returns one output
per decoder level, and the loss is a weighted sum of the same loss on each, the target
resampled to each output's size. :class:`DeepSupervisionLoss` wraps any loss, so
``DeepSupervisionLoss(kernels.CEDiceLoss(...))`` runs the Triton kernels at every level.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._common import SIGNED_TWIN, check_choice, check_number, check_numbers

WEIGHT_MODES = ("exp", "two", "same")


def resize_nearest(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``target`` with its last ``len(size)`` dims resampled to ``size`` by nearest-exact
    indexing (``F.interpolate(mode="nearest-exact")``'s source pixel: output index ``i``
    reads ``min(floor((i + 1/2) n / m), n - 1)`` of ``n`` in, ``m`` out), for any dtype:
    integer labels stay integers (no float round trip), and masks or class
    probabilities keep their values. No host sync."""
    size = [int(s) for s in size]
    lead = target.dim() - len(size)
    if lead < 1:
        raise ValueError(f"target {tuple(target.shape)} has fewer than {len(size) + 1} dims")
    if any(s < 1 for s in size):
        raise ValueError(f"cannot resample to size {size}")
    if (twin := SIGNED_TWIN.get(target.dtype)) is not None:  # indexed as its signed twin
        return resize_nearest(target.view(twin), size).view(target.dtype)
    for k, m in enumerate(size):
        dim = lead + k
        n = target.shape[dim]
        if n == m:
            continue
        # float32 index arithmetic, as torch's nearest-exact; made on the device
        pos = torch.arange(m, dtype=torch.float32, device=target.device) + 0.5
        src = (pos * (n / m)).floor().clamp_max(n - 1).long()
        target = target.index_select(dim, src)
    return target


class DeepSupervisionLoss(nn.Module):
    """``sum_l w_l loss(outputs[l], target_l)`` over deep-supervision levels ``l = 0, 1,
    ...`` (level 0 the full-resolution output), as MONAI's ``DeepSupervisionLoss``.

    loss: any loss ``loss(logits, target)`` returning one value: a module of
      ``segtriton.kernels`` or ``segtriton.reference``, or a function.
    weight_mode: the level weights when ``weights`` is None: 'exp' ``max(2^-l, 1/16)``
      (1, 0.5, 0.25, 0.125, 0.0625, 0.0625, ...), 'two' (1, 0.5, 0.5, ...) or 'same'
      (all 1). They are not normalised, as MONAI's; nnU-Net's are ``2^-l`` over all but
      the lowest level (weight 0), divided by their sum: pass those as ``weights``.
    weights: one finite weight >= 0 per level (at least as many as the outputs; MONAI
      falls back to ``weight_mode`` when too few are given, this raises).

    ``forward(outputs, target)``: ``outputs`` one tensor ``[B, C, *S]`` (then the plain
    loss) or a list or tuple of them at any sizes; ``target`` is the full-resolution
    target (labels ``[B, *S]``, or masks or class probabilities ``[B, C, *S]``), resampled
    to each output's spatial size by :func:`resize_nearest` (MONAI's nearest-exact), or a
    list of targets already at the outputs' sizes (nnU-Net's data loader makes those).
    """

    def __init__(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        weight_mode: str = "exp",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be callable (a loss module or function), got {loss!r}")
        check_choice("weight_mode", weight_mode, WEIGHT_MODES)
        if weights is not None:
            weights = [check_number("weights", w) for w in check_numbers("weights", weights)]
        self.loss = loss
        self.weight_mode = weight_mode
        self.weights = weights

    def level_weights(self, levels: int) -> list[float]:
        """The weights of ``levels`` levels."""
        if self.weights is not None:
            if len(self.weights) < levels:
                raise ValueError(f"{levels} outputs but {len(self.weights)} weights")
            return self.weights[:levels]
        if self.weight_mode == "exp":
            return [max(0.5**level, 0.0625) for level in range(levels)]
        if self.weight_mode == "two":
            return [1.0 if level == 0 else 0.5 for level in range(levels)]
        return [1.0] * levels

    def forward(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            if not isinstance(target, torch.Tensor):
                raise TypeError("one output tensor takes one target tensor, got a sequence")
            return self.loss(outputs, target)
        outputs = list(outputs)
        if not outputs:
            raise ValueError("outputs is empty: give one tensor per deep-supervision level")
        if isinstance(target, torch.Tensor):
            targets = [resize_nearest(target, out.shape[2:]) for out in outputs]
        else:
            targets = list(target)
            if len(targets) != len(outputs):
                raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        weights = self.level_weights(len(outputs))
        terms = [w * self.loss(o, t) for w, o, t in zip(weights, outputs, targets, strict=True)]
        return functools.reduce(operator.add, terms)
