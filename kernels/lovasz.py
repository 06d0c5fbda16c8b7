"""Triton Lovasz hinge and Lovasz-softmax losses.

Same signatures and semantics as ``segtriton.reference`` (formulas there), plus
``validate``. How they run (see ``_lovasz_kernels.py``):

1. one kernel writes every row's errors (fused softmax; with ``from_logits=False`` the
   input is the probabilities), ignored pixels as -inf;
2. ``torch.sort`` of the rows, about a sixteenth of them per call (descending, stable:
   ties keep pixel order); after each call a kernel moves the sorted keys back into the
   key buffer and the indices into an int32 ``perm`` (with each entry's foreground and
   not-ignored flags in its two low bits), counting foreground entries;
3. a kernel applies the closed-form Lovasz gradient with the exclusive prefix of those
   integer counts, summing ``f(e) g`` per block (fixed-order sums: deterministic);
4. the backward scatters ``w f'(e) g`` to each entry's pixel and chains it through the
   errors and the softmax in one kernel.

Memory beyond the inputs and the gradient: one fp32 key and one int32 index per logit
while sorting, plus one sort call's outputs and workspace (a sixteenth of the rows);
between the passes only ``perm`` (and the hinge's keys), and in the Lovasz-softmax
backward an fp32 buffer per logit. No host synchronisation unless ``validate=True``;
a bad label makes the loss NaN.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from segtriton.reference._common import (
    check_choice,
    check_masks,
    check_mode,
    check_probability_input,
    checked_target,
)
from segtriton.reference.lovasz import lovasz_softmax_reduce, reduce_units

from ._lovasz_kernels import (
    _lovasz_errors_kernel,
    _lovasz_grad_kernel,
    _lovasz_pack_kernel,
    _lovasz_softmax_grad_kernel,
)
from ._ops import op
from ._runtime import kernel_api
from ._tiles import (
    CHUNK,
    cdiv,
    class_blocks,
    grad_like,
    ignore_arg,
    ignore_value,
    label_view,
    next_pow2,
    num_warps_for,
    pixel_view,
    spatial_size,
    tile_pixels,
)

_BLOCK_K = 1024  # sorted positions per program
SORT_PIECES = 16  # a sort call takes R // 16 rows: its outputs and workspace stay small
SORT_MIN_ENTRIES = 1 << 18  # ... but at least this many entries, so few calls for small R
INT32_ENTRIES = 2**29  # rows shorter than this keep their codes 4 n + 2 fg + entry as int32


def _layout(B: int, C: int, S: int, per_image: bool) -> tuple[int, int, int, int]:
    """``(R, N, key_b, key_c)``: rows, entries per row, and the key strides of image and
    class (entry of pixel s of image b, class c at ``b * key_b + c * key_c + s``)."""
    if per_image:
        return B * C, S, C * S, S
    return C, B * S, S, B * S


def _geometry(logits, target, hinge):
    x, sxb, sxc, sxs = pixel_view(logits)
    t, stb, sts = label_view(target[:, 0] if hinge else target)
    return x, t, (sxb, sxc, sxs), (stb, sts), x.shape[0], x.shape[1], spatial_size(x)


def perm_dtype(N: int) -> torch.dtype:
    """Dtype of the kept sort codes (``4 n + 2 fg + entry``) of rows of N entries."""
    return torch.int32 if N < INT32_ENTRIES else torch.int64


def sorted_groups(keys: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Sort the rows of ``keys [R, N]`` (descending, stable) a group at a time; yields
    ``(r0, values, indices)``: the sorted group of rows starting at row r0, in buffers
    reused by the next group (consume them before advancing)."""
    R, N = keys.shape
    rows = min(R, max(R // SORT_PIECES, SORT_MIN_ENTRIES // max(N, 1), 1))
    values = torch.empty((rows, N), dtype=keys.dtype, device=keys.device)
    indices = torch.empty((rows, N), dtype=torch.int64, device=keys.device)
    for r0 in range(0, R, rows):
        k = min(rows, R - r0)
        torch.sort(
            keys[r0 : r0 + k], dim=1, descending=True, stable=True, out=(values[:k], indices[:k])
        )
        yield r0, values[:k], indices[:k]


@op("segtriton::lovasz_rows")
def _lovasz_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    per_image: bool,
    ignore_index: float | None,
    hinge: bool,
    probs: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L [R], foreground count [R], sorted keys [R, N], sort indices [R, N],
    block starts [R, nk])`` for every row (``probs``: Lovasz-softmax's input is ``p``)."""
    x, t, xs, ts, B, C, S = _geometry(logits, target, hinge)
    R, N, key_b, key_c = _layout(B, C, S, per_image)
    ign, has_ignore = ignore_arg(ignore_index, not hinge)
    keys = torch.empty((R, N), dtype=torch.float32, device=x.device)
    block_c, block_p, single = class_blocks(C)
    n_pblocks = cdiv(S, block_p)
    _lovasz_errors_kernel[(B * n_pblocks,)](
        x, t, keys, C, S, n_pblocks, *xs, *ts, key_b, key_c, ign,
        HINGE=hinge, HAS_IGNORE=has_ignore, PROBS=probs, SINGLE=single, BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )  # fmt: skip
    nk = cdiv(N, _BLOCK_K)
    perm = torch.empty((R, N), dtype=perm_dtype(N), device=x.device)
    counts = torch.empty((R, nk), dtype=torch.int32, device=x.device)
    for r0, values, indices in sorted_groups(keys):
        _lovasz_pack_kernel[(values.shape[0] * nk,)](
            values, indices, keys, perm, t, counts, r0, C, S, N, nk, *ts, ign,
            HINGE=hinge, PER_IMAGE=per_image, HAS_IGNORE=has_ignore, BLOCK_K=_BLOCK_K,
        )  # fmt: skip
    total = counts.sum(1, dtype=torch.int32)
    start = counts.cumsum(1, dtype=torch.int32) - counts
    partial = torch.empty(R * nk, dtype=torch.float32, device=x.device)
    _lovasz_grad_kernel[(R * nk,)](
        perm, keys, start, total, partial, partial, N, nk,
        HINGE=hinge, SCATTER=False, BLOCK_K=_BLOCK_K,
    )  # fmt: skip
    return partial.view(R, nk).sum(1), total, keys, perm, start


@_lovasz_rows.register_fake
def _(logits, target, per_image, ignore_index, hinge, probs):
    B, C = logits.shape[:2]
    S = spatial_size(logits)
    R, N, _, _ = _layout(B, C, S, per_image)
    nk = cdiv(N, _BLOCK_K)
    f32, i32 = torch.float32, torch.int32
    return (
        logits.new_empty(R, dtype=f32),
        logits.new_empty(R, dtype=i32),
        logits.new_empty((R, N), dtype=f32),
        logits.new_empty((R, N), dtype=perm_dtype(N)),
        logits.new_empty((R, nk), dtype=i32),
    )


@op("segtriton::lovasz_rows_grad")
def _lovasz_rows_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    grad_rows: torch.Tensor,
    sorted_keys: torch.Tensor | None,
    perm: torch.Tensor,
    start: torch.Tensor,
    total: torch.Tensor,
    per_image: bool,
    ignore_index: float | None,
    hinge: bool,
    probs: bool,
) -> torch.Tensor:
    """``dL/dz`` from ``grad_rows = dL/dL_r`` (``sorted_keys``: read by the hinge only)."""
    x, t, xs, ts, B, C, S = _geometry(logits, target, hinge)
    R, N, key_b, key_c = _layout(B, C, S, per_image)
    nk = start.shape[1]
    # the hinge's scatter writes dL/dx itself (C = 1: entry b * S + s of a contiguous
    # [B, 1, *S]); Lovasz-softmax's writes dL/de, chained through the softmax below
    # (unless the input is p)
    ge = (
        torch.empty(logits.shape, dtype=logits.dtype, device=x.device)
        if hinge
        else torch.empty(R * N, dtype=torch.float32, device=x.device)
    )
    w = grad_rows.to(torch.float32).contiguous()
    _lovasz_grad_kernel[(R * nk,)](
        perm, perm if sorted_keys is None else sorted_keys, start, total, w, ge, N, nk,
        HINGE=hinge, SCATTER=True, BLOCK_K=_BLOCK_K,
    )  # fmt: skip
    if hinge:
        return ge
    grad = grad_like(logits)
    g, sgb, sgc, sgs = pixel_view(grad)
    block_c = min(next_pow2(C), CHUNK[0])  # classes are streamed
    block_p = tile_pixels(block_c)
    n_pblocks = cdiv(S, block_p)
    ign, _ = ignore_arg(ignore_index, True)
    _lovasz_softmax_grad_kernel[(B * n_pblocks,)](
        x, t, ge, g, C, S, n_pblocks, *xs, *ts, sgb, sgc, sgs, key_b, key_c, ign, PROBS=probs,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=num_warps_for(block_c, block_p),
    )  # fmt: skip
    return grad


@_lovasz_rows_grad.register_fake
def _(logits, target, grad_rows, sorted_keys, perm, start, total, per_image, ignore, hinge,
      probs):  # fmt: skip
    return grad_like(logits)


def _setup(ctx, inputs, output):
    logits, target, *ctx.params = inputs
    _, total, sorted_keys, perm, start = output
    # only the row losses carry a gradient: no logits-sized zeros for the sort outputs
    ctx.mark_non_differentiable(total, sorted_keys, perm, start)
    ctx.set_materialize_grads(False)
    hinge = ctx.params[2]  # Lovasz-softmax's backward reads no key: free them now
    keys = sorted_keys if hinge else None
    ctx.save_for_backward(logits, target, keys, perm, start, total)


def _backward(ctx, grad_rows, *_):
    logits, target, sorted_keys, perm, start, total = ctx.saved_tensors
    grad = _lovasz_rows_grad(
        logits, target, grad_rows, sorted_keys, perm, start, total, *ctx.params
    )
    return grad, None, None, None, None, None


_lovasz_rows.register_autograd(_backward, _setup)


def _pooled_channels(logits: torch.Tensor, target: torch.Tensor):
    """``[B, C, *S]`` logits and masks as ``[B, 1, C * S]``: each image's entries in one
    row, in the logits' memory order (a row's order does not change its loss). A view
    of NCHW and channels_last logits; a target in another layout is copied."""
    if logits.stride(1) == 1:  # channels_last
        logits, target = logits.movedim(1, -1), target.movedim(1, -1)
    return (v.reshape(v.shape[0], 1, -1) for v in (logits, target))


@kernel_api
def lovasz_hinge_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "binary",
    per_image: bool = False,
    ignore_index: float | None = None,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Triton Lovasz hinge; semantics of ``segtriton.reference.lovasz_hinge_loss``
    (``validate=True`` also rejects soft targets; otherwise they make the loss NaN).
    'multilabel' runs the binary hinge on each image's entries of every channel as one
    row of pixels."""
    check_choice("mode", mode, ("binary", "multilabel"))
    check_mode(mode, logits)
    target = checked_target(logits, target, False, ignore_index, False)
    if validate:
        t, _ = check_masks(logits, target, ignore_index)  # ignored entries read as 0
        if bool(((t != 0) & (t != 1)).any()):
            raise ValueError("lovasz_hinge_loss needs hard {0, 1} targets, got soft values")
    if logits.shape[1] > 1:
        logits, target = _pooled_channels(logits, target)
    losses = _lovasz_rows(
        logits, target, per_image, ignore_value(ignore_index, target, False), True, False
    )[0]
    return reduce_units(losses, reduction)


@kernel_api
def lovasz_softmax_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
    ignore_index: int | None = None,
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
    validate: bool = False,
) -> torch.Tensor:
    """Triton Lovasz-softmax; semantics of ``segtriton.reference.lovasz_softmax_loss``."""
    checked_target(logits, target, True, ignore_index, validate)
    if validate and not from_logits:
        check_probability_input(logits, target, True, ignore_index)
    ign = None if ignore_index is None else float(ignore_index)
    losses, total, *_ = _lovasz_rows(logits, target, per_image, ign, False, not from_logits)
    units = logits.shape[0] if per_image else 1
    shape = (units, logits.shape[1])
    return lovasz_softmax_reduce(
        losses.view(shape), total.view(shape) > 0, classes, weight, reduction, validate
    )
