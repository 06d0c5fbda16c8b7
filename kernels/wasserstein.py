"""Triton generalized Wasserstein Dice loss; semantics and formulas of
``segtriton.reference.generalized_wasserstein_dice_loss``, plus ``validate``.

Pass 1 (a Triton kernel) returns, per (image, class), the labelled pixels ``V`` and the
sum ``W`` of their distances ``w_i``, from per-program partial rows added in a fixed
order; a one-program-per-image Triton finalize turns those ``[B, C]`` sums into the loss
and ``dL/dW`` per (image, class); pass 2 (the backward) recomputes the softmax and writes
``dL/dz`` once, with ``dL/dW`` times the image's grad_output. No ``[B, C, C]`` or
``[B, C, pixels]`` temporary (MONAI gathers a row of the distance matrix for every pixel,
``B * C * pixels`` floats), no host sync unless ``validate=True``
(which reads the labels and a tensor ``dist_matrix`` and raises ``ValueError`` on bad
values; without it a label outside ``[0, C)`` makes its image's loss NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segtriton.reference._common import (
    check_choice,
    check_constant,
    check_number,
    checked_target,
)
from segtriton.reference.wasserstein import class_distances

from ._ops import op
from ._runtime import kernel_api
from ._tiles import (
    STAGES,
    TILES_PER_PROGRAM,
    class_blocks,
    finalize_block,
    grad_like,
    ignore_arg,
    loss_views,
    num_warps_for,
    pixel_view,
    spatial_size,
    tile_chunks,
    tile_grid,
)
from ._wasserstein_kernels import _wass_finalize_kernel, _wass_grad_kernel, _wass_stats_kernel


def _wass_sums(
    logits: torch.Tensor, target: torch.Tensor, dist: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """Pass 1: ``[B, 2, C]`` fp32 ``(V, W)`` per image and class."""
    x, t, (sxb, sxc, sxs, stb, _, sts) = loss_views(logits, target, True)
    B, C = x.shape[:2]
    S = spatial_size(x)
    block_c, block_p, single = class_blocks(C)
    tiles_per_chunk, n_chunks = tile_chunks(S, block_p, B)
    part = torch.empty(B * n_chunks * 2 * C, dtype=torch.float32, device=x.device)
    _wass_stats_kernel[(B * n_chunks,)](
        x, t, dist, part, C, S, n_chunks, tiles_per_chunk, sxb, sxc, sxs, stb, sts,
        ignore_arg(ignore_index, True)[0],
        SINGLE=single, STAGES=STAGES, BLOCK_C=block_c, BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )  # fmt: skip
    return part.view(B, n_chunks, 2, C).sum(1)


@op("segtriton::wasserstein_loss")
def _wass_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dist: torch.Tensor,
    ignore_index: int | None,
    gdl: bool,
    smooth_nr: float,
    smooth_dr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1 and the finalize: fp32 loss per image ``[B]`` and ``dL_b/dW_bc`` ``[B, C]``."""
    sums = _wass_sums(logits, target, dist, ignore_index)
    B, C = sums.shape[0], sums.shape[2]
    loss = sums.new_empty(B)
    coef = sums.new_empty((B, C))
    _wass_finalize_kernel[(B,)](
        sums, loss, coef, C, smooth_nr, smooth_dr, GDL=gdl, BLOCK=finalize_block(C)
    )
    return loss, coef


@_wass_loss.register_fake
def _(logits, target, dist, ignore_index, gdl, smooth_nr, smooth_dr):
    B, C = logits.shape[:2]
    return logits.new_empty(B, dtype=torch.float32), logits.new_empty((B, C), dtype=torch.float32)


@op("segtriton::wasserstein_grad")
def _wass_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    dist: torch.Tensor,
    coef: torch.Tensor,
    ignore_index: int | None,
) -> torch.Tensor:
    """Pass 2: ``dL/dz`` in the logits' dtype from ``coef [B, C] = dL/dW``."""
    x, t, (sxb, sxc, sxs, stb, _, sts) = loss_views(logits, target, True)
    grad = grad_like(logits)
    g, sgb, sgc, sgs = pixel_view(grad)
    C, S, n_pblocks, n_blocks, n_programs, (block_c, block_p, single) = tile_grid(x)
    _wass_grad_kernel[(n_programs,)](
        x, t, dist, coef, g, C, S, n_pblocks, n_blocks, sxb, sxc, sxs, stb, sts, sgb, sgc, sgs,
        ignore_arg(ignore_index, True)[0],
        SINGLE=single, TILES=TILES_PER_PROGRAM, STAGES=STAGES, BLOCK_C=block_c,
        BLOCK_P=block_p, num_warps=num_warps_for(block_c, block_p),
    )  # fmt: skip
    return grad


@_wass_grad.register_fake
def _(logits, target, dist, coef, ignore_index):
    return grad_like(logits)


def _setup(ctx, inputs, output):
    logits, target, dist, ctx.ignore_index = inputs[:4]
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(logits, target, dist, output[1])


def _backward(ctx, grad_loss, _grad_coef):
    logits, target, dist, coef = ctx.saved_tensors
    coef = (coef * grad_loss.to(torch.float32)[:, None]).contiguous()
    grad = _wass_grad(logits, target, dist, coef, ctx.ignore_index)
    return (grad,) + (None,) * 6


_wass_loss.register_autograd(_backward, _setup)


@kernel_api
def generalized_wasserstein_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dist_matrix: torch.Tensor | Sequence[Sequence[float]] | None = None,
    weighting_mode: str = "default",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    ignore_index: int | None = None,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Triton generalized Wasserstein Dice loss; semantics of
    ``segtriton.reference.generalized_wasserstein_dice_loss``, with
    ``TP = sum_c a_c (V_c - W_c)`` and ``D`` from the sums (see the finalize kernel)."""
    check_choice("weighting_mode", weighting_mode, ("default", "GDL"))
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    smooth_nr = check_number("smooth_nr", smooth_nr)
    smooth_dr = check_number("smooth_dr", smooth_dr)
    target = checked_target(logits, target, True, ignore_index, validate)
    if isinstance(dist_matrix, torch.Tensor):
        check_constant("dist_matrix", dist_matrix)
    C = logits.shape[1]
    like = logits.new_empty(0, dtype=torch.float32)
    dist = class_distances(dist_matrix, C, like, validate).contiguous()
    ignore = None if ignore_index is None else int(ignore_index)
    gdl = weighting_mode == "GDL"
    loss = _wass_loss(logits, target, dist, ignore, gdl, smooth_nr, smooth_dr)[0]
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
