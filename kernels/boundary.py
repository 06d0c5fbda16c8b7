"""Exact Euclidean distance transform on the GPU, signed distance maps, boundary loss.

``signed_distance_map`` has the semantics of the reference (Kervadec's signed map: the
distance to the object outside it, minus (the distance to the background - 1) inside,
0 for an empty or full mask; optional anisotropic ``spacing``) but runs batched over
every (image, class) map in Triton (see ``_edt_kernels.py``) and returns float32.
``boundary_loss`` is the reference's formula on that map, without host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton

from segtriton.reference import boundary as ref_boundary
from segtriton.reference._common import check_choice, check_masks, label_mask, value_checks

from ._edt_kernels import _edt_axis_kernel, _edt_first_kernel

MAX_LINE = 16384  # longest axis the 1-D pass holds in one tile


def squared_edt(sites: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """``[N, *S]`` float32: the squared Euclidean distance from every pixel to the nearest
    True pixel of its map (``sites`` is a bool ``[N, *S]``), ``inf`` for a map with none.
    ``spacing``: the size of a pixel along each spatial axis (default 1)."""
    nd = sites.dim() - 1
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * nd
    if len(spacing) != nd:
        raise ValueError(f"spacing needs {nd} entries, got {len(spacing)}")
    if max(sites.shape[1:]) > MAX_LINE:
        raise ValueError(f"squared_edt handles axes up to {MAX_LINE} pixels")
    L = sites.shape[-1]
    src = sites.contiguous().view(torch.uint8)
    f = torch.empty(sites.shape, dtype=torch.float32, device=sites.device)
    block = triton.next_power_of_2(L)
    rows = max(1, 4096 // block)
    n_lines = src.numel() // L
    _edt_first_kernel[(triton.cdiv(n_lines, rows),)](
        src, f, n_lines, L, spacing[-1] ** 2, ROWS=rows, BLOCK=block
    )
    for axis in range(nd - 1, 0, -1):  # tensor dims nd-1 .. 1 (dim 0 is the map index)
        g = f.movedim(axis, -1).contiguous()
        out = torch.empty_like(g)
        L = g.shape[-1]
        block = min(32, triton.next_power_of_2(L))
        rows = max(1, 8192 // (block * block))
        n_lines = g.numel() // L
        n_tiles = triton.cdiv(L, block)
        grid = (triton.cdiv(n_lines, rows) * n_tiles,)
        _edt_axis_kernel[grid](
            g, out, n_lines, L, n_tiles, spacing[axis - 1] ** 2,
            ROWS=rows, BLOCK_I=block, BLOCK_J=block,
        )  # fmt: skip
        f = out.movedim(-1, axis)
    return f.contiguous()


def signed_distance_map(
    target: torch.Tensor,
    num_classes: int | None = None,
    mode: str = "multiclass",
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    validate: bool = False,
) -> torch.Tensor:
    """Triton signed distance map; semantics of ``segtriton.reference.signed_distance_map``
    (float32 on the target's device). ``validate=True`` checks the labels / masks on the
    host first; otherwise a label outside ``[0, C)`` belongs to no class and a mask value
    other than 0/1 counts as foreground."""
    check_choice("mode", mode, ("multiclass", "binary", "multilabel"))
    if mode == "multiclass":
        if num_classes is None or num_classes < 1:
            raise ValueError("signed_distance_map needs num_classes >= 1 for multiclass labels")
        if validate:
            label_mask(target, num_classes, ignore_index)
        classes = torch.arange(num_classes, device=target.device)
        masks = target.unsqueeze(1) == classes.view(1, -1, *([1] * (target.dim() - 1)))
        if ignore_index is not None:
            masks &= (target != ignore_index).unsqueeze(1)
    else:
        t = target
        if validate:
            bad = (t != 0) & (t != 1)
            if ignore_index is not None:
                bad &= t != ignore_index
            if bool(bad.any()):
                raise ValueError("signed_distance_map needs hard {0, 1} masks")
        if ignore_index is not None:
            t = torch.where(t == ignore_index, 0, t)
        masks = t != 0
    B, C, *spatial = masks.shape
    m = masks.reshape(B * C, *spatial)
    if spacing is not None and len(spacing) != len(spatial):
        raise ValueError(f"spacing needs {len(spatial)} entries, got {len(spacing)}")
    outside = squared_edt(m, spacing).sqrt()
    inside = squared_edt(~m, spacing).sqrt()
    phi = torch.where(m, 1.0 - inside, outside)
    dims = tuple(range(1, m.dim()))
    has_boundary = m.any(dims) & (~m).any(dims)
    phi = torch.where(has_boundary.view(-1, *([1] * len(spatial))), phi, 0.0)
    return phi.view(B, C, *spatial)


def boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str = "multiclass",
    classes: Sequence[int] | None = None,
    dist_map: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
    validate: bool = False,
) -> torch.Tensor:
    """Boundary loss with the map from :func:`signed_distance_map` (GPU EDT); semantics
    of ``segtriton.reference.boundary_loss``. ``validate`` as for the map."""
    if dist_map is None:
        C = logits.shape[1]
        dist_map = signed_distance_map(target, C, mode, spacing, ignore_index, validate)
    if validate and mode != "multiclass":
        check_masks(logits, target, ignore_index)
    with value_checks(validate):
        return ref_boundary.boundary_loss(
            logits, target, mode, classes, dist_map, spacing, ignore_index, reduction
        )
