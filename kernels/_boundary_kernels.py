"""Triton kernels of the distance-map losses (see ``boundary.py``): one pass over the
logits, the distance maps and the labels or masks gives the partial loss sums and the
gradient.

Boundary loss: with ``n_c`` the number of times class c is selected, the summed loss is
``sum over valid entries of n_c p_c phi_c``, so ``dL/dp_c = n_c phi_c``. Hausdorff (HD-DT):
the summed loss is ``sum n_c (p_c - g_c)^2 w_c`` with ``w_c = d_true^alpha + d_pred^alpha``
from the two distance maps (squared, or the target's as given), so
``dL/dp_c = 2 n_c (p_c - g_c) w_c``. The chain rule through the softmax (or sigmoid) is
the region kernels' :func:`_tile_grad`. The maps may hold only the selected classes: a
table of slots gives each class's channel in ``phi`` and in ``psi`` (-1: not selected,
nothing read).
``_pred_sites_kernel`` writes the prediction's masks the Hausdorff map is computed from.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._pixelwise_kernels import WALK_MAX0, _load_labels, _mask_tile
from ._region_kernels import _chunk_terms, _load_chunk, _load_x, _pixel_setup, _tile_grad
from ._runtime import kernel_jit
from ._tiles import fast_exp, grad_divisor, pixel_block


@triton.jit
def _power(d, e):
    """``d^e`` for ``d >= 0`` (exact for e = 1 and 2)."""
    pos = d > 0.0
    power = tl.where(pos, tl.exp2(e * tl.log2(tl.where(pos, d, 1.0))), 0.0)
    return tl.where(e == 1.0, d, tl.where(e == 2.0, d * d, power))


@triton.jit
def _entry_terms(
    phi_ptr, psi_ptr, n_ptr, slot_ptr, p, g, b, offs_c, offs_p, pmask, C, K, S, spb, spc, sps,
    phi_exp, psi_exp, HAUSDORFF: tl.constexpr,
):  # fmt: skip
    """``(loss, dL/dp)`` of a ``[classes, pixels]`` tile of the summed loss (0 outside it;
    ``p`` and ``g`` are 0 where not valid). ``slot [2, C]``: each class's channel in
    ``phi`` and in ``psi`` (contiguous ``[B, K, S]``), -1 if it is not selected."""
    cmask = offs_c < C
    n = tl.load(n_ptr + offs_c, mask=cmask, other=0.0)[:, None]
    at = tl.load(slot_ptr + offs_c, mask=cmask, other=-1).to(tl.int64)
    phi_ptrs = phi_ptr + b * spb + at[:, None] * spc + offs_p[None, :] * sps
    phi = tl.load(phi_ptrs, mask=(at >= 0)[:, None] & pmask[None, :], other=0.0).to(tl.float32)
    if HAUSDORFF:
        at = tl.load(slot_ptr + C + offs_c, mask=cmask, other=-1).to(tl.int64)
        psi_ptrs = psi_ptr + (b * K + at[:, None]) * S + offs_p[None, :]
        psi = tl.load(psi_ptrs, mask=(at >= 0)[:, None] & pmask[None, :], other=0.0)
        w = n * (_power(phi, phi_exp) + _power(psi, psi_exp))
        err = p - g
        return err * err * w, 2.0 * err * w
    dp = n * phi
    return p * dp, dp


@triton.jit
def _chunk(
    x_ptr, t_ptr, phi_ptr, psi_ptr, n_ptr, slot_ptr, b, offs_c, offs_p, pmask, ys, pvalid,
    pbad, m, inv_s, C, K, S, sxb, sxc, sxs, stb, stc, sts, spb, spc, sps, ignore_index,
    phi_exp, psi_exp, SOFTMAX: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr,
    PROBS: tl.constexpr, HAUSDORFF: tl.constexpr,
):  # fmt: skip
    """A streamed class chunk: ``(z, p, valid, bad, loss, dL/dp)``."""
    _, z, p, g, valid, bad = _load_chunk(
        x_ptr, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s, C,
        sxb, sxc, sxs, stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
    )  # fmt: skip
    loss, dp = _entry_terms(
        phi_ptr, psi_ptr, n_ptr, slot_ptr, p, g, b, offs_c, offs_p, pmask, C, K, S, spb, spc,
        sps, phi_exp, psi_exp, HAUSDORFF,
    )  # fmt: skip
    return z, p, valid, bad, loss, dp


@triton.jit
def _scaled(dp, gscale):
    """``dp * gscale``; a zero dL/dp (a class not selected) stays 0 where gscale is inf (a
    'mean' over no valid entry of the selected classes), as the reference gives."""
    return tl.where(dp == 0.0, 0.0, dp * gscale)


@triton.jit
def _tile_loss(loss, bad):
    """The tile's summed loss; NaN when it holds a bad label or mask value."""
    return tl.sum(tl.sum(tl.where(bad, float("nan"), loss), axis=1), axis=0)


@triton.jit
def _store_grad(g_ptr, dz, b, offs_c, offs_p, pmask, C, sgb, sgc, sgs):
    ptrs = g_ptr + b * sgb + offs_c[:, None] * sgc + offs_p[None, :] * sgs
    tl.store(ptrs, dz.to(g_ptr.dtype.element_ty), mask=(offs_c < C)[:, None] & pmask[None, :])


@kernel_jit
def _boundary_kernel(
    x_ptr, t_ptr, phi_ptr, psi_ptr, n_ptr, slot_ptr, g_ptr, loss_ptr, denom_ptr,
    C, K, S, n_pblocks, sxb, sxc, sxs, stb, stc, sts, spb, spc, sps, sgb, sgc, sgs, ignore_index,
    phi_exp, psi_exp, SOFTMAX: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr,
    PROBS: tl.constexpr, HAUSDORFF: tl.constexpr, WRITE_GRAD: tl.constexpr,
    MEAN: tl.constexpr, DEFER_MEAN: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Per program (``BLOCK_P`` pixels of one image): the partial loss sum to ``loss_ptr``
    and, with WRITE_GRAD, ``dL/dz`` for grad_output = 1 (divided by ``denom`` with MEAN,
    unless DEFER_MEAN leaves that to the backward: ``_tiles.defers_mean``).
    Softmax over classes with SOFTMAX (streamed in chunks unless SINGLE), else sigmoid, or
    with PROBS the input as ``p``; LABELS: integer labels, else masks.
    HAUSDORFF: the HD-DT loss over the maps ``phi`` (target) and ``psi`` (prediction) of
    squared distances, else the boundary loss over the signed map ``phi``."""
    pid = tl.program_id(0).to(tl.int64)
    b, offs_p, pmask = pixel_block(pid, n_pblocks, S, BLOCK_P)
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    gscale = 1.0
    if MEAN:
        gscale = 1.0 / grad_divisor(denom_ptr, DEFER_MEAN)
    x, z, ys, pvalid, pbad, m, inv_s = _pixel_setup(
        x_ptr, t_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, stb, sts, ignore_index,
        SOFTMAX, LABELS, SINGLE, BLOCK_C,
    )  # fmt: skip
    if SINGLE:
        p, g, valid, bad = _chunk_terms(
            z, t_ptr, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, inv_s, C,
            stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
        )  # fmt: skip
        loss, dp = _entry_terms(
            phi_ptr, psi_ptr, n_ptr, slot_ptr, p, g, b, offs_c0, offs_p, pmask, C, K, S, spb,
            spc, sps, phi_exp, psi_exp, HAUSDORFF,
        )  # fmt: skip
        tl.store(loss_ptr + pid, _tile_loss(loss, bad))
        if WRITE_GRAD:
            mean_dp = tl.sum(p * dp, axis=0) * gscale
            dz = _tile_grad(z, p, _scaled(dp, gscale), valid, mean_dp, SOFTMAX, PROBS)
            _store_grad(g_ptr, dz, b, offs_c0, offs_p, pmask, C, sgb, sgc, sgs)
    else:
        total = 0.0
        mean_dp = tl.zeros([BLOCK_P], tl.float32)  # sum_c p_c dL/dp_c: the softmax needs it
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + offs_c0
            zc, p, valid, bad, loss, dp = _chunk(
                x_ptr, t_ptr, phi_ptr, psi_ptr, n_ptr, slot_ptr, b, offs_c, offs_p, pmask, ys,
                pvalid, pbad, m, inv_s, C, K, S, sxb, sxc, sxs, stb, stc, sts, spb, spc, sps,
                ignore_index, phi_exp, psi_exp, SOFTMAX, LABELS, HAS_IGNORE, PROBS, HAUSDORFF,
            )  # fmt: skip
            total += _tile_loss(loss, bad)
            mean_dp += tl.sum(p * dp, axis=0)
            if WRITE_GRAD and not SOFTMAX:
                dz = _tile_grad(zc, p, _scaled(dp, gscale), valid, mean_dp, SOFTMAX, PROBS)
                _store_grad(g_ptr, dz, b, offs_c, offs_p, pmask, C, sgb, sgc, sgs)
        tl.store(loss_ptr + pid, total)
        if WRITE_GRAD and SOFTMAX:
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + offs_c0
                zc, p, valid, bad, _, dp = _chunk(
                    x_ptr, t_ptr, phi_ptr, psi_ptr, n_ptr, slot_ptr, b, offs_c, offs_p, pmask,
                    ys, pvalid, pbad, m, inv_s, C, K, S, sxb, sxc, sxs, stb, stc, sts, spb, spc,
                    sps, ignore_index, phi_exp, psi_exp, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
                    HAUSDORFF,
                )  # fmt: skip
                dz = _tile_grad(zc, p, _scaled(dp, gscale), valid, mean_dp * gscale, SOFTMAX, PROBS)
                _store_grad(g_ptr, dz, b, offs_c, offs_p, pmask, C, sgb, sgc, sgs)


@kernel_jit
def _pred_sites_kernel(
    x_ptr, t_ptr, out_ptr, C, S, n_pblocks, sxb, sxc, sxs, stb, stc, sts, ignore_index,
    SOFTMAX: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr,
    PROBS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """The prediction's masks for the Hausdorff map, contiguous, for ``BLOCK_P`` pixels of
    one image. SOFTMAX: int32 ``[B, S]``, the class whose softmax probability exceeds 1/2
    (``1/s > 1/2`` at the max logit, ``s`` the sum of ``exp(x - max)``), -1 where none
    does or the pixel is not valid (whose logits are not read). Else uint8 ``[B, C, S]``:
    logit > 0 (with PROBS, ``p > 1/2``) and valid (from the labels with LABELS, else from
    the masks)."""
    pid = tl.program_id(0).to(tl.int64)
    b, offs_p, pmask = pixel_block(pid, n_pblocks, S, BLOCK_P)
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    pvalid = pmask
    if LABELS:
        _, pvalid, _ = _load_labels(t_ptr, b, offs_p, pmask, stb, sts, C, ignore_index)
    if SOFTMAX:
        m = tl.full([BLOCK_P], WALK_MAX0, tl.float32)
        s = tl.zeros([BLOCK_P], tl.float32)
        top = tl.zeros([BLOCK_P], tl.int32)
        for c0 in range(0, C, BLOCK_C):
            x = _load_x(x_ptr, b, c0 + offs_c0, offs_p, pvalid, C, sxb, sxc, sxs, SOFTMAX)
            xm = tl.max(x, axis=0)
            if BLOCK_C == 1:  # (and no argmax of a lone NaN, which the interpreter refuses)
                arg = tl.zeros_like(top) + c0
            else:
                arg = tl.argmax(x, axis=0).to(tl.int32) + c0
            top = tl.where(xm > m, arg, top)
            m_new = tl.maximum(m, xm)
            s = s * fast_exp(m - m_new) + tl.sum(fast_exp(x - m_new[None, :]), axis=0)
            m = m_new
        # s >= 1 holds the max's own term: not so where every logit is -inf (s = 0)
        confident = pvalid & (s >= 1.0) & (s < 2.0)
        tl.store(out_ptr + b * S + offs_p, tl.where(confident, top, -1), mask=pmask)
    else:
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + offs_c0
            m2 = (offs_c < C)[:, None] & pmask[None, :]
            x = _load_x(x_ptr, b, offs_c, offs_p, pmask, C, sxb, sxc, sxs, SOFTMAX)
            if LABELS:
                valid = m2 & pvalid[None, :]
            else:
                _, valid, _ = _mask_tile(
                    t_ptr, b, offs_c, offs_p, m2, stb, stc, sts, ignore_index, HAS_IGNORE
                )
            if PROBS:
                hit = x > 0.5
            else:
                hit = x > 0.0
            ptrs = out_ptr + (b * C + offs_c[:, None]) * S + offs_p[None, :]
            tl.store(ptrs, (hit & valid).to(tl.uint8), mask=m2)
