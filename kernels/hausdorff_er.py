"""The erosion Hausdorff loss (HD-ER) on the GPU: the erosions in Triton, forward and
backward.

``hausdorff_er_loss`` has the semantics of ``segtriton.reference.hausdorff_er_loss``.
kornia loops over the classes in Python and, per erosion, runs a convolution, a clamp,
two global reductions and a normalisation, each a tensor that autograd keeps. Here one
kernel in front reads the logits and the target in place (any layout, any label dtype)
and writes ``p - g`` of the kept classes and, with ``ignore_index``, an int8 valid flag;
then one stencil kernel per erosion reads the previous level (normalising it on the fly
with that level's per-(image, class) min and max) and writes ``r_k = d_k - 1/2``, the
partial min, max and loss sums of its programs; a one-row-per-unit kernel reduces the
partial minima and maxima. The forward keeps ``r_k`` of every level (float32) for the
backward, which runs the levels from the deepest, each kernel gathering ``dL/dd`` of the
level above over the cross (no atomics: bitwise reproducible) and writing its own with
the partial sums that the min / max terms need, which a second small kernel turns into
the terms of the tied entries; the last level turns ``dL/dp`` into ``dL/dz`` through the
softmax (sigmoid) in the logits' dtype. Two launches per level each way, no host sync.
"""

from __future__ import annotations

import math

import torch

from segtriton.reference import hausdorff_er as ref_hder

from ._erosion_kernels import (
    _erosion_grad_kernel,
    _erosion_level_kernel,
    _extrema_kernel,
    _tie_coef_kernel,
)
from ._ops import op
from ._runtime import kernel_api
from ._tiles import activation, cdiv, grad_like, ignore_value, next_pow2
from .cldice import _front, _geometry, _kept_shape, front_inputs

# The erosion kernels compare values for exact ties (a unit's min and max, whose gradient
# is split among the entries tied with them): built without FMA contraction, so that
# entries the reference ties in float64 stay tied in float32. With contraction, on an
# H200 (2026-12-04, Triton 3.6), the tied-minimum test's gradient was 1.16 where the
# reference gives 0.76; without it, it passed.
_EXACT = {"enable_fp_fusion": False}

# pixels per program (BLOCK_N of each of BLOCK_U units) at 8 warps: 8 per thread in the
# forward, 4 in the backward, whose gather holds more per pixel. Compiled for sm_90 at
# [2, 2, 512, 512], [1, 2, 64, 64, 64] and [2, 19, 128, 256] (one map per tile): at most
# 127 and 102 registers, 16 warps per SM; small maps sharing a tile take up to 146 in the
# backward (8 warps per SM; `segtriton compile --quick`); no spill
FORWARD_BLOCK, BACKWARD_BLOCK, WARPS = 2048, 1024, 8
UNIT_ROWS = 128  # partial rows of a unit that a per-level reduction takes at a time


def _tiling(U: int, N: int, block: int) -> tuple[int, dict]:
    """``(programs, meta)`` of the ``[BLOCK_U, BLOCK_N]`` tiles of ``block`` pixels covering
    ``U`` maps of ``N`` pixels, and the pixel blocks per map in ``meta['n_blocks']``."""
    block_n = min(next_pow2(N), block)
    block_u = min(block // block_n, next_pow2(U))
    n_blocks = cdiv(N, block_n)
    meta = {"BLOCK_U": block_u, "BLOCK_N": block_n, "n_blocks": n_blocks, "num_warps": WARPS}
    return cdiv(U, block_u) * n_blocks, meta


def _unit_tiling(U: int, n_blocks: int) -> tuple[int, dict]:
    """``(programs, meta)`` of the per-level kernels that reduce the ``n_blocks`` partial
    rows of each of ``U`` units (a fixed order for a given ``n_blocks``)."""
    block_b = min(next_pow2(n_blocks), UNIT_ROWS)
    block_u = min(next_pow2(U), 1024 // block_b)
    return cdiv(U, block_u), {"BLOCK_U": block_u, "BLOCK_B": block_b, "num_warps": 4}


def _level_weights(alpha: float, iterations: int) -> list[float]:
    """``k^alpha`` for k = 1 .. iterations."""
    return [float(k) ** alpha for k in range(1, iterations + 1)]


@op("segtriton::hausdorff_er")
def _hder_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    act: int,
    first: int,
    alpha: float,
    iterations: int,
    ignore_index: float | None,
    per_entry: bool,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, count, r, lohi, err, valid)``: the float32 loss map ``[B, K, *S]``
    (``per_entry``) or the per-unit sums of ``L`` over valid entries ``[U]``; the count of
    valid entries; and for the backward (empty without ``need_grad``) ``r_k`` of every
    level ``[iterations, U N]``, the per-unit min and max of each ``e_k``
    ``[iterations, 2, U]``, ``p - g`` ``[U N]`` and the int8 valid flags (empty without
    ``ignore_index``)."""
    shape = _kept_shape(logits, first)
    N, D0, D1, D2 = _geometry(shape)
    U = shape[0] * shape[1]
    dev = logits.device
    err = torch.empty(U * N, dtype=torch.float32, device=dev)
    has_valid = ignore_index is not None
    valid = torch.empty(U * N if has_valid else 0, dtype=torch.int8, device=dev)
    bad = _front(logits, target, act, first, ignore_index, err, valid, error=True)
    bad = bad.to(torch.int32).view(1)
    rows = iterations if need_grad else min(iterations, 2)
    r = torch.empty(rows, U * N, dtype=torch.float32, device=dev)
    lohi = torch.empty(iterations, 2, U, dtype=torch.float32, device=dev)
    programs, tiles = _tiling(U, N, FORWARD_BLOCK)
    n_blocks = tiles["n_blocks"]
    part = torch.empty(iterations + 1, U * n_blocks, 3, dtype=torch.float32, device=dev)
    loss_map = torch.empty(shape if per_entry else 0, dtype=torch.float32, device=dev)
    weights = _level_weights(alpha, iterations)
    meta = {"HAS_VALID": has_valid, "THREE_D": len(shape) == 5, **tiles}
    units, unit_meta = _unit_tiling(U, n_blocks)
    for k in range(1, iterations + 2):  # level k from b_{k-1}; the last one only sums
        src = err if k == 1 else r[(k - 2) % rows]
        _erosion_level_kernel[(programs,)](
            src, lohi[max(k - 2, 0)], r[(k - 1) % rows], valid, bad, part[k - 1], loss_map,
            U, N, D0, D1, D2, w_prev=weights[k - 2] if k > 1 else 0.0, FIRST=k == 1,
            TAIL=k == iterations + 1, MAP=per_entry and k > 1, MAP_INIT=k == 2, **meta, **_EXACT,
        )  # fmt: skip
        if k <= iterations:
            _extrema_kernel[(units,)](part[k - 1], lohi[k - 1], U, n_blocks, **unit_meta, **_EXACT)
    sums = part[..., 2].view(iterations + 1, U, n_blocks).double().sum(-1)
    count = sums[0].sum().float()
    if per_entry:
        loss = loss_map
    else:
        loss = sums[1:].sum(0).float()
        loss = torch.where(bad.bool(), torch.nan, loss)
    if not need_grad:
        r, lohi, err = (t.new_empty(0) for t in (r, lohi, err))
        valid = valid.new_empty(0)
    return loss, count, r, lohi, err, valid


@_hder_op.register_fake
def _(logits, target, act, first, alpha, iterations, ignore_index, per_entry, need_grad):
    shape = _kept_shape(logits, first)
    U, UN = shape[0] * shape[1], math.prod(shape)
    f32 = {"dtype": torch.float32}
    keep = need_grad
    return (
        logits.new_empty(shape if per_entry else (U,), **f32),
        logits.new_empty((), **f32),
        logits.new_empty((iterations, UN) if keep else 0, **f32),
        logits.new_empty((iterations, 2, U) if keep else 0, **f32),
        logits.new_empty(UN if keep else 0, **f32),
        logits.new_empty(UN if keep and ignore_index is not None else 0, dtype=torch.int8),
    )


@op("segtriton::hausdorff_er_grad")
def _hder_grad_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: torch.Tensor,
    r: torch.Tensor,
    lohi: torch.Tensor,
    err: torch.Tensor,
    valid: torch.Tensor,
    act: int,
    first: int,
    alpha: float,
    iterations: int,
    ignore_index: float | None,
    per_entry: bool,
) -> torch.Tensor:
    """``dL/dz`` in the logits' dtype and layout, from ``gamma = dL/dloss`` (per entry or
    per unit) and what :func:`_hder_op` kept."""
    shape = _kept_shape(logits, first)
    N, D0, D1, D2 = _geometry(shape)
    U = shape[0] * shape[1]
    dev = logits.device
    programs, tiles = _tiling(U, N, BACKWARD_BLOCK)
    n_blocks = tiles["n_blocks"]
    gamma = gamma.to(torch.float32).contiguous()
    u = torch.empty(2, U * N, dtype=torch.float32, device=dev)
    part = torch.empty(U * n_blocks, 4, dtype=torch.float32, device=dev)
    coef = torch.empty(U, 2, dtype=torch.float32, device=dev)  # level k + 1's, then k's
    weights = _level_weights(alpha, iterations)
    units, unit_meta = _unit_tiling(U, n_blocks)
    meta = {
        "HAS_VALID": valid.numel() > 0, "PER_ENTRY": per_entry, "THREE_D": len(shape) == 5,
        **tiles,
    }  # fmt: skip
    for k in range(iterations, -1, -1):
        top, bottom = k == iterations, k == 0
        nxt = min(k, iterations - 1)  # level k + 1's row (unused at the top)
        _erosion_grad_kernel[(programs,)](
            r[max(k - 1, 0)], lohi[max(k - 1, 0)], r[nxt], lohi[nxt], coef, u[(k + 1) % 2],
            u[k % 2], valid, gamma, err, part, U, N, D0, D1, D2,
            w_k=weights[k - 1] if k > 0 else 0.0, TOP=top, BOTTOM=bottom, **meta, **_EXACT,
        )  # fmt: skip
        if not bottom:
            _tie_coef_kernel[(units,)](part, lohi[k - 1], coef, U, n_blocks, **unit_meta, **_EXACT)
    grad = grad_like(logits)
    return _front(logits, target, act, first, ignore_index, err, valid, u[0].view(shape), out=grad)


@_hder_grad_op.register_fake
def _(logits, target, gamma, r, lohi, err, valid, act, first, alpha, iterations,
      ignore_index, per_entry):  # fmt: skip
    return grad_like(logits)


def _setup(ctx, inputs, output):
    logits, target, *ctx.params = inputs
    _, count, r, lohi, err, valid = output
    ctx.mark_non_differentiable(count, r, lohi, err, valid)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(logits, target, r, lohi, err, valid)


def _backward(ctx, grad_loss, *_):
    logits, target, r, lohi, err, valid = ctx.saved_tensors
    act, first, alpha, iterations, ignore_index, per_entry, _ = ctx.params
    grad = _hder_grad_op(
        logits, target, grad_loss, r, lohi, err, valid, act, first, alpha, iterations,
        ignore_index, per_entry,
    )  # fmt: skip
    return (grad,) + (None,) * 8


_hder_op.register_autograd(_backward, _setup)


@kernel_api
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
    validate: bool = False,
) -> torch.Tensor:
    """Triton erosion Hausdorff loss; semantics of
    ``segtriton.reference.hausdorff_er_loss`` (see the module docstring for how it runs).
    No host sync. Returns float32. ``validate=True`` checks the labels / masks on the host
    first; otherwise a label or mask value out of range makes the loss NaN."""
    alpha, iterations = ref_hder.check_hausdorff_er_options(
        logits, mode, alpha, iterations, reduction
    )
    target, labels, first = front_inputs(
        logits, target, mode, include_background, ignore_index, validate, from_logits
    )
    loss, count, *_ = _hder_op(
        logits,
        target,
        activation(labels, from_logits),
        first,
        alpha,
        iterations,
        ignore_value(ignore_index, target, labels),
        reduction == "none",
        logits.requires_grad and torch.is_grad_enabled(),
    )
    if reduction == "none":
        return loss
    total = loss.sum()
    return total if reduction == "sum" else total / count
