"""Soft clDice on the GPU: the soft skeletons in Triton, forward and backward.

``cldice_loss`` has the semantics of ``segtriton.reference.cldice_loss``. Its cost is the
skeletons: ``iterations + 1`` erosions (a 5- or 7-point min) and as many 9- or 27-point
max dilations, for the prediction and for the target. Autograd through max-pooling (MONAI)
keeps an int64 index map per pooling and several float maps per level (README: 320 bytes
per logit in 2-D); here the forward keeps, per level, the eroded map and ``s`` (float32)
and one int8 code per pixel for each min and max (which neighbour won), and only the
float32 gradient outlives the call. The backward walks the ``s`` recursion back pixel by
pixel, then the levels from the deepest, each pixel gathering the gradient of the
neighbours whose code names it: no atomics, bitwise reproducible. One kernel in front
reads the logits and the target in place (any layout, any label dtype) and writes the
kept classes' probabilities and target as the skeletons' first level; one at the end
turns ``dL/dp`` into ``dL/dz`` through the softmax (sigmoid).
"""

from __future__ import annotations

import math

import torch

from segtriton.reference import cldice as ref_cldice
from segtriton.reference._common import (
    check_masks,
    check_probability_input,
    checked_target,
    probability_target,
)

from ._cldice_kernels import (
    _cldice_back_kernel,
    _cldice_front_kernel,
    _erode_kernel,
    _skeleton_chain_kernel,
    _skeleton_grad_kernel,
    _skeleton_level_kernel,
    _skeleton_sums_kernel,
)
from ._ops import op
from ._runtime import interpreter_enabled, kernel_api
from ._tiles import (
    activation,
    activation_flags,
    cdiv,
    class_blocks,
    grad_like,
    ignore_arg,
    ignore_value,
    loss_views,
    num_warps_for,
    pixel_view,
    spatial_size,
)

# pixels per program of the flat map kernels; in Triton's interpreter a program costs
# the same NumPy calls at any width, and 4096 ran the C = 19 clDice tests 3.7x faster
BLOCK = 4096 if interpreter_enabled() else 512
SUM_BLOCK, SUM_CHUNK = 1024, 16384


def _geometry(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(N, D0, D1, D2)`` of ``[B, K, *S]`` maps: pixels per map and the 3-D extent (a
    2-D image has depth 1)."""
    spatial = list(shape[2:])
    D0, D1, D2 = ([1] + spatial)[-3:]
    return D0 * D1 * D2, D0, D1, D2


def _kept_shape(logits: torch.Tensor, first: int) -> tuple[int, ...]:
    """``[B, C - first, *S]``: the maps of the classes from ``first`` on."""
    return (logits.shape[0], logits.shape[1] - first, *logits.shape[2:])


def _level_maps(shape: tuple[int, ...], iterations: int, keep: bool, device) -> torch.Tensor:
    """float32 rows for the eroded maps of :func:`_skeleton`, row 0 for level 0: one per
    level with ``keep``, else three (level 0, kept, and two that take turns)."""
    rows = iterations + 2 if keep else 3
    return torch.empty(rows, math.prod(shape), dtype=torch.float32, device=device)


def _skeleton(x: torch.Tensor, shape: tuple[int, ...], iterations: int, keep: bool):
    """The soft skeleton of the float32 maps ``[B, K, *S] = shape`` in row 0 of ``x``
    (:func:`_level_maps`). With ``keep``, ``(skel, x, s, erode codes, dilate codes)`` for
    the backward, each level a row of ``x`` and of ``[levels, B K N]`` tensors (row 0 of
    ``x`` is left as it is); else ``(skel,)``."""
    N, D0, D1, D2 = _geometry(shape)
    total = x.shape[1]
    three_d = len(shape) == 5
    levels = iterations + 1
    s = torch.empty(levels if keep else 1, total, dtype=torch.float32, device=x.device)
    ecode = dcode = s  # not written without keep
    if keep:
        ecode = torch.empty(levels, total, dtype=torch.int8, device=x.device)
        dcode = torch.empty(levels, total, dtype=torch.int8, device=x.device)
    grid = (cdiv(total, BLOCK),)
    geometry = (total, N, D0, D1, D2)

    def row(k: int) -> int:
        return k if keep or k == 0 else 2 - k % 2

    for k in range(levels):
        slot = k if keep else 0
        _erode_kernel[grid](
            x[row(k)], x[row(k + 1)], ecode[slot], *geometry, CODES=keep, THREE_D=three_d,
            BLOCK=BLOCK,
        )  # fmt: skip
        _skeleton_level_kernel[grid](
            x[row(k)], x[row(k + 1)], s[max(slot - 1, 0)], s[slot], dcode[slot], *geometry,
            FIRST=k == 0, CODES=keep, THREE_D=three_d, BLOCK=BLOCK,
        )  # fmt: skip
    skel = s[levels - 1 if keep else 0].view(shape)
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


def _front(
    logits: torch.Tensor,
    target: torch.Tensor,
    act: int,
    first: int,
    ignore_index: float | None,
    x0: torch.Tensor,
    g0: torch.Tensor,
    grad: torch.Tensor | None = None,
    error: bool = False,
    out: torch.Tensor | None = None,
):
    """Level 0 of the skeletons (``_cldice_front_kernel``): writes ``x0 = p valid`` and
    ``g0 = g valid`` of the kept classes (float32 ``[B, K, *S]`` rows; with ``error``,
    ``x0 = (p - g) valid`` and the int8 valid flags in ``g0``) and returns whether a
    target value is out of range (a device bool: the loss becomes NaN). With ``grad``
    (``dL/dx0``), returns ``dL/dz`` instead (``_cldice_back_kernel``) in ``out`` (default
    float32 in the logits' layout). ``act``: see :func:`_tiles.activation`."""
    labels, softmax, probs = activation_flags(act)
    read_labels = labels and not probability_target(logits, target, ignore_index)
    x, t, strides = loss_views(logits, target, read_labels)
    B, C = x.shape[:2]
    S = spatial_size(x)
    block_c, block_p, _ = class_blocks(C)
    n_pblocks = cdiv(S, block_p)
    ign, has_ignore = ignore_arg(ignore_index, read_labels)
    meta = {
        "SOFTMAX": softmax, "LABELS": read_labels, "HAS_IGNORE": has_ignore,
        "PROBS": probs,
        "BLOCK_C": block_c, "BLOCK_P": block_p, "num_warps": num_warps_for(block_c, block_p),
    }  # fmt: skip
    grid = (B * n_pblocks,)
    if grad is not None:
        out = grad_like(logits, torch.float32) if out is None else out
        o, sob, soc, sos = pixel_view(out)
        _cldice_back_kernel[grid](
            x, t, grad, o, C, first, S, n_pblocks, *strides, sob, soc, sos, ign, **meta
        )
        return out
    flags = torch.empty(B * n_pblocks, dtype=torch.int32, device=x.device)
    _cldice_front_kernel[grid](
        x, t, x0, g0, flags, C, first, S, n_pblocks, *strides, ign, ERROR=error, **meta
    )
    return flags.any()


def front_inputs(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    include_background: bool,
    ignore_index: float | None,
    validate: bool,
    from_logits: bool = True,
) -> tuple[torch.Tensor, bool, int]:
    """``(target, labels, first)`` for :func:`_front`: the target checked (on the host only
    with ``validate``, as is an input of probabilities), whether it is multiclass (read
    through the softmax from logits), and the first kept class (1 without the background,
    unless there is one channel)."""
    labels = mode == "multiclass"
    soft_target = labels and probability_target(logits, target, ignore_index)
    if soft_target:
        if validate:
            check_masks(logits, target, None)
    else:
        target = checked_target(logits, target, labels, ignore_index, validate)
    if validate and not from_logits:
        check_probability_input(logits, target, labels and not soft_target, ignore_index)
    return target, labels, 0 if include_background or logits.shape[1] == 1 else 1


def _finalize(sums: torch.Tensor, smooth_nr: float, smooth_dr: float, smooth: float):
    """Per-unit loss and the coefficients of its gradient: ``dL/dskel(p) = a g + b`` and
    ``dL/dp = c skel(g)``, ``[units, 3]``; float32, from float64 (``1 - 2 P Q / H`` of a
    near-perfect prediction would keep few digits in float32)."""
    sums = sums.double()
    tprec, tsens = ref_cldice.cldice_ratios(sums, smooth_nr, smooth_dr)
    loss = ref_cldice.cldice_from_sums(sums, smooth_nr, smooth_dr, smooth)
    h = tprec + tsens + smooth
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
    act: int,
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
    shape = _kept_shape(logits, first)
    x = _level_maps(shape, iterations, need_grad, logits.device)
    g = _level_maps(shape, iterations, False, logits.device)
    bad = _front(logits, target, act, first, ignore_index, x[0], g[0])
    kept = _skeleton(x, shape, iterations, need_grad)
    skel_g = _skeleton(g, shape, iterations, False)[0]
    B = shape[0]
    sums = _sums(kept[0], g[0], skel_g, x[0], B)
    if batch:
        sums = sums.sum(0, keepdim=True)
    loss, coef = _finalize(sums, smooth_nr, smooth_dr, smooth)
    loss = torch.where(bad, torch.nan, loss)
    if not need_grad:
        return loss, logits.new_empty(0, dtype=torch.float32)
    d_x0 = _skeleton_grad(kept, coef.expand(B, 3), g[0].view(shape), skel_g, iterations)
    return loss, _front(logits, target, act, first, ignore_index, x[0], g[0], d_x0)


@_cldice_op.register_fake
def _(logits, target, act, first, iterations, smooth_nr, smooth_dr, smooth, batch,
      ignore_index, need_grad):  # fmt: skip
    units = 1 if batch else logits.shape[0]
    loss = logits.new_empty(units, dtype=torch.float32)
    if not need_grad:
        return loss, logits.new_empty(0, dtype=torch.float32)
    return loss, grad_like(logits, torch.float32)  # the layout _front writes


def _setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.dtype, ctx.batch = inputs[0].dtype, inputs[8]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_grad):
    (grad,) = ctx.saved_tensors
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
    from_logits: bool = True,
    validate: bool = False,
) -> torch.Tensor:
    """Triton soft clDice; semantics of ``segtriton.reference.cldice_loss`` (see the
    module docstring for how it runs). No host sync. Returns float32. ``validate=True``
    checks the labels / masks on the host first; otherwise a label or mask value out of
    range makes the loss NaN."""
    iterations, (smooth_nr, smooth_dr, smooth) = ref_cldice.check_cldice_options(
        logits, mode, iterations, (smooth_nr, smooth_dr, smooth), scope, reduction
    )
    target, labels, first = front_inputs(
        logits, target, mode, include_background, ignore_index, validate, from_logits
    )
    loss, _ = _cldice_op(
        logits,
        target,
        activation(labels, from_logits),
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
