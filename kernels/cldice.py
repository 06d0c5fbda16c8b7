"""Soft clDice on the GPU: the soft skeletons in Triton, forward and backward.

``cldice_loss`` has the semantics of ``segtriton.reference.cldice_loss``. Its cost is the
skeletons: ``iterations + 1`` erosions (a 5- or 7-point min) and as many 9- or 27-point
max dilations, for the prediction and for the target. Autograd through max-pooling (MONAI)
keeps an int64 index map per pooling and a dozen float maps per level; here the forward
keeps, per level, the eroded map and ``s`` (float32) and one int8 code per pixel for each
min and max (which neighbour won). The backward walks the ``s`` recursion back pixel by
pixel, then the levels from the deepest, each pixel gathering the gradient of the
neighbours whose code names it: no atomics, bitwise reproducible. The softmax (sigmoid)
in front and its backward are PyTorch operations on float32.
"""

from __future__ import annotations

import torch

from segtriton.reference import cldice as ref_cldice
from segtriton.reference._common import (
    checked_target,
    not_ignored,
    probability_target,
)

from ._cldice_kernels import (
    _erode_kernel,
    _skeleton_chain_kernel,
    _skeleton_grad_kernel,
    _skeleton_level_kernel,
    _skeleton_sums_kernel,
)
from ._ops import op
from ._runtime import kernel_api
from ._tiles import cdiv, ignore_value

BLOCK = 512
SUM_BLOCK, SUM_CHUNK = 1024, 16384


def _geometry(shape: torch.Size) -> tuple[int, int, int, int]:
    """``(N, D0, D1, D2)`` of ``[B, K, *S]`` maps: pixels per map and the 3-D extent (a
    2-D image has depth 1)."""
    spatial = list(shape[2:])
    D0, D1, D2 = ([1] + spatial)[-3:]
    return D0 * D1 * D2, D0, D1, D2


def _skeleton(x0: torch.Tensor, iterations: int, keep: bool):
    """The soft skeleton of the float32 maps ``x0 [B, K, *S]`` (contiguous). With ``keep``,
    ``(skel, x, s, erode codes, dilate codes)`` for the backward, each level a row of
    ``[levels, B K N]``; else ``(skel,)`` with two rotating buffers."""
    N, D0, D1, D2 = _geometry(x0.shape)
    total = x0.numel()
    three_d = x0.dim() == 5
    levels = iterations + 1
    device = x0.device
    if keep:
        x = torch.empty(levels + 1, total, dtype=torch.float32, device=device)
        x[0] = x0.view(-1)
        s = torch.empty(levels, total, dtype=torch.float32, device=device)
        ecode = torch.empty(levels, total, dtype=torch.int8, device=device)
        dcode = torch.empty(levels, total, dtype=torch.int8, device=device)
    else:
        x = torch.empty(2, total, dtype=torch.float32, device=device)
        x[0] = x0.view(-1)
        s = torch.empty(1, total, dtype=torch.float32, device=device)
        ecode = dcode = s  # not written
    grid = (cdiv(total, BLOCK),)
    geometry = (total, N, D0, D1, D2)
    for k in range(levels):
        here, nxt = (k, k + 1) if keep else (k % 2, (k + 1) % 2)
        slot = k if keep else 0
        _erode_kernel[grid](
            x[here], x[nxt], ecode[slot], *geometry, CODES=keep, THREE_D=three_d, BLOCK=BLOCK
        )
        _skeleton_level_kernel[grid](
            x[here], x[nxt], s[max(slot - 1, 0)], s[slot], dcode[slot], *geometry,
            FIRST=k == 0, CODES=keep, THREE_D=three_d, BLOCK=BLOCK,
        )  # fmt: skip
    skel = s[levels - 1 if keep else 0].view(x0.shape)
    return (skel, x, s, ecode, dcode) if keep else (skel,)


def _sums(skel_p, g, skel_g, p, units: int) -> torch.Tensor:
    """``[units, 4]`` float32: the sums of :func:`reference.cldice.cldice_from_sums` over
    each unit's contiguous share of the maps, in a fixed order."""
    per_unit = skel_p.numel() // units
    n_chunks = cdiv(per_unit, SUM_CHUNK)
    part = torch.empty(units * n_chunks, 4, dtype=torch.float32, device=p.device)
    _skeleton_sums_kernel[(units * n_chunks,)](
        skel_p, g, skel_g, p, part, per_unit, n_chunks, CHUNK=SUM_CHUNK, BLOCK=SUM_BLOCK
    )
    return part.view(units, n_chunks, 4).sum(1)


def _level0(
    logits: torch.Tensor,
    target: torch.Tensor,
    labels: bool,
    first: int,
    ignore_index: float | None,
):
    """float32 ``p`` (softmax or sigmoid, all classes), the kept classes' ``x0 = p valid``
    and ``g0 = g valid`` (contiguous ``[B, K, *S]``), the valid mask, and whether a target
    value is out of range (a device bool: the loss becomes NaN)."""
    x = logits.float()
    C = x.shape[1]
    if labels and probability_target(logits, target, ignore_index):
        p = torch.softmax(x, 1)
        g = target.float()
        valid = torch.ones((), dtype=torch.bool, device=x.device)
        bad = ((g < 0) | (g > 1) | g.isnan()).any()
    elif labels:
        p = torch.softmax(x, 1)
        valid = not_ignored(target, ignore_index)
        bad = (valid & ((target < 0) | (target >= C))).any()
        valid = valid.unsqueeze(1)
        classes = torch.arange(C, device=x.device).view(1, C, *[1] * (x.dim() - 2))
        g = (target.unsqueeze(1) == classes).float()
    else:
        p = torch.sigmoid(x)
        g = target.float()
        valid = torch.ones_like(g, dtype=torch.bool) if ignore_index is None else g != ignore_index
        bad = (valid & ((g < 0) | (g > 1) | g.isnan())).any()
    x0 = (p * valid)[:, first:].contiguous()
    g0 = torch.where(valid, g, 0.0)[:, first:].contiguous()
    return p, x0, g0, valid, bad


def _finalize(sums: torch.Tensor, smooth_nr: float, smooth_dr: float, smooth: float):
    """Per-unit loss and the coefficients of its gradient: ``dL/dskel(p) = a g + b`` and
    ``dL/dp = c skel(g)``, ``[units, 3]``; float32, from float64 (``1 - 2 P Q / H`` of a
    near-perfect prediction would keep few digits in float32)."""
    sums = sums.double()
    tprec = (sums[:, 0] + smooth_nr) / (sums[:, 1] + smooth_dr)
    tsens = (sums[:, 2] + smooth_nr) / (sums[:, 3] + smooth_dr)
    h = tprec + tsens + smooth
    loss = 1 - 2 * tprec * tsens / h
    d_prec = -2 * tsens * (tsens + smooth) / (h * h)
    d_sens = -2 * tprec * (tprec + smooth) / (h * h)
    coef = torch.stack(
        [
            d_prec / (sums[:, 1] + smooth_dr),
            -d_prec * tprec / (sums[:, 1] + smooth_dr),
            d_sens / (sums[:, 3] + smooth_dr),
        ],
        dim=1,
    )
    return loss.float(), coef.float()


def _skeleton_grad(kept, coef: torch.Tensor, g0, skel_g, iterations: int) -> torch.Tensor:
    """``dL/dx0`` (float32, ``x0``'s shape) from the kept levels of :func:`_skeleton` and
    the per-image coefficients ``coef [B, 3]``."""
    _, x, s, ecode, dcode = kept
    N, D0, D1, D2 = _geometry(g0.shape)
    total = g0.numel()
    per_image = total // g0.shape[0]
    three_d = g0.dim() == 5
    grid = (cdiv(total, BLOCK),)
    levels = iterations + 1
    _skeleton_chain_kernel[grid](
        x, s, dcode, g0, coef[:, :2].contiguous(), total, total, per_image, levels - 1, N,
        D1, D2, BLOCK=BLOCK,
    )  # fmt: skip
    t = s  # T_k now in s's rows
    buffers = torch.empty(2, total, dtype=torch.float32, device=g0.device)
    sense = coef[:, 2].contiguous()
    for j in range(levels, -1, -1):
        out, nxt = buffers[j % 2], buffers[(j + 1) % 2]
        _skeleton_grad_kernel[grid](
            t[min(j, levels - 1)], t[max(j - 1, 0)], dcode[max(j - 1, 0)], nxt,
            ecode[min(j, levels - 1)], skel_g, sense, out, total, per_image, N, D0, D1, D2,
            HAS_T=j < levels, HAS_D=j > 0, HAS_E=j < levels, LAST=j == 0,
            THREE_D=three_d, BLOCK=BLOCK,
        )  # fmt: skip
    return buffers[0].view(g0.shape)


@op("segtriton::cldice")
def _cldice_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    labels: bool,
    first: int,
    iterations: int,
    smooth_nr: float,
    smooth_dr: float,
    smooth: float,
    batch: bool,
    ignore_index: float | None,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit losses (float32 ``[U]``) and, with ``need_grad``, the float32 gradient of
    their sum with respect to the logits (else an empty tensor)."""
    p, x0, g0, valid, bad = _level0(logits, target, labels, first, ignore_index)
    kept = _skeleton(x0, iterations, need_grad)
    skel_g = _skeleton(g0, iterations, False)[0]
    B = x0.shape[0]
    sums = _sums(kept[0], g0, skel_g, x0, B)
    if batch:
        sums = sums.sum(0, keepdim=True)
    loss, coef = _finalize(sums, smooth_nr, smooth_dr, smooth)
    loss = torch.where(bad, torch.nan, loss)
    if not need_grad:
        return loss, logits.new_empty(0, dtype=torch.float32)
    d_x0 = _skeleton_grad(kept, coef.expand(B, 3), g0, skel_g, iterations)
    d_p = torch.zeros_like(p)
    d_p[:, first:] = d_x0
    d_p = d_p * valid
    if labels:
        grad = p * (d_p - (p * d_p).sum(1, keepdim=True))
    else:
        grad = p * (1 - p) * d_p
    return loss, grad


@_cldice_op.register_fake
def _(logits, target, labels, first, iterations, smooth_nr, smooth_dr, smooth, batch,
      ignore_index, need_grad):  # fmt: skip
    units = 1 if batch else logits.shape[0]
    loss = logits.new_empty(units, dtype=torch.float32)
    grad = logits.new_empty(logits.shape if need_grad else 0, dtype=torch.float32)
    return loss, grad


def _setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.dtype, ctx.batch = inputs[0].dtype, inputs[8]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_grad):
    (grad,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 11
    scale = grad_loss.expand(grad.shape[0]) if ctx.batch else grad_loss
    scale = scale.view(-1, *[1] * (grad.dim() - 1))
    return ((grad * scale).to(ctx.dtype),) + (None,) * 10


_cldice_op.register_autograd(_backward, _setup)


@kernel_api
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
    validate: bool = False,
) -> torch.Tensor:
    """Triton soft clDice; semantics of ``segtriton.reference.cldice_loss`` (see the
    module docstring for how it runs). No host sync. Returns float32. ``validate=True``
    checks the labels / masks on the host first; otherwise a label or mask value out of
    range makes the loss NaN."""
    iterations, (smooth_nr, smooth_dr, smooth) = ref_cldice.check_cldice_options(
        logits, mode, iterations, (smooth_nr, smooth_dr, smooth), scope, reduction
    )
    labels = mode == "multiclass"
    if not (labels and probability_target(logits, target, ignore_index)):
        target = checked_target(logits, target, labels, ignore_index, validate)
    first = 0 if include_background or logits.shape[1] == 1 else 1
    loss, _ = _cldice_op(
        logits,
        target,
        labels,
        first,
        iterations,
        smooth_nr,
        smooth_dr,
        smooth,
        scope == "batch",
        ignore_value(ignore_index, target, labels),
        logits.requires_grad and torch.is_grad_enabled(),
    )
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
