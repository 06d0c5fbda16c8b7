"""Triton region losses: soft Dice, Jaccard, Tversky, focal Tversky, generalized Dice.

Same signatures and semantics as ``segtriton.reference`` (formulas there), plus
``validate`` and ``process_group``. How they run:

- Pass 1 (a Triton kernel) reads the logits and the target once and returns the sums
  ``I, P, T`` per (image, class) in fp32, from per-program partial rows added in a fixed
  order: no one-hot, no float atomics, bitwise deterministic.
- The loss is the reference's formula applied to those ``[B, C]`` sums (tiny tensors);
  autograd through it gives ``a = dL/dI`` and ``b = dL/dP`` per (image, class).
- Pass 2 (the backward, a Triton kernel) recomputes the probabilities and writes
  ``dL/dz`` once. Nothing of pixel size is saved between the passes.
- No host synchronisation unless ``validate=True`` (which reads the labels / masks and
  the weight vectors and raises ``ValueError`` on bad values); without it a label outside
  ``[0, C)`` or a mask value outside [0, 1] makes the loss NaN.
- ``process_group`` (torch.distributed, scope 'batch'): the per-class sums are
  all-reduced before the formula, as in the reference (see its docstrings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import triton

from segtriton.reference import region as ref_region
from segtriton.reference._common import (
    check_choice,
    check_mode,
    checked_target,
)

from ._region_kernels import _region_grad_kernel, _region_stats_kernel
from ._tiles import (
    MAX_SINGLE_C,
    class_blocks,
    ignore_arg,
    label_view,
    num_warps_for,
    pixel_view,
)

PIXEL_SOFTMAX, PIXEL_SIGMOID = 1, 2  # compound pixel terms fused into the two passes
_PROGRAMS = 1024  # pass-1 programs per launch (each sums a contiguous run of pixel tiles)

Weights = torch.Tensor | Sequence[float] | None


def _views(logits, target, labels):
    x, sxb, sxc, sxs = pixel_view(logits)
    if labels:
        t, stb, sts = label_view(target)
        stc = 0
    else:
        t, stb, stc, sts = pixel_view(
            target.view(torch.uint8) if target.dtype == torch.bool else target
        )
    return x, t, (sxb, sxc, sxs, stb, stc, sts)


@torch.library.custom_op("segtriton::region_stats", mutates_args=())
def _region_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    labels: bool,
    ignore_index: float | None,
    squared: bool,
    pixel: int,
    w: torch.Tensor | None,
    w2: torch.Tensor | None,
    smoothing: float,
    gamma: float,
    scale: float,
    alpha: float | None,
    focal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1: ``[B, 3, C]`` fp32 sums ``I, P, T`` per image and class, and ``[B, 2]``: the
    pixel term's loss sum and 'mean' divisor per image (zeros when ``pixel`` is 0)."""
    x, t, strides = _views(logits, target, labels)
    B, C = x.shape[:2]
    S = x[0, 0].numel()
    block_c, block_p, single = class_blocks(C)
    n_tiles = triton.cdiv(S, block_p)
    tiles_per_chunk = triton.cdiv(n_tiles, min(n_tiles, max(1, _PROGRAMS // B)))
    n_chunks = triton.cdiv(n_tiles, tiles_per_chunk)
    row = 3 * C + 2
    part = torch.empty(B * n_chunks * row, dtype=torch.float32, device=x.device)
    ign, has_ignore = ignore_arg(ignore_index, labels)
    _region_stats_kernel[(B * n_chunks,)](
        x,
        t,
        part,
        w,
        w2,
        C,
        S,
        n_chunks,
        tiles_per_chunk,
        *strides,
        ign,
        smoothing,
        gamma,
        scale,
        0.0 if alpha is None else alpha,
        **_flags(labels, has_ignore, squared, single, pixel, focal, w, alpha),
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )
    total = part.view(B, n_chunks, row).sum(1)
    sums = total[:, : 3 * C].reshape(B, 3, C).contiguous()
    return sums, total[:, 3 * C :].clone()  # outputs may not alias each other


def _flags(labels, has_ignore, squared, single, pixel, focal, w, alpha):
    if pixel == PIXEL_SOFTMAX and not single:
        raise ValueError(f"the fused softmax term needs C <= {MAX_SINGLE_C} (one class tile)")
    return {
        "LABELS": labels,
        "HAS_IGNORE": has_ignore,
        "SQUARED": squared,
        "SINGLE": single,
        "PIXEL": pixel,
        "IS_FOCAL": focal,
        "HAS_W": w is not None,
        "HAS_ALPHA": alpha is not None,
    }


@_region_stats.register_fake
def _(
    logits,
    target,
    labels,
    ignore_index,
    squared,
    pixel,
    w,
    w2,
    smoothing,
    gamma,
    scale,
    alpha,
    focal,
):
    B, C = logits.shape[:2]
    return logits.new_empty((B, 3, C), dtype=torch.float32), logits.new_empty(
        (B, 2), dtype=torch.float32
    )


@torch.library.custom_op("segtriton::region_grad", mutates_args=())
def _region_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    coef: torch.Tensor,
    kpix: torch.Tensor,
    labels: bool,
    ignore_index: float | None,
    squared: bool,
    pixel: int,
    w: torch.Tensor | None,
    w2: torch.Tensor | None,
    smoothing: float,
    gamma: float,
    scale: float,
    alpha: float | None,
    focal: bool,
) -> torch.Tensor:
    """Pass 2: ``dL/dz`` in the logits' dtype from ``coef [B, 2, C]`` (``dL/dI``, ``dL/dP``)
    and ``kpix [B]`` (dL / d pixel-loss sum)."""
    x, t, strides = _views(logits, target, labels)
    grad = torch.empty_like(logits)
    g, sgb, sgc, sgs = pixel_view(grad)
    B, C = x.shape[:2]
    S = x[0, 0].numel()
    block_c, block_p, single = class_blocks(C)
    n_pblocks = triton.cdiv(S, block_p)
    ign, has_ignore = ignore_arg(ignore_index, labels)
    _region_grad_kernel[(B * n_pblocks,)](
        x,
        t,
        coef,
        kpix,
        g,
        w,
        w2,
        C,
        S,
        n_pblocks,
        *strides,
        sgb,
        sgc,
        sgs,
        ign,
        smoothing,
        gamma,
        scale,
        0.0 if alpha is None else alpha,
        **_flags(labels, has_ignore, squared, single, pixel, focal, w, alpha),
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )
    return grad


@_region_grad.register_fake
def _(logits, target, coef, kpix, *params):
    return torch.empty_like(logits)


def _setup(ctx, inputs, output):
    logits, target, *ctx.params = inputs
    ctx.save_for_backward(logits, target)


def _backward(ctx, grad_sums, grad_pix):
    logits, target = ctx.saved_tensors
    coef = grad_sums[:, :2].to(torch.float32).contiguous()
    kpix = grad_pix[:, 0].to(torch.float32).contiguous()
    grad = _region_grad(logits, target, coef, kpix, *ctx.params)
    return (grad,) + (None,) * (len(ctx.params) + 1)


torch.library.register_autograd("segtriton::region_stats", _backward, setup_context=_setup)


def _region_sums(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: float | None,
    scope: str,
    squared: bool,
    validate: bool,
    process_group: dist.ProcessGroup | None,
    pixel: int = 0,
    w: torch.Tensor | None = None,
    w2: torch.Tensor | None = None,
    smoothing: float = 0.0,
    gamma: float = 0.0,
    scale: float = 1.0,
    alpha: float | None = None,
    focal: bool = False,
) -> tuple[ref_region.RegionStats, torch.Tensor]:
    """Checked inputs through pass 1: the region sums per unit and ``[2]`` (pixel-loss sum
    and divisor over the batch; zeros without a pixel term)."""
    check_choice("scope", scope, ("batch", "image"))
    check_mode(mode, logits)
    labels = mode == "multiclass"
    target = checked_target(logits, target, labels, ignore_index, validate)
    ignore = None if ignore_index is None else float(ignore_index)
    sums, pix = _region_stats(
        logits, target, labels, ignore, squared, pixel, w, w2, smoothing, gamma, scale, alpha, focal
    )
    sums = sums.movedim(1, 0)
    if scope == "batch":
        sums = sums.sum(1)
    stats = ref_region.stats_from_sums(ref_region.global_sums(sums, scope, process_group))
    return stats, pix.sum(0)


def region_stats(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: float | None,
    scope: str,
    squared: bool = False,
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> ref_region.RegionStats:
    """The sums of :func:`segtriton.reference.region_stats` from the Triton pass 1,
    differentiable (the backward is pass 2). See the module docstring for ``validate``
    and ``process_group``."""
    return _region_sums(
        logits, target, mode, ignore_index, scope, squared, validate, process_group
    )[0]


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    squared: bool = False,
    log_loss: bool = False,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton soft Dice loss; semantics of ``segtriton.reference.dice_loss``."""
    stats = region_stats(
        logits, target, mode, ignore_index, scope, squared, validate, process_group
    )
    return ref_region.dice_from_stats(
        stats, smooth_nr, smooth_dr, eps, log_loss, absent, weight, reduction, validate
    )


def jaccard_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    squared: bool = False,
    log_loss: bool = False,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton soft Jaccard loss; semantics of ``segtriton.reference.jaccard_loss``."""
    stats = region_stats(
        logits, target, mode, ignore_index, scope, squared, validate, process_group
    )
    return ref_region.jaccard_from_stats(
        stats, smooth_nr, smooth_dr, eps, log_loss, absent, weight, reduction, validate
    )


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton Tversky loss; semantics of ``segtriton.reference.tversky_loss``."""
    stats = region_stats(logits, target, mode, ignore_index, scope, False, validate, process_group)
    return ref_region.tversky_from_stats(
        stats, alpha, beta, smooth_nr, smooth_dr, eps, absent, weight, reduction, validate
    )


def focal_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float | torch.Tensor | Sequence[float] = 0.75,
    gamma_after_mean: bool = False,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    scope: str = "batch",
    absent: str = "include",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton focal Tversky loss; semantics of ``segtriton.reference.focal_tversky_loss``."""
    stats = region_stats(logits, target, mode, ignore_index, scope, False, validate, process_group)
    return ref_region.focal_tversky_from_stats(
        stats,
        alpha,
        beta,
        gamma,
        gamma_after_mean,
        smooth_nr,
        smooth_dr,
        eps,
        absent,
        weight,
        reduction,
        validate,
    )


def generalized_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    weight_type: str = "square",
    absent_weight: str = "max",
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    eps: float = 1e-7,
    scope: str = "batch",
    ignore_index: float | None = None,
    weight: Weights = None,
    reduction: str = "mean",
    validate: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Triton generalized Dice loss; semantics of
    ``segtriton.reference.generalized_dice_loss``."""
    stats = region_stats(logits, target, mode, ignore_index, scope, False, validate, process_group)
    return ref_region.generalized_dice_from_stats(
        stats, weight_type, absent_weight, smooth_nr, smooth_dr, eps, weight, reduction, validate
    )
