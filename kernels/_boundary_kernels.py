"""Triton kernel of the boundary loss (see ``boundary.py``): one pass over the logits, the
signed distance map and the labels or masks gives the partial loss sums and the gradient.

With ``n_c`` the number of times class c is selected, the summed loss is
``sum over valid entries of n_c p_c phi_c``, so ``dL/dp_c = n_c phi_c`` and the chain
rule through the softmax (or sigmoid) is the region kernels' :func:`_tile_grad`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._region_kernels import _chunk_terms, _load_chunk, _pixel_setup, _tile_grad
from ._tiles import grad_divisor, pixel_block


@triton.jit
def _weighted_phi(phi_ptr, n_ptr, b, offs_c, offs_p, pmask, C, spb, spc, sps):
    """``n_c phi_c`` of a ``[classes, pixels]`` tile (0 outside it): dL/dp of the sum."""
    cmask = offs_c < C
    ptrs = phi_ptr + b * spb + offs_c[:, None] * spc + offs_p[None, :] * sps
    phi = tl.load(ptrs, mask=cmask[:, None] & pmask[None, :], other=0.0).to(tl.float32)
    return tl.load(n_ptr + offs_c, mask=cmask, other=0.0)[:, None] * phi


@triton.jit
def _chunk(
    x_ptr, t_ptr, phi_ptr, n_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s, C,
    sxb, sxc, sxs, stb, stc, sts, spb, spc, sps, ignore_index,
    LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr,
):  # fmt: skip
    """A streamed class chunk: ``(z, p, valid, bad, n_c phi_c)``."""
    _, z, p, _, valid, bad = _load_chunk(
        x_ptr, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s, C,
        sxb, sxc, sxs, stb, stc, sts, ignore_index, LABELS, HAS_IGNORE,
    )  # fmt: skip
    dp = _weighted_phi(phi_ptr, n_ptr, b, offs_c, offs_p, pmask, C, spb, spc, sps)
    return z, p, valid, bad, dp


@triton.jit
def _tile_loss(p, dp, bad):
    """The tile's summed loss ``sum p dp``; NaN when it holds a bad label or mask value."""
    return tl.sum(tl.sum(tl.where(bad, float("nan"), p * dp), axis=1), axis=0)


@triton.jit
def _store_grad(g_ptr, dz, b, offs_c, offs_p, pmask, C, sgb, sgc, sgs):
    ptrs = g_ptr + b * sgb + offs_c[:, None] * sgc + offs_p[None, :] * sgs
    tl.store(ptrs, dz.to(g_ptr.dtype.element_ty), mask=(offs_c < C)[:, None] & pmask[None, :])


@triton.jit
def _boundary_kernel(
    x_ptr, t_ptr, phi_ptr, n_ptr, g_ptr, loss_ptr, denom_ptr,
    C, S, n_pblocks, sxb, sxc, sxs, stb, stc, sts, spb, spc, sps, sgb, sgc, sgs, ignore_index,
    LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr, WRITE_GRAD: tl.constexpr,
    MEAN: tl.constexpr, DEFER_MEAN: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Per program (``BLOCK_P`` pixels of one image): the partial loss sum to ``loss_ptr``
    and, with WRITE_GRAD, ``dL/dz`` for grad_output = 1 (divided by ``denom`` with MEAN,
    unless DEFER_MEAN leaves that to the backward: ``_tiles.defers_mean``).
    Softmax over classes with LABELS (streamed in chunks unless SINGLE), else sigmoid."""
    pid = tl.program_id(0).to(tl.int64)
    b, offs_p, pmask = pixel_block(pid, n_pblocks, S, BLOCK_P)
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    gscale = 1.0
    if MEAN:
        gscale = 1.0 / grad_divisor(denom_ptr, DEFER_MEAN)
    x, z, ys, pvalid, pbad, m, inv_s = _pixel_setup(
        x_ptr, t_ptr, b, offs_c0, offs_p, pmask, C, sxb, sxc, sxs, stb, sts, ignore_index,
        LABELS, SINGLE, BLOCK_C,
    )  # fmt: skip
    if SINGLE:
        p, _, valid, bad = _chunk_terms(
            z, t_ptr, b, offs_c0, offs_p, pmask, ys, pvalid, pbad, inv_s, C,
            stb, stc, sts, ignore_index, LABELS, HAS_IGNORE,
        )  # fmt: skip
        dp = _weighted_phi(phi_ptr, n_ptr, b, offs_c0, offs_p, pmask, C, spb, spc, sps)
        tl.store(loss_ptr + pid, _tile_loss(p, dp, bad))
        if WRITE_GRAD:
            dz = _tile_grad(z, p, dp * gscale, valid, tl.sum(p * dp, axis=0) * gscale, LABELS)
            _store_grad(g_ptr, dz, b, offs_c0, offs_p, pmask, C, sgb, sgc, sgs)
    else:
        total = 0.0
        pixel_loss = tl.zeros([BLOCK_P], tl.float32)  # sum_c p_c dp_c: the softmax needs it
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + offs_c0
            zc, p, valid, bad, dp = _chunk(
                x_ptr, t_ptr, phi_ptr, n_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m,
                inv_s, C, sxb, sxc, sxs, stb, stc, sts, spb, spc, sps, ignore_index,
                LABELS, HAS_IGNORE,
            )  # fmt: skip
            total += _tile_loss(p, dp, bad)
            pixel_loss += tl.sum(p * dp, axis=0)
            if WRITE_GRAD and not LABELS:
                dz = _tile_grad(zc, p, dp * gscale, valid, pixel_loss, LABELS)
                _store_grad(g_ptr, dz, b, offs_c, offs_p, pmask, C, sgb, sgc, sgs)
        tl.store(loss_ptr + pid, total)
        if WRITE_GRAD and LABELS:
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + offs_c0
                zc, p, valid, bad, dp = _chunk(
                    x_ptr, t_ptr, phi_ptr, n_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m,
                    inv_s, C, sxb, sxc, sxs, stb, stc, sts, spb, spc, sps, ignore_index,
                    LABELS, HAS_IGNORE,
                )  # fmt: skip
                dz = _tile_grad(zc, p, dp * gscale, valid, pixel_loss * gscale, LABELS)
                _store_grad(g_ptr, dz, b, offs_c, offs_p, pmask, C, sgb, sgc, sgs)
