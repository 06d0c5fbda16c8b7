"""Triton pixel-wise losses: cross-entropy (labels or probabilities), softmax focal, BCE
with logits, sigmoid focal.

Same signatures and semantics as ``segtriton.reference`` (see the formulas there), plus
``validate``. How they run:

- Logits ``[B, C, *S]`` are read where they lie (NCHW, NCDHW or channels_last; fp32, fp16
  or bf16), in tiles of ``[classes, pixels]``; arithmetic is fp32.
- When the logits require grad and the reduction is 'mean' or 'sum', the forward writes
  dL/dz (for grad_output = 1) into a new buffer in the same pass that computes the loss;
  the backward then only scales that buffer in place by grad_output, and skips even that
  when grad_output is 1 (checked on the device); a later backward through the same graph
  writes a new tensor. With reduction='none' nothing is saved but the inputs, and the
  backward recomputes the gradient in one pass. A floating target of the logits' shape
  holds class probabilities (:func:`cross_entropy_probs`).
- The 'mean' divisor (valid-pixel count or summed class weights) is computed on the device
  by a pre-pass over the labels: no host synchronisation, so the ops are CUDA-graph
  capturable and registered as ``torch.library`` custom ops for ``torch.compile``
  (eager calls skip the custom-op dispatcher: see ``_ops.py``).
- Reductions are per-program partial sums added in a fixed order: bitwise deterministic.
- Labels (uint8 to int64) are read in the kernel and range-tested in their own dtype
  before any cast to int32. A label outside ``[0, C)`` that is
  not ``ignore_index`` (or a mask value outside [0, 1]) makes the loss NaN instead of
  triggering a device-side assert; ``validate=True`` checks the values first and raises a
  ``ValueError`` naming the bad label (this reads the labels on the host: a sync), and
  also rejects negative or non-finite class weights.
- Class weights, alpha and pos_weight may be device tensors (the ``nn.Module`` forms hold
  them as buffers) or Python lists: a list is checked on the host and copied to the device
  once, then reused (``device_constant``), so it costs no copy per call and CUDA graphs
  can capture the loss after a warm-up call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from segtriton.reference import pixelwise as ref_pixelwise
from segtriton.reference._common import (
    RESERVED_IGNORE,
    check_choice,
    check_class_vector,
    check_constant,
    check_mode,
    check_number,
    checked_target,
    is_number,
)
from segtriton.reference.pixelwise import (
    check_min_kept,
    check_probs_ignore,
    is_probs,
    topk_count,
)

from ._ops import Op, op
from ._pixelwise_kernels import (
    _probs_loss_kernel,
    _sigmoid_loss_kernel,
    _softmax_loss_kernel,
    _valid_sum_kernel,
)
from ._runtime import kernel_api
from ._select_kernels import (
    _ohem_keep_kernel,
    _radix_hist_kernel,
    _radix_scan_kernel,
    _topk_share_kernel,
)
from ._tiles import (
    STAGES,
    TILES_PER_PROGRAM,
    applied_scale,
    cdiv,
    class_fast,
    column_tiles,
    defers_mean,
    flat_layout,
    flat_view,
    grad_like,
    ignore_arg,
    ignore_value,
    is_dense,
    label_view,
    loss_views,
    next_pow2,
    num_warps_for,
    pixel_view,
    program_count,
    scale_grad,
    softmax_unroll,
    spatial_size,
    sum_partials,
    tile_chunks,
    tile_grid,
    tile_pixels,
    walk_tiles,
    write_rows,
)
from .metrics import _confusion

_REDUCTIONS = ("mean", "sum", "none")


def _label_ignore(ignore_index: int | None) -> int:
    """``ignore_index`` of integer labels as the softmax kernels take it: None (nothing
    ignored) becomes ``RESERVED_IGNORE``, which no label may equal."""
    return RESERVED_IGNORE if ignore_index is None else int(ignore_index)


def _class_vector(name: str, value, C: int, logits: torch.Tensor, validate: bool):
    """fp32 per-class vector on the logits' device; a tensor's values are read only with
    ``validate`` (a list's are always checked, on the host). A tensor that requires grad is
    refused: the kernels give it no gradient."""
    if isinstance(value, torch.Tensor):
        check_constant(name, value)
    like = logits.new_empty(0, dtype=torch.float32)
    return check_class_vector(name, value, C, like, check_values=validate)


def _grad_buffer(logits: torch.Tensor, need_grad: bool, reduction: str) -> torch.Tensor:
    """The gradient the forward writes ('mean'/'sum' with grad), else an empty placeholder."""
    fused = need_grad and reduction != "none"
    return grad_like(logits) if fused else logits.new_empty(0)


def _fake_grad(
    logits: torch.Tensor, need_grad: bool, reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fake implementations' gradient buffer and applied scale (see :func:`_finish`)."""
    grad = _grad_buffer(logits, need_grad, reduction)
    denom = logits.new_empty(1, dtype=torch.float32)  # its shape, where the scale is it
    return grad, applied_scale(grad, denom, defers_mean(logits, reduction))


def _prepass(
    target: torch.Tensor, C: int, ignore_index: float, labels: bool, weight: torch.Tensor | None
) -> torch.Tensor:
    """Device scalar: the number of valid target entries, or the sum of their class weights
    (``weight[y]`` of labels, ``weight[c]`` of channel c's masks). Unweighted dense masks
    are counted as one flat range in storage order (channels_last ones are then read
    whole, not a class row at a time)."""
    if not labels and weight is None and is_dense(target):
        target = flat_view(target)
    t, stb, str_, sts = pixel_view(target.unsqueeze(1) if labels else target)
    R = 1 if labels else t.shape[1]
    S = spatial_size(t)
    block_r = next_pow2(R)
    block_p = tile_pixels(block_r)
    n_pblocks = cdiv(S, block_p)
    partials = torch.empty(t.shape[0] * n_pblocks, dtype=torch.float32, device=t.device)
    _valid_sum_kernel[(partials.numel(),)](
        t,
        weight,
        partials,
        R,
        S,
        n_pblocks,
        stb,
        str_,
        sts,
        ignore_index,
        C,
        LABELS=labels,
        HAS_W=weight is not None,
        BLOCK_R=block_r,
        BLOCK_P=block_p,
        num_warps=num_warps_for(block_r, block_p),
    )
    return sum_partials(partials).reshape(1)


def _outputs(gout, n_loss, grad, x):
    """The loss buffer (per-program partials or per-element losses; none when the launch only
    writes a gradient, i.e. ``gout`` is given) and the gradient's view and strides."""
    loss = torch.empty(n_loss, dtype=torch.float32, device=x.device) if gout is None else None
    return loss, pixel_view(grad) if grad is not None else (None, 0, 0, 0)


# --- softmax family: cross-entropy and softmax focal -----------------------------------


def _softmax_launch(
    logits,
    target,
    weight,
    alpha,
    ignore_index,
    smoothing,
    gamma,
    alpha_scalar,
    focal,
    reduction,
    denom,
    grad,
    gout,
    count=False,
):
    """One launch of the softmax kernel. Returns the partial or per-pixel losses (None when
    only the gradient is wanted), with ``count`` after the partial 'mean' denominators
    (one per program: the kernel's COUNT)."""
    x, sxb, sxc, sxs = pixel_view(logits)
    y, syb, sys_ = label_view(target)
    smooth = not focal and smoothing > 0
    tiles = column_tiles(x, smooth, sxc, sxs) or walk_tiles(x)
    C, S, n_pblocks, n_blocks, n_programs, (block_c, block_p, single), vec, warps = tiles
    per_pixel = reduction == "none"
    n_loss = x.shape[0] * S if per_pixel else n_programs * (2 if count else 1)
    loss, (g, sgb, sgc, sgs) = _outputs(gout, n_loss, grad, x)
    _softmax_loss_kernel[(n_programs,)](
        x,
        y,
        weight if weight is not None else alpha,
        g,
        loss,
        denom,
        gout,
        C,
        S,
        n_pblocks,
        n_blocks,
        sxb,
        sxc,
        sxs,
        syb,
        sys_,
        sgb,
        sgc,
        sgs,
        ignore_index,
        smoothing,
        gamma,
        alpha_scalar,
        IS_FOCAL=focal,
        HAS_W=weight is not None or alpha is not None,
        SMOOTH=smooth,
        WRITE_GRAD=grad is not None,
        WRITE_LOSS=loss is not None,
        PER_PIXEL=per_pixel,
        MEAN=reduction == "mean",
        DEFER_MEAN=defers_mean(logits, reduction),
        COUNT=count,
        SINGLE=single,
        TILES=TILES_PER_PROGRAM,
        STAGES=STAGES,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        UNROLL=softmax_unroll(y, sxs),
        ROWS=write_rows(sxs, sgs),
        VEC=vec,
        NC=C if single else 0,
        CLASS_FAST=single and class_fast(C, sxc),
        num_warps=warps,
    )
    return loss


def _counts_in_kernel(
    logits: torch.Tensor, reduction: str, need_grad: bool, known: bool, weighted: bool
) -> bool:
    """Whether the loss kernel sums the 'mean' denominator beside the loss (its COUNT), with
    no pre-pass over the target: a denominator not ``known`` already (the element count)
    that no gradient is scaled by as it is written: no gradient, or fp16's undivided one
    (:func:`defers_mean`) unless the count is ``weighted`` (an all-zero weighted count
    makes the gradient of its zero-weight pixels NaN, which the forward does knowing it)."""
    if reduction != "mean" or known:
        return False
    return not need_grad or (defers_mean(logits, reduction) and not weighted)


def _counted(partials: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss partials, denominator)`` of a COUNT launch, whose partial denominators come
    first (the denominator's view then starts its storage, as an op output must)."""
    denom, loss = partials.view(2, -1).sum(dim=1).split(1)
    return loss, denom


def _softmax_denom(target, C, ignore_index, weight, reduction, known, device):
    """The 'mean' denominator: the label count where it is ``known`` to be, else the
    pre-pass."""
    if reduction != "mean":
        return None
    if known:
        return torch.full((1,), float(target.numel()), dtype=torch.float32, device=device)
    return _prepass(target, C, ignore_index, labels=True, weight=weight)


@op("segtriton::softmax_pixel_loss")
def _softmax_pixel_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    alpha: torch.Tensor | None,
    ignore_index: int,
    smoothing: float,
    gamma: float,
    alpha_scalar: float,
    focal: bool,
    reduction: str,
    avg_non_ignore: bool,
    need_grad: bool,
    denom: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The softmax pixel losses; ``denom`` (fp32 ``[1]``, 'mean' only) is a divisor the
    caller already holds on the device (copied: fp16 returns it as the applied scale, and
    an op's output may not alias its input), else it is computed from the labels (a
    pre-pass, or in the loss kernel: :func:`_counts_in_kernel`)."""
    C = logits.shape[1]
    # the label count: nothing ignored and nothing weighted (labels outside [0, C) make
    # the loss NaN either way), or not averaged over the valid labels alone
    known = not avg_non_ignore or (ignore_index == RESERVED_IGNORE and weight is None)
    weighted = weight is not None
    count = denom is None and _counts_in_kernel(logits, reduction, need_grad, known, weighted)
    if denom is not None:
        denom = denom.clone()
    elif not count:
        denom = _softmax_denom(target, C, ignore_index, weight, reduction, known, logits.device)
    grad = _grad_buffer(logits, need_grad, reduction)
    loss = _softmax_launch(
        logits,
        target,
        weight,
        alpha,
        ignore_index,
        smoothing,
        gamma,
        alpha_scalar,
        focal,
        reduction,
        denom,
        grad if grad.numel() else None,
        None,
        count,
    )
    if count:
        loss, denom = _counted(loss)
    return _finish(loss, grad, reduction, denom, target.shape, logits)


@_softmax_pixel_loss.register_fake
def _(
    logits,
    target,
    weight,
    alpha,
    ignore_index,
    smoothing,
    gamma,
    alpha_scalar,
    focal,
    reduction,
    avg_non_ignore,
    need_grad,
    denom,
):
    shape = target.shape if reduction == "none" else ()
    loss = logits.new_empty(shape, dtype=torch.float32)
    return loss, *_fake_grad(logits, need_grad, reduction)


@op("segtriton::softmax_pixel_grad")
def _softmax_pixel_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    grad_output: torch.Tensor,
    weight: torch.Tensor | None,
    alpha: torch.Tensor | None,
    ignore_index: int,
    smoothing: float,
    gamma: float,
    alpha_scalar: float,
    focal: bool,
) -> torch.Tensor:
    """dL/dz for reduction='none' with a per-pixel grad_output (recomputed in one pass)."""
    grad = grad_like(logits)
    gout = grad_output.to(torch.float32).contiguous()
    _softmax_launch(
        logits,
        target,
        weight,
        alpha,
        ignore_index,
        smoothing,
        gamma,
        alpha_scalar,
        focal,
        "none",
        None,
        grad,
        gout,
    )
    return grad


@_softmax_pixel_grad.register_fake
def _(
    logits, target, grad_output, weight, alpha, ignore_index, smoothing, gamma, alpha_scalar, focal
):
    return grad_like(logits)


def _scale_saved_grad(ctx, grad_loss: torch.Tensor) -> torch.Tensor:
    """Apply grad_output to the gradient written by the forward (see ``scale_grad``).

    Eager: in place on the first backward, skipped on the device when grad_output is 1
    (no version-counter bump, so retain_graph works); a new tensor on later ones, so the
    gradients handed out do not alias. Under torch.compile's tracing (tensor
    subclasses): a functional product.
    """
    grad, applied = ctx.saved_tensors
    if type(grad) is torch.Tensor:
        first = ctx.applied is None
        out, ctx.applied = scale_grad(grad, grad_loss, applied if first else ctx.applied, first)
        return out
    factor = grad_loss.to(torch.float32)
    if applied.numel():
        factor = factor / torch.where(applied == 0, 1.0, applied)
    return (grad.to(torch.float32) * factor).to(grad.dtype)


def _register_fused_autograd(op: Op, grad_op, reduction_at: int) -> None:
    """Autograd for a fused loss op whose inputs are ``(logits, target, *params)`` with
    ``reduction`` at ``reduction_at``, and whose grad op takes
    ``(logits, target, grad_output, *params[:reduction_at - 2])`` (None for an op that is
    never called with 'none').

    'mean' / 'sum': the forward returned the gradient and its applied scale; the backward
    applies grad_output.
    'none': the inputs are kept and the backward recomputes the gradient in one pass.
    """

    def setup(ctx, inputs, output):
        # the gradient outputs get no gradient: without this autograd would fill a
        # logits-sized zeros tensor for it in every backward
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.set_materialize_grads(False)
        ctx.reduction, ctx.n_inputs = inputs[reduction_at], len(inputs)
        if ctx.reduction != "none":
            ctx.save_for_backward(output[1], output[2])
            ctx.applied = None  # the buffer's factor once a backward scaled it in place
            return
        args = inputs[:reduction_at]
        ctx.tensor_at = [k for k, a in enumerate(args) if isinstance(a, torch.Tensor)]
        ctx.args = [None if isinstance(a, torch.Tensor) else a for a in args]
        ctx.save_for_backward(*(args[k] for k in ctx.tensor_at))

    def backward(ctx, grad_loss, _grad_grad, _grad_applied):
        if ctx.reduction != "none":
            grad = _scale_saved_grad(ctx, grad_loss)
        else:
            args = list(ctx.args)
            for k, tensor in zip(ctx.tensor_at, ctx.saved_tensors, strict=True):
                args[k] = tensor
            grad = grad_op(args[0], args[1], grad_loss, *args[2:])
        return (grad,) + (None,) * (ctx.n_inputs - 1)

    op.register_autograd(backward, setup)


def _finish(partials, grad, reduction, denom, shape, logits):
    """The op's outputs ``(loss, gradient buffer, its applied scale)`` from the kernel's
    partial (or per-element) losses (see ``_tiles.applied_scale``)."""
    applied = applied_scale(grad, denom, defers_mean(logits, reduction))
    if reduction == "none":
        return partials.view(shape), grad, applied
    if reduction == "sum":
        return sum_partials(partials), grad, applied
    # one partial is its own sum (a COUNT launch's: _counted summed it)
    total = partials.reshape(()) if partials.numel() == 1 else sum_partials(partials)
    return total / denom[0], grad, applied


_register_fused_autograd(_softmax_pixel_loss, _softmax_pixel_grad, 9)


def _need_grad(logits: torch.Tensor) -> bool:
    return logits.requires_grad and torch.is_grad_enabled()


@kernel_api
def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    avg_non_ignore: bool = True,
    validate: bool = False,
) -> torch.Tensor:
    """Triton pixel-wise cross-entropy; semantics of ``segtriton.reference.cross_entropy``
    (``F.cross_entropy``: class weights, label smoothing, ignore_index, weighted 'mean').

    Returns a float32 loss. ``validate=True`` raises ValueError on labels outside
    ``[0, C)`` (a host sync); otherwise such labels make the loss NaN. A floating (or bool)
    target of the logits' shape holds class probabilities: :func:`cross_entropy_probs` (with
    ``ignore_index`` None or the default -100, as in the reference).
    """
    if is_probs(logits, target):
        check_probs_ignore(target, ignore_index)
        return cross_entropy_probs(logits, target, weight, reduction, label_smoothing, validate)
    checked_target(logits, target, True, ignore_index, validate)
    check_choice("reduction", reduction, _REDUCTIONS)
    label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    w = _class_vector("weight", weight, logits.shape[1], logits, validate)
    loss, _, _ = _softmax_pixel_loss(
        logits,
        target,
        w,
        None,
        _label_ignore(ignore_index),
        float(label_smoothing),
        0.0,
        1.0,
        False,
        reduction,
        bool(avg_non_ignore),
        _need_grad(logits),
        None,
    )
    return loss


@kernel_api
def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int = 100000,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Triton OHEM cross-entropy; semantics of ``segtriton.reference.ohem_cross_entropy``.

    No host sync: the cross-entropy kernel with reduction 'none' gives every pixel's
    ``nll = -log p`` in fp32, a radix select over those finds the threshold on the device
    (:func:`_ohem_labels`; no sort), and the kept pixels' labels (the others set to -1)
    go through :func:`cross_entropy`, which writes the gradient in its forward: two
    passes over the logits. Returns float32. ``validate=True`` raises ValueError on
    labels outside ``[0, C)`` (a host sync); otherwise such labels make the loss NaN.

    The selection compares fp32 ``-log p``, which is 0 (``p`` taken as 1) only below
    about 1e-38, where the float64 reference's ``p`` is 1 from ``-log p`` below 1.1e-16.
    So where ``t`` is 1 (``thresh=1``, or a ``min_kept`` that reaches the most confident
    pixels) the two may keep different pixels among those near ``p = 1``: each adds under
    1e-16 to the sum, but 1 to the 'mean' divisor. At the ``min_kept`` cut, two pixels
    whose ``-log p`` differ below float32's resolution tie, and the kernel keeps neither
    where the reference keeps the less sure one; with ``thresh=0`` and ``min_kept=1``
    'mean' is then NaN (0 / 0), as the reference's is for an exact tie.
    """
    checked_target(logits, target, True, ignore_index, validate)
    check_choice("reduction", reduction, _REDUCTIONS)
    thresh = check_number("thresh", thresh, 0.0, 1.0)
    min_kept = check_min_kept(min_kept)
    w = _class_vector("weight", weight, logits.shape[1], logits, validate)
    with torch.no_grad():  # select on -log p (fp32 keeps its bits where p rounds to 1)
        nll = cross_entropy(logits.detach(), target, ignore_index=ignore_index, reduction="none")
        max_nll = -math.log(thresh) if thresh else math.inf
        labels, n_kept = _ohem_labels(
            nll,
            target,
            logits.shape[1],
            _label_ignore(ignore_index),
            min(min_kept, nll.numel()),
            max_nll,
        )
    # 'mean' divides by the kept count (not their weights; NaN, zero gradient, for none)
    denom = n_kept.to(torch.float32).reshape(1) if reduction == "mean" else None
    loss, _, _ = _softmax_pixel_loss(
        logits, labels, w, None, -1, 0.0, 0.0, 1.0, False, reduction, True,
        _need_grad(logits), denom,
    )  # fmt: skip
    return loss


@kernel_api
def recall_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Triton recall cross-entropy; semantics of
    ``segtriton.reference.recall_cross_entropy``.

    The metrics' confusion kernel (arg-max fused, integer counts) gives each class's
    valid pixels and hits on the device; their weights ``1 - recall`` and the valid count
    go to the cross-entropy kernel as its class weights and 'mean' divisor, which writes
    the gradient in its forward: two passes over the logits, no host sync. Returns
    float32. ``validate`` as in :func:`cross_entropy`; without it a label outside
    ``[0, C)`` makes the loss NaN.
    """
    checked_target(logits, target, True, ignore_index, validate)
    check_choice("reduction", reduction, _REDUCTIONS)
    with torch.no_grad():
        w, n_valid = _recall_weights(logits.detach(), target, ignore_index)
    loss, _, _ = _softmax_pixel_loss(
        logits, target, w, None, _label_ignore(ignore_index), 0.0, 0.0, 1.0, False, reduction, True,
        _need_grad(logits), n_valid if reduction == "mean" else None,
    )  # fmt: skip
    return loss


@op("segtriton::recall_weights")
def _recall_weights(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``w_c = 1 - recall_c`` (0 for a class without valid pixels) of the arg-max
    prediction, and the valid-pixel count as fp32 ``[1]``, from the confusion kernel."""
    cm, _ = _confusion(logits, target, logits.shape[1], ignore_index, False)
    gt = cm.sum(1)
    w = torch.where(gt > 0, (gt - cm.diagonal()) / gt.clamp_min(1), 0.0)
    return w.float(), gt.sum().to(torch.float32).reshape(1)


@_recall_weights.register_fake
def _(logits, target, ignore_index):
    return logits.new_empty(logits.shape[1], dtype=torch.float32), logits.new_empty(
        1, dtype=torch.float32
    )


@kernel_api
def topk_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    k: float = 10.0,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Triton top-k cross-entropy; semantics of ``segtriton.reference.topk_cross_entropy``.

    :func:`cross_entropy` with reduction 'none' gives every pixel's loss in fp32; a radix
    select over those finds the n-th largest on the device (no sort, no host sync) and
    one more pass writes each pixel's share (:func:`_topk_share`). The backward is the
    per-pixel one of :func:`cross_entropy`: two passes over the logits in all. Returns
    float32. ``validate=True`` raises ValueError on labels outside ``[0, C)`` (a host
    sync); otherwise such labels make the loss NaN.
    """
    checked_target(logits, target, True, ignore_index, False)  # cross_entropy validates
    check_choice("reduction", reduction, _REDUCTIONS)
    n = topk_count(target.numel(), k)
    losses = cross_entropy(
        logits, target, weight, ignore_index, "none", label_smoothing, validate=validate
    )
    share = _topk_share(losses.detach(), n)
    if reduction == "none":
        return losses * share
    total = torch.dot(losses.reshape(-1), share.reshape(-1))  # no product tensor
    return total if reduction == "sum" else total / n


_SELECT_BLOCK = 1024


def _select_labels(target: torch.Tensor) -> tuple[torch.Tensor, int, int, int, bool]:
    """``(view, S, batch stride, pixel stride, flat)`` of labels ``[B, *S]`` for the
    select kernels; ``flat``: pixel i lies at offset i."""
    t, stb, sts = label_view(target)
    S = spatial_size(t)
    return t, S, stb, sts, sts == 1 and (stb == S or t.shape[0] == 1)


def _radix_select(
    v: torch.Tensor, labels: tuple | None, ignore_index: int | None, k_max: int
) -> torch.Tensor:
    """The select state (``_select_kernels``) of the ``k``-th largest of the fp32 values
    ``v`` (flat, contiguous), ``k = min(k_max, n_valid - 1)``: ``n_valid`` counts the
    labels (:func:`_select_labels` of the target) that are not ``ignore_index``, or every
    value when ``labels`` is None. Four histogram passes over ``v``, the first also over
    the labels."""
    N = v.numel()
    tiles, n_programs = tile_chunks(N, _SELECT_BLOCK, 1)
    state = torch.zeros(4 + 4 * 256, dtype=torch.int64, device=v.device)
    if labels is None:  # no labels to read: every value counts
        state[2].fill_(N)  # a kernel: an indexed assignment copies from the host
    t, S, stb, sts, flat = (v, N, N, 1, True) if labels is None else labels
    ign = ignore_arg(ignore_index, True)[0]
    for shift in (24, 16, 8, 0):
        first = shift == 24
        _radix_hist_kernel[(n_programs,)](
            v, t, state, state[4:], N, S, stb, sts, ign, tiles,
            SHIFT=shift, FIRST=first, COUNT=first and labels is not None, FLAT=flat,
            BLOCK=_SELECT_BLOCK,
        )  # fmt: skip
        _radix_scan_kernel[(1,)](state, state[4:], k_max, SHIFT=shift, FIRST=first)
    return state


@op("segtriton::ohem_labels")
def _ohem_labels(
    nll: torch.Tensor,
    target: torch.Tensor,
    C: int,
    ignore_index: int,
    min_kept: int,
    max_nll: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 labels of the pixels OHEM keeps (-1 elsewhere; -2 for a kept bad label) and
    their device count: a radix select (:func:`_radix_select`) finds ``order_k``, the
    ``min(min_kept, n_valid - 1)``-th largest ``nll``, then one pass keeps the valid pixels
    without ``nll <= min(order_k, max_nll)``. Ignored pixels hold nll 0, at or below every
    valid one, so they do not move ``order_k``. Five passes over fp32 ``nll`` (one with the
    labels), two over the labels; no sort, no host sync."""
    v = nll.reshape(-1)
    labels = _select_labels(target)
    state = _radix_select(v, labels, ignore_index, min_kept)
    t, S, stb, sts, flat = labels
    tiles, n_programs = tile_chunks(v.numel(), _SELECT_BLOCK, 1)
    out = torch.empty(nll.shape, dtype=torch.int32, device=nll.device)
    ign = ignore_arg(ignore_index, True)[0]
    _ohem_keep_kernel[(n_programs,)](
        v, t, state, out, v.numel(), S, stb, sts, C, ign, max_nll, tiles,
        FLAT=flat, BLOCK=_SELECT_BLOCK,
    )  # fmt: skip
    return out, state[3].clone()  # a view would not match the fake's fresh scalar


@_ohem_labels.register_fake
def _(nll, target, C, ignore_index, min_kept, max_nll):
    return torch.empty(nll.shape, dtype=torch.int32, device=nll.device), nll.new_empty(
        (), dtype=torch.int64
    )


@op("segtriton::topk_share")
def _topk_share(losses: torch.Tensor, n: int) -> torch.Tensor:
    """Each pixel's fp32 share of the ``n`` largest ``losses`` (fp32, >= 0): 1 above the
    n-th largest ``t``, an equal part of what is left to the values at ``t``, 0 below; a
    NaN ranks above every finite value. A radix select over every value (:func:`_radix_select`),
    then one pass: five passes over ``losses``."""
    v = losses.reshape(-1)
    state = _radix_select(v, None, None, n - 1)
    out = torch.empty_like(v)
    tiles, n_programs = tile_chunks(v.numel(), _SELECT_BLOCK, 1)
    _topk_share_kernel[(n_programs,)](
        v, state, state[4:], out, v.numel(), tiles, BLOCK=_SELECT_BLOCK
    )
    return out.view(losses.shape)


@_topk_share.register_fake
def _(losses, n):
    return torch.empty_like(losses)


def softmax_focal_options(
    alpha: object, gamma: object, logits: torch.Tensor, validate: bool
) -> tuple[torch.Tensor | None, float, float]:
    """``(alpha vector or None, alpha scale, gamma)`` of a softmax focal term: ``alpha`` is
    None (scale 1), one number (the scale) or a per-class vector; ``gamma`` finite, >= 0."""
    gamma = check_number("gamma", gamma)
    if alpha is None:
        return None, 1.0, gamma
    if is_number(alpha):
        return None, check_number("alpha", alpha), gamma
    return _class_vector("alpha", alpha, logits.shape[1], logits, validate), 1.0, gamma


def sigmoid_focal_options(
    gamma: float,
    alpha: float | Sequence[float] | torch.Tensor | None,
    logits: torch.Tensor,
    validate: bool,
) -> tuple[float, float | torch.Tensor | None]:
    """``(gamma, alpha)`` of a sigmoid focal term: ``alpha`` None, one number in [0, 1] or an
    fp32 per-class vector on the logits' device (a tensor's values read with ``validate``;
    one that requires grad is refused)."""
    if isinstance(alpha, torch.Tensor):
        check_constant("alpha", alpha)
    like = logits.new_empty(0, dtype=torch.float32)
    return ref_pixelwise.sigmoid_focal_options(gamma, alpha, logits.shape[1], like, validate)


@kernel_api
def softmax_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float | torch.Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Triton multiclass softmax focal loss; semantics of
    ``segtriton.reference.softmax_focal_loss`` (``-alpha_y (1 - p_y)^gamma log p_y``,
    'mean' over valid pixels). Returns a float32 loss; ``validate`` as in
    :func:`cross_entropy`.
    """
    checked_target(logits, target, True, ignore_index, validate)
    check_choice("reduction", reduction, _REDUCTIONS)
    vec, scalar, gamma = softmax_focal_options(alpha, gamma, logits, validate)
    loss, _, _ = _softmax_pixel_loss(
        logits,
        target,
        None,
        vec,
        _label_ignore(ignore_index),
        0.0,
        float(gamma),
        float(scalar),
        True,
        reduction,
        True,
        _need_grad(logits),
        None,
    )
    return loss


# --- cross-entropy against class probabilities ----------------------------------------


def _probs_launch(logits, target, weight, smoothing, reduction, denom, grad, gout):
    """One launch of the probability-target kernel (see :func:`_softmax_launch`)."""
    x, t, (sxb, sxc, sxs, stb, stc, sts) = loss_views(logits, target, False)
    C, S, n_pblocks, n_blocks, n_programs, (block_c, block_p, single) = tile_grid(x)
    per_pixel = reduction == "none"
    loss, (g, sgb, sgc, sgs) = _outputs(gout, x.shape[0] * S if per_pixel else n_programs, grad, x)
    _probs_loss_kernel[(n_programs,)](
        x,
        t,
        weight,
        g,
        loss,
        denom,
        gout,
        C,
        S,
        n_pblocks,
        n_blocks,
        sxb,
        sxc,
        sxs,
        stb,
        stc,
        sts,
        sgb,
        sgc,
        sgs,
        smoothing,
        HAS_W=weight is not None,
        WRITE_GRAD=grad is not None,
        WRITE_LOSS=loss is not None,
        PER_PIXEL=per_pixel,
        MEAN=reduction == "mean",
        DEFER_MEAN=defers_mean(logits, reduction),
        SINGLE=single,
        TILES=TILES_PER_PROGRAM,
        STAGES=STAGES,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )
    return loss


def _pixel_shape(logits: torch.Tensor) -> tuple[int, ...]:
    return (logits.shape[0], *logits.shape[2:])


@op("segtriton::probs_pixel_loss")
def _probs_pixel_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    smoothing: float,
    reduction: str,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    denom = None
    if reduction == "mean":  # every pixel counts, as in torch
        pixels = float(logits.numel() // logits.shape[1])
        denom = torch.full((1,), pixels, dtype=torch.float32, device=logits.device)
    grad = _grad_buffer(logits, need_grad, reduction)
    loss = _probs_launch(
        logits, target, weight, smoothing, reduction, denom, grad if grad.numel() else None, None
    )
    return _finish(loss, grad, reduction, denom, _pixel_shape(logits), logits)


@_probs_pixel_loss.register_fake
def _(logits, target, weight, smoothing, reduction, need_grad):
    shape = _pixel_shape(logits) if reduction == "none" else ()
    loss = logits.new_empty(shape, dtype=torch.float32)
    return loss, *_fake_grad(logits, need_grad, reduction)


@op("segtriton::probs_pixel_grad")
def _probs_pixel_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    grad_output: torch.Tensor,
    weight: torch.Tensor | None,
    smoothing: float,
) -> torch.Tensor:
    """dL/dz for reduction='none' with a per-pixel grad_output (recomputed in one pass)."""
    grad = grad_like(logits)
    gout = grad_output.to(torch.float32).contiguous()
    _probs_launch(logits, target, weight, smoothing, "none", None, grad, gout)
    return grad


@_probs_pixel_grad.register_fake
def _(logits, target, grad_output, weight, smoothing):
    return grad_like(logits)


_register_fused_autograd(_probs_pixel_loss, _probs_pixel_grad, 4)


@kernel_api
def cross_entropy_probs(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    validate: bool = False,
) -> torch.Tensor:
    """Triton cross-entropy against class probabilities ``[B, C, *spatial]``; semantics of
    ``segtriton.reference.cross_entropy_probs`` (``F.cross_entropy`` with a probability
    target: class weights, label smoothing, 'mean' over every pixel).

    One pass, as :func:`cross_entropy`, reading the target tile beside the logits tile.
    Returns a float32 loss. A target value outside [0, 1] makes its pixel's loss NaN;
    ``validate=True`` raises a ValueError instead (a host sync).
    """
    target = checked_target(logits, target, False, None, validate)
    check_choice("reduction", reduction, _REDUCTIONS)
    label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    w = _class_vector("weight", weight, logits.shape[1], logits, validate)
    loss, _, _ = _probs_pixel_loss(
        logits, target, w, float(label_smoothing), reduction, _need_grad(logits)
    )
    return loss


# --- sigmoid family: BCE with logits and sigmoid focal ---------------------------------


def _sigmoid_launch(
    logits,
    target,
    labels,
    weight,
    pos_weight,
    alpha,
    ignore_index,
    gamma,
    smoothing,
    focal,
    reduction,
    denom,
    grad,
    gout,
    count=False,
):
    """One launch of the sigmoid kernel; returns as :func:`_softmax_launch` does, per
    element in the logits' layout where :func:`_sigmoid_flat` says so."""
    flat = _sigmoid_flat(logits, target, labels, weight, pos_weight, grad, gout)
    x, t = (flat_view(logits), flat_view(target)) if flat else (logits, target)
    x, t, (sxb, sxc, sxs, stb, stc, sts) = loss_views(x, t, labels)
    if flat:
        grad, gout = (v if v is None else flat_view(v) for v in (grad, gout))
    B, C = x.shape[:2]
    S = spatial_size(x)
    # elementwise: a walk over class rows, none padded (16-class chunks took 32 rows for 19)
    block_c, block_p = 1, tile_pixels(1)
    n_pblocks = cdiv(S, block_p)
    n_blocks = B * n_pblocks
    n_programs = program_count(n_blocks)
    per_el = reduction == "none"
    n_loss = B * C * S if per_el else n_programs * (2 if count else 1)
    loss, (g, sgb, sgc, sgs) = _outputs(gout, n_loss, grad, x)
    _sigmoid_loss_kernel[(n_programs,)](
        x,
        t,
        weight,
        pos_weight,
        g,
        loss,
        denom,
        gout,
        C,
        S,
        n_pblocks,
        n_blocks,
        sxb,
        sxc,
        sxs,
        stb,
        stc,
        sts,
        sgb,
        sgc,
        sgs,
        ignore_arg(ignore_index, labels)[0],
        gamma,
        smoothing,
        1.0 if alpha is None else alpha,
        IS_FOCAL=focal,
        LABELS=labels,
        HAS_W=weight is not None,
        HAS_PW=pos_weight is not None,
        SCALAR_ALPHA=alpha is not None,
        HAS_IGNORE=ignore_index is not None,
        SMOOTH=smoothing != 0,
        WRITE_GRAD=grad is not None,
        WRITE_LOSS=loss is not None,
        PER_ELEMENT=per_el,
        MEAN=reduction == "mean",
        DEFER_MEAN=defers_mean(logits, reduction),
        COUNT=count,
        TILES=TILES_PER_PROGRAM,
        STAGES=STAGES,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )
    if flat and per_el and loss is not None:  # written in storage order
        loss = loss.as_strided(logits.shape, logits.stride())
    return loss


def _sigmoid_flat(logits, target, labels, weight, pos_weight, *others) -> bool:
    """Whether the sigmoid kernel reads logits, masks and ``others`` (gradient, per-element
    grad_output; None where absent) as flat ranges (:func:`~._tiles.flat_layout`), and
    writes per-element losses in the logits' layout.

    The kernel walks class rows, each load a run of pixels of one class, so on
    channels_last logits a thread reads elements C apart. Without per-class factors the
    loss of an element depends on no index, so masks stored as the logits are go in with
    them as flat ranges (one class, numel pixels), each thread's run contiguous (sm_90,
    BCE at C = 3 bf16: 3 vector loads and stores a thread, 47 registers; the walk takes
    24 scalar ones and 113). Per-class factors keep the walk: picked per element (offset
    mod C, then a gather), they took a flat BCE with weight and pos_weight to 115 SASS
    instructions per element, where the walk's loop takes 70 and a flat one without them
    69."""
    per_class = weight is not None or pos_weight is not None
    return not (labels or per_class) and flat_layout(logits, target, *others)


def _sigmoid_denom(logits, target, labels, ignore_index, reduction):
    if reduction != "mean":
        return None
    C = logits.shape[1]
    if ignore_index is None:
        return torch.full((1,), float(logits.numel()), dtype=torch.float32, device=logits.device)
    count = _prepass(target, C, ignore_index, labels=labels, weight=None)
    return count * C if labels else count


@op("segtriton::sigmoid_pixel_loss")
def _sigmoid_pixel_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    labels: bool,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    alpha: float | None,
    ignore_index: float | None,
    gamma: float,
    smoothing: float,
    focal: bool,
    reduction: str,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BCE (``focal`` False) or sigmoid focal loss and its fused gradient. ``pos_weight`` is
    BCE's, or the focal loss's alpha per class; ``alpha`` the focal loss's one alpha for
    every class (None otherwise); ``smoothing``: BCE's label smoothing (0 for the focal
    loss)."""
    count = _counts_in_kernel(logits, reduction, need_grad, ignore_index is None, False)
    denom = None if count else _sigmoid_denom(logits, target, labels, ignore_index, reduction)
    grad = _grad_buffer(logits, need_grad, reduction)
    loss = _sigmoid_launch(
        logits,
        target,
        labels,
        weight,
        pos_weight,
        alpha,
        ignore_index,
        gamma,
        smoothing,
        focal,
        reduction,
        denom,
        grad if grad.numel() else None,
        None,
        count,
    )
    if count:
        loss, denom = _counted(loss)
    return _finish(loss, grad, reduction, denom, logits.shape, logits)


@_sigmoid_pixel_loss.register_fake
def _(
    logits,
    target,
    labels,
    weight,
    pos_weight,
    alpha,
    ignore_index,
    gamma,
    smoothing,
    focal,
    reduction,
    need_grad,
):
    if reduction != "none":
        loss = logits.new_empty((), dtype=torch.float32)
    elif _sigmoid_flat(logits, target, labels, weight, pos_weight):
        loss = torch.empty_like(logits, dtype=torch.float32)
    else:
        loss = logits.new_empty(logits.shape, dtype=torch.float32)
    return loss, *_fake_grad(logits, need_grad, reduction)


@op("segtriton::sigmoid_pixel_grad")
def _sigmoid_pixel_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    grad_output: torch.Tensor,
    labels: bool,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    alpha: float | None,
    ignore_index: float | None,
    gamma: float,
    smoothing: float,
    focal: bool,
) -> torch.Tensor:
    grad = grad_like(logits)
    gout = grad_output.to(torch.float32)
    if not _sigmoid_flat(logits, target, labels, weight, pos_weight, grad):
        gout = gout.contiguous()
    elif gout.stride() != logits.stride():  # into the logits' layout, read flat
        gout = grad_like(logits, torch.float32).copy_(gout)
    _sigmoid_launch(
        logits,
        target,
        labels,
        weight,
        pos_weight,
        alpha,
        ignore_index,
        gamma,
        smoothing,
        focal,
        "none",
        None,
        grad,
        gout,
    )
    return grad


@_sigmoid_pixel_grad.register_fake
def _(
    logits, target, grad_output, labels, weight, pos_weight, alpha, ignore_index, gamma,
    smoothing, focal,
):  # fmt: skip
    return grad_like(logits)


_register_fused_autograd(_sigmoid_pixel_loss, _sigmoid_pixel_grad, 10)


@kernel_api
def binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | Sequence[float] | None = None,
    pos_weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    validate: bool = False,
) -> torch.Tensor:
    """Triton binary / multilabel BCE on logits; semantics of
    ``segtriton.reference.binary_cross_entropy_with_logits`` (per-class ``weight`` and
    ``pos_weight``, 'mean' over valid elements, ``label_smoothing``). Targets: masks of
    the logits' shape (any dtype, soft allowed; ``[B, *S]`` for C = 1). ``validate=True``
    checks mask values on the host; otherwise values outside [0, 1] make the loss NaN.
    Any layout is read in place; with channels_last logits, masks in channels_last too
    let a loss without ``weight`` or ``pos_weight`` read whole vectors, and 'none' then
    returns that layout (:func:`_sigmoid_flat`).
    """
    target = checked_target(logits, target, False, ignore_index, validate)
    check_choice("reduction", reduction, _REDUCTIONS)
    label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
    C = logits.shape[1]
    w = _class_vector("weight", weight, C, logits, validate)
    pw = _class_vector("pos_weight", pos_weight, C, logits, validate)
    ign = ignore_value(ignore_index, target, False)
    loss, _, _ = _sigmoid_pixel_loss(
        logits, target, False, w, pw, None, ign, 0.0, label_smoothing, False, reduction,
        _need_grad(logits),
    )  # fmt: skip
    return loss


@kernel_api
def sigmoid_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "binary",
    alpha: float | torch.Tensor | Sequence[float] | None = 0.25,
    gamma: float = 2.0,
    weight: torch.Tensor | Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Triton sigmoid focal loss; semantics of ``segtriton.reference.sigmoid_focal_loss``
    (modes 'binary', 'multilabel' on masks, 'multiclass' one-vs-rest on integer labels;
    ``alpha`` one number or one per class, ``weight`` per class). ``validate`` as in
    :func:`cross_entropy` / :func:`binary_cross_entropy_with_logits`; layouts as in the
    latter, where a scalar ``alpha`` is no per-class factor ('multiclass' labels walk).
    """
    check_mode(mode, logits)
    check_choice("reduction", reduction, _REDUCTIONS)
    gamma, alpha = sigmoid_focal_options(gamma, alpha, logits, validate)
    w = _class_vector("weight", weight, logits.shape[1], logits, validate)
    labels = mode == "multiclass"
    target = checked_target(logits, target, labels, ignore_index, validate)
    ign = ignore_value(ignore_index, target, labels)
    vec = alpha if isinstance(alpha, torch.Tensor) else None
    scalar = None if alpha is None or vec is not None else float(alpha)
    loss, _, _ = _sigmoid_pixel_loss(
        logits, target, labels, w, vec, scalar, ign, float(gamma), 0.0, True, reduction,
        _need_grad(logits),
    )  # fmt: skip
    return loss
