"""Exact Euclidean distance transform on the GPU, signed distance maps, and the boundary
and Hausdorff (HD-DT) losses.

``signed_distance_map`` has the semantics of the reference (Kervadec's signed map: the
distance to the object outside it, minus (the distance to the background - 1) inside,
0 for an empty or full mask; optional anisotropic ``spacing``) but runs batched over
every (image, class) map in Triton (see ``_edt_kernels.py``) and returns float32; the
losses map only the classes they select.
``boundary_loss`` reads the logits, that map (or one passed in) and the labels once, and
writes the loss and its gradient in the same pass (``_boundary_kernels.py``).
``hausdorff_dt_loss`` builds two maps with the same transform, from the target and from
the prediction's masks, and runs the same fused pass over both. The surface-distance
metrics (``surface.py``) use the same transform.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

from segtriton.reference import boundary as ref_boundary
from segtriton.reference._common import (
    check_choice,
    check_constant,
    check_mode,
    check_probability_input,
    checked_target,
    checks_flags,
    device_constant,
    label_mask,
    value_checks,
)

from ._boundary_kernels import _boundary_kernel, _pred_sites_kernel
from ._edt_kernels import _edt_axis_kernel, _edt_first_kernel
from ._ops import op
from ._runtime import kernel_api, launch_on
from ._tiles import (
    activation,
    activation_flags,
    cdiv,
    class_blocks,
    defers_mean,
    ignore_arg,
    ignore_value,
    loss_views,
    next_pow2,
    num_warps_for,
    pixel_view,
    spatial_size,
    walk_labels,
)
from .pixelwise import (
    _fake_grad,
    _finish,
    _grad_buffer,
    _need_grad,
    _prepass,
    _register_fused_autograd,
)

MAX_LINE = 16384  # longest axis the 1-D pass holds in one tile


@kernel_api
def squared_edt(sites: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """``[N, *S]`` float32: the squared Euclidean distance from every pixel to the nearest
    True pixel of its map (``sites`` is a bool ``[N, *S]``), ``inf`` for a map with none.
    ``spacing``: the size of a pixel along each spatial axis (default 1)."""
    spacing = ref_boundary.check_spacing(spacing, sites.dim() - 1)
    return _transform(sites.contiguous().view(torch.uint8), sites.shape, None, None, spacing)


SIGNED, FIELD, ROOT_FIELD = 1, 2, 3  # what _transform combines the transforms into


def _transform(
    src: torch.Tensor,
    shape: Sequence[int],
    classes: torch.Tensor | None,
    ignore_index: float | None,
    spacing: Sequence[float],
    kind: int = 0,
) -> torch.Tensor:
    """float32 ``shape = [N, *S]``: the squared transform of the sites, or with ``kind``
    SIGNED the signed map, FIELD the squared distance to the other side of the boundary,
    ROOT_FIELD that distance (``_combined``).
    ``src`` is contiguous: labels ``[B, *S]`` when ``classes`` (an int32 table of K class
    indices, ``N = B * K``) is given (map ``b * K + k`` has the sites
    ``label == classes[k]``), else masks ``[N, *S]`` (sites: ``value != 0``); a value equal
    to ``ignore_index`` is never a site. ``spacing``: one checked entry per spatial axis."""
    N, *S = shape
    nd = len(S)
    if max(S) > MAX_LINE:
        raise ValueError(f"the distance transform handles axes up to {MAX_LINE} pixels")
    out = torch.empty(shape, dtype=torch.float32, device=src.device)
    if out.numel() == 0:
        return out
    both = kind != 0
    inside = torch.empty_like(out) if both else out
    L = S[-1]
    n_lines = out.numel() // L
    flags = torch.empty(2 if both else 1, n_lines, dtype=torch.uint8, device=src.device)
    block = next_pow2(L)
    labels = classes is not None
    ign, has_ignore = ignore_arg(ignore_index, labels)
    rows = max(1, 4096 // block)
    output = (2 if nd == 1 else 1) if both else 0
    _edt_first_kernel[(cdiv(n_lines, rows),)](
        src, out, inside, flags, classes, n_lines, n_lines // N, L,
        1 if classes is None else classes.numel(), ign, spacing[-1] ** 2, LABELS=labels,
        HAS_IGNORE=has_ignore, OUTPUT=output, KIND=kind, ROWS=rows, BLOCK=block,
        num_warps=8 if rows * block >= 4096 else 4,
    )  # fmt: skip
    if nd == 1:
        return out
    spare = torch.empty_like(out)
    if both:
        inside, spare = _axis_passes(inside, spare, flags[1], S, spacing, None, 0)
    return _axis_passes(out, spare, flags[0], S, spacing, inside if both else None, kind)[0]


def _axis_passes(f, spare, flags, S, spacing, other, kind):
    """The passes along tensor dims ``nd-1 .. 1`` of ``f [N, *S]``, ping-ponging with
    ``spare``; the last combines with ``other`` into a map of ``kind`` when given.
    Returns ``(result, the free buffer)``. ``flags``: per line of the first pass, whether
    it holds a site; reduced over the processed axes, they mark slabs with none."""
    nd = len(S)
    slab = flags.view(-1, *S[:-1])
    for axis in range(nd - 1, 0, -1):
        slab = slab.amax(dim=-1)
        L, inner = S[axis - 1], math.prod(S[axis:])
        block = min(16, next_pow2(L))
        rows = 8192 // (block * block)
        n_lines, n_pos_tiles = slab.numel() * inner, cdiv(L, block)
        grid = (cdiv(n_lines, rows) * n_pos_tiles,)
        last = other is not None and axis == 1
        _edt_axis_kernel[grid](
            f, spare, other if last else f, slab, L, inner, n_lines, n_pos_tiles,
            spacing[axis - 1] ** 2, KIND=kind if last else 0, ROWS=rows, BLOCK=block,
        )  # fmt: skip
        f, spare = spare, f
    return f, spare


@op("segtriton::class_distance_map")
def _class_map_op(
    target: torch.Tensor,
    classes: list[int],
    labels: bool,
    spacing: list[float],
    ignore_index: float | None,
    kind: int,
) -> torch.Tensor:
    """float32 ``[B, K, *S]`` of ``kind`` (see :func:`_transform`) for the K ``classes``
    (distinct channels) of labels ``[B, *S]`` or masks ``[B, C, *S]``."""
    src = target.contiguous() if labels else _channels(target, classes)
    if src.dtype == torch.bool:
        src = src.view(torch.uint8)
    B, *spatial = target.shape if labels else (target.shape[0], *target.shape[2:])
    shape = (B * len(classes), *spatial)
    table = device_constant(classes, torch.int32, target.device) if labels else None
    phi = _transform(src, shape, table, ignore_index, spacing, kind)
    return phi.view(B, len(classes), *spatial)


@_class_map_op.register_fake
def _(target, classes, labels, spacing, ignore_index, kind):
    spatial = target.shape[1:] if labels else target.shape[2:]
    return target.new_empty((target.shape[0], len(classes), *spatial), dtype=torch.float32)


def _channels(x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Contiguous ``x[:, classes]`` (no copy when that is all of a contiguous ``x``)."""
    if classes == list(range(x.shape[1])):
        return x.contiguous()
    return x[:, classes].contiguous()


def _check_hard(target: torch.Tensor, ignore_index: float | None, what: str) -> None:
    """Raise unless every mask value is 0, 1 or ``ignore_index`` (a host sync)."""
    bad = (target != 0) & (target != 1)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        raise ValueError(f"{what} needs hard {{0, 1}} masks")


def _class_map(
    target, num_classes, mode, spacing, ignore_index, validate, kind, what, classes=None
):
    """The checks and the op behind :func:`signed_distance_map`, :func:`distance_field`
    and the boundary loss's map: the maps of ``classes`` (distinct, increasing), by
    default of every class."""
    num_classes = ref_boundary.check_map_target(target, num_classes, mode, ignore_index, what)
    labels = mode == "multiclass"
    if validate and labels:
        label_mask(target, num_classes, ignore_index)
    elif validate:
        _check_hard(target, ignore_index, what)
    nd = target.dim() - (1 if labels else 2)
    spacing = list(ref_boundary.check_spacing(spacing, nd))
    ign = ignore_value(ignore_index, target, labels)
    maps = list(range(num_classes)) if classes is None else classes
    with launch_on(target, what, "target"):
        return _class_map_op(target, maps, labels, spacing, ign, kind)


@checks_flags
def signed_distance_map(
    target: torch.Tensor,
    num_classes: int | None = None,
    mode: str = "multiclass",
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    validate: bool = False,
) -> torch.Tensor:
    """Triton signed distance map; semantics of ``segtriton.reference.signed_distance_map``
    (float32 on the target's device). The labels (or masks) are read in place, with no
    one-hot; a non-contiguous target is copied once. No host sync unless ``validate``, and
    a custom op, so ``torch.compile(fullgraph=True)`` and CUDA graphs take it.
    ``validate=True`` checks the labels / masks on the host first; otherwise a label
    outside ``[0, C)`` belongs to no class and a mask value other than 0/1 counts as
    foreground."""
    return _class_map(
        target, num_classes, mode, spacing, ignore_index, validate, SIGNED, "signed_distance_map"
    )


@checks_flags
def distance_field(
    target: torch.Tensor,
    num_classes: int | None = None,
    mode: str = "multiclass",
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    validate: bool = False,
) -> torch.Tensor:
    """Triton distance to the other side of each class's boundary; semantics of
    ``segtriton.reference.distance_field`` (float32), computed as
    :func:`signed_distance_map` is: the target's map of :func:`hausdorff_dt_loss`."""
    return _class_map(
        target, num_classes, mode, spacing, ignore_index, validate, ROOT_FIELD, "distance_field"
    )


def _selection(
    idx: list[int], C: int, phi_all: bool, psi_all: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached device tables: fp32 ``[C]``, how often each class is selected, and int32
    ``[2, C]``, each selected class's channel in the maps ``phi`` and ``psi`` (-1 for one
    not selected): the class itself in a map of all C classes (``*_all``), else its rank
    among the distinct selected classes (:func:`_distinct`)."""
    # a Counter, not `counts[c] += 1` on a list: torch 2.11's Dynamo cannot trace that
    selected = Counter(idx)
    counts = [selected[c] for c in range(C)]
    rank = {c: k for k, c in enumerate(_distinct(idx))}
    slots = [
        (c if whole else rank[c]) if counts[c] else -1
        for whole in (phi_all, psi_all)
        for c in range(C)
    ]
    return device_constant(counts, torch.float32, device), device_constant(
        slots, torch.int32, device
    )


def _distinct(idx: list[int]) -> list[int]:
    """The selected classes, each once, in increasing order: the channels of a map that
    holds only those."""
    return sorted(set(idx))


def _boundary_denom(target, counts, labels, ignore_index, n_selected):
    """Device scalar for 'mean': the valid entries of the selected classes (each counted
    as often as it is selected)."""
    if ignore_index is None:
        count = n_selected * (target.numel() if labels else target[:, 0].numel())
        return torch.full((1,), float(count), dtype=torch.float32, device=target.device)
    if labels:
        return _prepass(target, counts.numel(), int(ignore_index), True, None) * n_selected
    return _prepass(target, counts.numel(), float(ignore_index), False, counts)


@op("segtriton::distance_map_loss")
def _distance_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    phi: torch.Tensor,
    psi: torch.Tensor | None,
    counts: torch.Tensor,
    slots: torch.Tensor,
    act: int,
    ignore_index: float | None,
    n_selected: float,
    phi_exp: float,
    psi_exp: float,
    reduction: str,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused pass of the boundary loss over the signed map ``phi`` (``psi`` None) or of
    the Hausdorff loss over the distance maps ``phi`` (target) and ``psi`` (prediction,
    contiguous), whose powers ``phi_exp`` and ``psi_exp`` are its weights; ``counts`` and
    ``slots`` from :func:`_selection`; ``act`` a ``_tiles.activation`` code. Returns
    ``(loss, dL/dz for grad_output 1 times its applied scale, that scale)``; 'mean' or
    'sum' only (see ``pixelwise._finish``)."""
    labels, softmax, probs = activation_flags(act)
    x, t, strides = loss_views(logits, target, labels)
    phi, spb, spc, sps = pixel_view(phi)
    hausdorff = psi is not None
    grad = _grad_buffer(logits, need_grad, reduction)
    g, sgb, sgc, sgs = pixel_view(grad) if grad.numel() else (None, 0, 0, 0)
    mean = reduction == "mean"
    denom = _boundary_denom(t, counts, labels, ignore_index, n_selected) if mean else None
    B, C = x.shape[:2]
    S = spatial_size(x)
    block_c, block_p, single = class_blocks(C)
    if hausdorff and labels and not single:  # a walk Triton < 3.7 builds on wide labels only
        t, strides = walk_labels(t, strides)
    n_pblocks = cdiv(S, block_p)
    partials = torch.empty(B * n_pblocks, dtype=torch.float32, device=x.device)
    ign, has_ignore = ignore_arg(ignore_index, labels)
    _boundary_kernel[(B * n_pblocks,)](
        x, t, phi, psi if hausdorff else phi, counts, slots, g, partials, denom, C,
        0 if psi is None else psi.shape[1], S, n_pblocks, *strides, spb, spc, sps, sgb, sgc, sgs,
        ign, phi_exp, psi_exp, SOFTMAX=softmax, LABELS=labels,
        HAS_IGNORE=has_ignore, PROBS=probs, HAUSDORFF=hausdorff,
        WRITE_GRAD=g is not None, MEAN=mean, DEFER_MEAN=defers_mean(logits, reduction),
        SINGLE=single, BLOCK_C=block_c, BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )  # fmt: skip
    return _finish(partials, grad, reduction, denom, None, logits)


@_distance_op.register_fake
def _(logits, target, phi, psi, counts, slots, act, ignore_index, n_selected, phi_exp,
      psi_exp, reduction, need_grad):  # fmt: skip
    loss = logits.new_empty((), dtype=torch.float32)
    return loss, *_fake_grad(logits, need_grad, reduction)


_register_fused_autograd(_distance_op, None, 11)


@kernel_api
def boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    dist_map: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
    validate: bool = False,
) -> torch.Tensor:
    """Triton boundary loss; semantics of ``segtriton.reference.boundary_loss`` with the
    map from :func:`signed_distance_map` (GPU EDT) unless ``dist_map`` is given (any float
    dtype and layout; it gets no gradient, so one that requires grad is refused).

    'mean' and 'sum' run one fused kernel: it reads the logits, the map and the labels
    (masks) once, sums ``p_c phi_c`` over valid entries of the selected classes and writes
    dL/dz in the same pass (grad_output is applied in place in the backward, as for the
    pixel-wise losses); no host sync. The EDT maps only the selected classes (K of them:
    ``[B, K, *S]``), and of a given map only their channels are read. 'none' applies the
    reference formula to the GPU map of every class.
    Returns float32. ``validate=True`` checks labels / masks on the host first; otherwise a
    bad label or mask value makes the loss NaN (and counts as no class in the map).
    """
    check_mode(mode, logits)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    labels = mode == "multiclass"
    target = checked_target(logits, target, labels, ignore_index, validate)
    if validate and not from_logits:
        check_probability_input(logits, target, labels, ignore_index)
    C = logits.shape[1]
    idx = ref_boundary.selected_classes(classes, C, mode)
    given = dist_map is not None
    if dist_map is not None:
        ref_boundary.check_map(dist_map, logits)
        check_constant("dist_map", dist_map)
    else:  # 'none' applies the reference formula, which reads every class's map
        dist_map = _class_map(
            target, C, mode, spacing, ignore_index, validate and not labels, SIGNED,
            "boundary_loss", None if reduction == "none" else _distinct(idx),
        )  # fmt: skip
    if reduction == "none":
        with value_checks(False):
            return ref_boundary.boundary_loss(
                logits, target, mode, idx, dist_map, None, ignore_index, reduction, from_logits
            )
    loss, _, _ = _distance_op(
        logits,
        target,
        dist_map,
        None,
        *_selection(idx, C, given, True, logits.device),
        activation(labels, from_logits),
        ignore_value(ignore_index, target, labels),
        float(len(idx)),
        1.0,
        1.0,
        reduction,
        _need_grad(logits),
    )
    return loss


def _pred_sites(
    logits: torch.Tensor, target: torch.Tensor, act: int, ignore_index: float | None
) -> torch.Tensor:
    """The prediction's masks (``_pred_sites_kernel``; ``act`` a ``_tiles.activation``
    code): int32 ``[B, *S]`` labels (-1: no class) for a softmax, else uint8
    ``[B, C, *S]``; contiguous."""
    labels, softmax, probs = activation_flags(act)
    x, t, strides = loss_views(logits, target, labels)
    B, C = x.shape[:2]
    S = spatial_size(x)
    shape = (B, *logits.shape[2:]) if softmax else logits.shape
    out = torch.empty(shape, dtype=torch.int32 if softmax else torch.uint8, device=x.device)
    block_c, block_p, _ = class_blocks(C)
    n_pblocks = cdiv(S, block_p)
    ign, has_ignore = ignore_arg(ignore_index, labels)
    _pred_sites_kernel[(B * n_pblocks,)](
        x, t, out, C, S, n_pblocks, *strides, ign, SOFTMAX=softmax, LABELS=labels,
        HAS_IGNORE=has_ignore, PROBS=probs, BLOCK_C=block_c, BLOCK_P=block_p,
        num_warps=num_warps_for(block_c, block_p),
    )  # fmt: skip
    return out


@op("segtriton::predicted_field")
def _pred_field_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    classes: list[int],
    act: int,
    spacing: list[float],
    ignore_index: float | None,
) -> torch.Tensor:
    """float32 ``[B, K, *S]``: for the K ``classes`` (distinct channels), the squared
    distance to the other side of each class's boundary in the prediction's masks (0 for
    a mask with no boundary); ``act`` a ``_tiles.activation`` code."""
    B, C, *spatial = logits.shape
    sites = _pred_sites(logits, target, act, ignore_index)
    table = None
    if activation_flags(act)[1]:  # the softmax's label map
        table = device_constant(classes, torch.int32, logits.device)
    else:
        sites = _channels(sites, classes)
    field = _transform(sites, (B * len(classes), *spatial), table, None, spacing, FIELD)
    return field.view(B, len(classes), *spatial)


@_pred_field_op.register_fake
def _(logits, target, classes, act, spacing, ignore_index):
    B, _, *spatial = logits.shape
    return logits.new_empty((B, len(classes), *spatial), dtype=torch.float32)


@kernel_api
def hausdorff_dt_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    alpha: float = 2.0,
    dist_map: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
    validate: bool = False,
) -> torch.Tensor:
    """Triton Hausdorff distance-transform loss; semantics of
    ``segtriton.reference.hausdorff_dt_loss``.

    One pass over logits and labels (masks) writes the prediction's masks (the class whose
    softmax probability exceeds 1/2, as an int32 label map; logit > 0 per channel for
    sigmoid); the GPU EDT turns them, and the target unless ``dist_map`` (its
    :func:`distance_field`, any float dtype and layout, no gradient) is given, into
    float32 ``[B, K, *S]`` maps of squared distances for the K selected classes; one fused
    pass reads the logits, both maps (of a given map, the selected channels) and the
    labels, sums ``(p - g)^2 (d_true^alpha + d_pred^alpha)`` and writes dL/dz, as the
    boundary loss does. No host sync. 'none' applies the reference formula to the GPU maps
    of every class. Returns float32. ``validate=True`` checks labels / masks on the host first;
    otherwise a bad label or mask value makes the loss NaN (and counts as no class in the
    maps).
    """
    check_mode(mode, logits)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    alpha = ref_boundary.check_alpha(alpha)
    labels = mode == "multiclass"
    target = checked_target(logits, target, labels, ignore_index, validate)
    if validate and not labels and dist_map is None:
        _check_hard(target, ignore_index, "hausdorff_dt_loss")
    if validate and not from_logits:
        check_probability_input(logits, target, labels, ignore_index)
    act = activation(labels, from_logits)
    C = logits.shape[1]
    idx = ref_boundary.selected_classes(classes, C, mode)
    spacing = list(ref_boundary.check_spacing(spacing, logits.dim() - 2))
    ign = ignore_value(ignore_index, target, labels)
    # for 'none', maps of every class for the reference formula; else only the selected
    maps = list(range(C)) if reduction == "none" else _distinct(idx)
    given = dist_map is not None
    if dist_map is not None:
        ref_boundary.check_map(dist_map, logits)
        check_constant("dist_map", dist_map)
        true, true_exp = dist_map, alpha
    else:  # squared distances: d^alpha = (d^2)^(alpha / 2)
        true, true_exp = _class_map_op(target, maps, labels, spacing, ign, FIELD), alpha / 2
    pred = _pred_field_op(logits.detach(), target, maps, act, spacing, ign)
    if reduction == "none":
        weight = true.float() ** true_exp + pred ** (alpha / 2)
        with value_checks(False):
            return ref_boundary.hausdorff_terms(
                logits, target, mode, idx, weight, ignore_index, reduction, from_logits
            )
    loss, _, _ = _distance_op(
        logits,
        target,
        true,
        pred,
        *_selection(idx, C, given, False, logits.device),
        act,
        ign,
        float(len(idx)),
        true_exp,
        alpha / 2,
        reduction,
        _need_grad(logits),
    )
    return loss
