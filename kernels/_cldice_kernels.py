"""Triton kernels of the soft skeleton (``reference/cldice.py``) and its gradient.

Maps are contiguous float32 ``[M, D0, D1, D2]`` (2-D images have ``D0 = 1``), walked as
flat int64 indices. Neighbours are named by codes: the cross (erosion) 0 for the pixel
itself, then 1..6 for -1/+1 along z, y and x; the cube (dilation) ``9 (dz+1) + 3 (dy+1) +
(dx+1)``. Scanning in code order and keeping the first extreme is the reference's tie rule.
The backward never scatters: each pixel gathers the gradient of the neighbours whose code
points back at it, so it is deterministic. The front and back kernels read the logits and
target where they lie (the region kernels' tiles) for the first level and the last step.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._pixelwise_kernels import _sigmoid_pq
from ._region_kernels import _load_chunk, _pixel_setup
from ._runtime import kernel_jit
from ._tiles import pixel_block


@triton.jit
def _coords(i, N, D1, D2):
    n = i % N
    return n // (D1 * D2), (n // D2) % D1, n % D2


@triton.jit
def _neighbour(z, y, x, D0, D1, D2, DZ: tl.constexpr, DY: tl.constexpr, DX: tl.constexpr):
    """Flat offset of the pixel at ``(z + DZ, y + DY, x + DX)`` and whether it exists."""
    inside = (z + DZ >= 0) & (z + DZ < D0) & (y + DY >= 0) & (y + DY < D1)
    inside = inside & (x + DX >= 0) & (x + DX < D2)
    return (DZ * D1 + DY) * D2 + DX, inside


@triton.jit
def _cross_neighbour(z, y, x, D0, D1, D2, K: tl.constexpr):
    """:func:`_neighbour` at cross code ``K`` in 1..6: a step of -1 (K odd) or +1 along
    axis ``(K - 1) // 2`` (z, y, x)."""
    return _neighbour(
        z, y, x, D0, D1, D2,
        (2 * (K % 2 == 0) - 1) * ((K - 1) // 2 == 0),
        (2 * (K % 2 == 0) - 1) * ((K - 1) // 2 == 1),
        (2 * (K % 2 == 0) - 1) * ((K - 1) // 2 == 2),
    )  # fmt: skip


@kernel_jit
def _erode_kernel(
    src, dst, code_ptr, total, N, D0, D1, D2,
    CODES: tl.constexpr, THREE_D: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """``dst = min(src)`` over the cross, and with ``CODES`` the code of the minimum."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    z, y, x = _coords(i, N, D1, D2)
    best = tl.load(src + i, mask=live, other=0.0)
    code = tl.zeros([BLOCK], dtype=tl.int32)
    for k in tl.static_range(1 if THREE_D else 3, 7):
        off, inside = _cross_neighbour(z, y, x, D0, D1, D2, k)
        v = tl.load(src + i + off, mask=live & inside, other=float("inf"))
        take = v < best
        best = tl.where(take, v, best)
        code = tl.where(take, k, code)
    tl.store(dst + i, best, mask=live)
    if CODES:
        tl.store(code_ptr + i, code.to(tl.int8), mask=live)


@kernel_jit
def _skeleton_level_kernel(
    x_ptr, e_ptr, s_in, s_out, code_ptr, total, N, D0, D1, D2,
    FIRST: tl.constexpr, CODES: tl.constexpr, THREE_D: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One level: ``o = max(e)`` over the cube (``e = erode(x)``), ``delta = relu(x - o)``,
    ``s = delta`` (FIRST) or ``s + relu(delta - s delta)``; with ``CODES`` the code of
    ``o``."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    z, y, x = _coords(i, N, D1, D2)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    code = tl.zeros([BLOCK], dtype=tl.int32)
    for a in tl.static_range(0 if THREE_D else 1, 3 if THREE_D else 2):
        for b in tl.static_range(3):
            for c in tl.static_range(3):
                off, inside = _neighbour(z, y, x, D0, D1, D2, a - 1, b - 1, c - 1)
                v = tl.load(e_ptr + i + off, mask=live & inside, other=float("-inf"))
                take = v > best
                best = tl.where(take, v, best)
                code = tl.where(take, 9 * a + 3 * b + c, code)
    best = tl.where(live, best, 0.0)  # no -inf past the end
    delta = tl.maximum(tl.load(x_ptr + i, mask=live, other=0.0) - best, 0.0)
    if FIRST:
        s = delta
    else:
        s = tl.load(s_in + i, mask=live, other=0.0)
        s = s + tl.maximum(delta - s * delta, 0.0)
    tl.store(s_out + i, s, mask=live)
    if CODES:
        tl.store(code_ptr + i, code.to(tl.int8), mask=live)


@triton.jit
def _cube_offset(code, D1, D2):
    """Flat offset of the cube neighbour named by ``code``."""
    return ((code // 9 - 1) * D1 + (code // 3 % 3 - 1)) * D2 + (code % 3 - 1)


@kernel_jit
def _skeleton_sums_kernel(
    sp_ptr, g_ptr, sg_ptr, p_ptr, part_ptr, per_unit, n_chunks,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Partial sums over chunk ``j`` of unit ``u`` (program ``u * n_chunks + j``) of
    ``skel(p) g``, ``skel(p)``, ``skel(g) p`` and ``skel(g)``, in a fixed order."""
    pid = tl.program_id(0)
    u = pid // n_chunks
    start = (pid % n_chunks).to(tl.int64) * CHUNK
    base = u.to(tl.int64) * per_unit
    acc = tl.zeros([4, BLOCK], dtype=tl.float32)
    rows = tl.arange(0, 4)[:, None]
    for o in tl.range(0, CHUNK, BLOCK):
        j = start + o + tl.arange(0, BLOCK)
        live = j < per_unit
        at = base + j
        sp = tl.load(sp_ptr + at, mask=live, other=0.0)
        sg = tl.load(sg_ptr + at, mask=live, other=0.0)
        g = tl.load(g_ptr + at, mask=live, other=0.0)
        p = tl.load(p_ptr + at, mask=live, other=0.0)
        term = tl.where(rows == 0, sp[None, :] * g[None, :], sp[None, :])
        term = tl.where(rows == 2, sg[None, :] * p[None, :], term)
        term = tl.where(rows == 3, sg[None, :], term)
        acc += term
    tl.store(part_ptr + pid * 4 + tl.arange(0, 4), tl.sum(acc, axis=1))


@kernel_jit
def _skeleton_chain_kernel(
    x_ptr, s_ptr, code_ptr, g_ptr, coef_ptr, total, level_stride, per_image, LEVELS, N, D1,
    D2, BLOCK: tl.constexpr,
):  # fmt: skip
    """Back through the ``s`` recursion, pixel by pixel. ``dL/ds = a_b g + b_b`` (``coef``
    ``[B, 2]``); for k = LEVELS .. 0 it writes ``T_k = [x_k > o_k] dL/ddelta_k`` over
    ``s_k`` (which is read as ``s_{k-1}`` one level earlier, so never after)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    b = i // per_image
    g = tl.load(g_ptr + i, mask=live, other=0.0)
    grad = tl.load(coef_ptr + 2 * b, mask=live, other=0.0) * g
    grad += tl.load(coef_ptr + 2 * b + 1, mask=live, other=0.0)
    stride = tl.zeros_like(i) + level_stride  # int64: k * stride may pass 2^31
    for k in range(LEVELS, -1, -1):
        level = k * stride + i
        code = tl.load(code_ptr + level, mask=live, other=13).to(tl.int32)
        xk = tl.load(x_ptr + level, mask=live, other=0.0)
        ok = tl.load(x_ptr + level + stride + _cube_offset(code, D1, D2), mask=live)
        delta = tl.maximum(xk - ok, 0.0)
        # s_{-1} = 0 makes level 0's T = [x_0 > o_0] dL/ds_0
        s = tl.load(s_ptr + level - stride, mask=live & (k > 0), other=0.0)
        grows = delta - s * delta > 0  # so delta > 0: x_k > o_k
        t = tl.where(grows, grad * (1 - s), 0.0)
        grad = tl.where(grows, grad * (1 - delta), grad)
        tl.store(s_ptr + level, t, mask=live)


@kernel_jit
def _skeleton_grad_kernel(
    t_ptr, t_prev, dcode_prev, g_next, ecode_ptr, sg_ptr, coef_ptr, out_ptr, total,
    per_image, N, D0, D1, D2, HAS_T: tl.constexpr, HAS_D: tl.constexpr, HAS_E: tl.constexpr,
    LAST: tl.constexpr, THREE_D: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """``dL/dx_j`` at each pixel: ``T_j`` (HAS_T), minus the ``T_{j-1}`` of the cube
    neighbours whose dilation took this pixel (HAS_D), plus the ``dL/dx_{j+1}`` of the
    cross neighbours whose erosion took it (HAS_E); the last level (x_0 = p) adds
    ``c_b skel(g)`` (``coef [B]``)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    z, y, x = _coords(i, N, D1, D2)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_T:
        acc += tl.load(t_ptr + i, mask=live, other=0.0)
    if HAS_D:
        for a in tl.static_range(0 if THREE_D else 1, 3 if THREE_D else 2):
            for b in tl.static_range(3):
                for c in tl.static_range(3):
                    off, inside = _neighbour(z, y, x, D0, D1, D2, a - 1, b - 1, c - 1)
                    near = live & inside
                    back = 9 * (2 - a) + 3 * (2 - b) + (2 - c)  # the code pointing here
                    code = tl.load(dcode_prev + i + off, mask=near, other=-1).to(tl.int32)
                    t = tl.load(t_prev + i + off, mask=near & (code == back), other=0.0)
                    acc -= t
    if HAS_E:
        code = tl.load(ecode_ptr + i, mask=live, other=-1).to(tl.int32)
        acc += tl.load(g_next + i, mask=live & (code == 0), other=0.0)
        for k in tl.static_range(1 if THREE_D else 3, 7):
            off, inside = _cross_neighbour(z, y, x, D0, D1, D2, k)
            near = live & inside
            back = k + 1 - 2 * (k % 2 == 0)  # the opposite step points here
            code = tl.load(ecode_ptr + i + off, mask=near, other=-1).to(tl.int32)
            acc += tl.load(g_next + i + off, mask=near & (code == back), other=0.0)
    if LAST:
        acc += tl.load(coef_ptr + i // per_image, mask=live, other=0.0) * tl.load(
            sg_ptr + i, mask=live, other=0.0
        )
    tl.store(out_ptr + i, acc, mask=live)


@triton.jit
def _program_pixels(
    x_ptr, t_ptr, pid, n_pblocks, C, S, sxb, sxc, sxs, stb, sts, ignore_index,
    SOFTMAX: tl.constexpr, LABELS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Program ``pid``'s image and pixels, and per pixel the labels' valid and bad masks
    and the softmax statistics (the region kernels' streamed setup)."""
    b, offs_p, pmask = pixel_block(pid, n_pblocks, S, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)  # int64: c * stride_c can pass 2^31
    _, _, ys, pvalid, pbad, m, inv_s = _pixel_setup(
        x_ptr, t_ptr, b, offs_c, offs_p, pmask, C, sxb, sxc, sxs, stb, sts, ignore_index,
        SOFTMAX, LABELS, False, BLOCK_C,
    )  # fmt: skip
    return b, offs_p, pmask, ys, pvalid, pbad, m, inv_s


@triton.jit
def _kept_at(b, offs_c, offs_p, pmask, C, first, S):
    """Offsets of a ``[classes, pixels]`` tile in ``[B, C - first, S]`` maps, and which of
    its entries are kept classes inside the image."""
    at = (b * (C - first) + offs_c[:, None] - first).to(tl.int64) * S + offs_p[None, :]
    return at, (offs_c[:, None] >= first) & (offs_c[:, None] < C) & pmask[None, :]


@kernel_jit
def _cldice_front_kernel(
    x_ptr, t_ptr, x0_ptr, g0_ptr, bad_ptr, C, first, S, n_pblocks, sxb, sxc, sxs, stb, stc,
    sts, ignore_index, SOFTMAX: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr,
    PROBS: tl.constexpr, ERROR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """The skeletons' level 0: ``p`` (softmax, sigmoid or, with PROBS, the input) and ``g``
    of the classes from ``first`` on, 0 where not valid, into contiguous
    ``[B, C - first, S]`` float32 maps (with ``ERROR``, the erosion loss's ``p - g`` and,
    with ``HAS_IGNORE``, int8 valid flags instead); per program, whether it saw a bad
    target value (or with PROBS a counted input outside [0, 1])."""
    pid = tl.program_id(0)
    b, offs_p, pmask, ys, pvalid, pbad, m, inv_s = _program_pixels(
        x_ptr, t_ptr, pid, n_pblocks, C, S, sxb, sxc, sxs, stb, sts, ignore_index, SOFTMAX,
        LABELS, BLOCK_C, BLOCK_P,
    )  # fmt: skip
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    seen = 0
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + offs_c0
        _x, _z, p, g, _valid, bad = _load_chunk(
            x_ptr, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s, C,
            sxb, sxc, sxs, stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
        )  # fmt: skip
        seen = tl.maximum(seen, tl.max(tl.max(bad.to(tl.int32), axis=0), axis=0))
        at, keep = _kept_at(b, offs_c, offs_p, pmask, C, first, S)
        if ERROR:
            tl.store(x0_ptr + at, p - g, mask=keep)
            if HAS_IGNORE:
                tl.store(g0_ptr + at, _valid.to(tl.int8), mask=keep)
        else:
            tl.store(x0_ptr + at, p, mask=keep)
            tl.store(g0_ptr + at, g, mask=keep)
    tl.store(bad_ptr + pid, seen)


@kernel_jit
def _cldice_back_kernel(
    x_ptr, t_ptr, d_ptr, grad_ptr, C, first, S, n_pblocks, sxb, sxc, sxs, stb, stc, sts,
    sgb, sgc, sgs, ignore_index, SOFTMAX: tl.constexpr, LABELS: tl.constexpr,
    HAS_IGNORE: tl.constexpr, PROBS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """``dL/dz`` from ``d = dL/dx0`` (``[B, C - first, S]``; 0 for the classes before
    ``first`` and where not valid): softmax ``p (d - sum_c p_c d_c)``, sigmoid
    ``p (1 - p) d``, with PROBS ``d`` itself; float32, at the gradient buffer's strides."""
    pid = tl.program_id(0)
    b, offs_p, pmask, ys, pvalid, pbad, m, inv_s = _program_pixels(
        x_ptr, t_ptr, pid, n_pblocks, C, S, sxb, sxc, sxs, stb, sts, ignore_index, SOFTMAX,
        LABELS, BLOCK_C, BLOCK_P,
    )  # fmt: skip
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    dot = tl.zeros([BLOCK_P], tl.float32)
    for sweep in tl.static_range(2 if SOFTMAX else 1):
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + offs_c0
            x, _z, p, _g, valid, _bad = _load_chunk(
                x_ptr, t_ptr, b, offs_c, offs_p, pmask, ys, pvalid, pbad, m, inv_s, C,
                sxb, sxc, sxs, stb, stc, sts, ignore_index, SOFTMAX, LABELS, HAS_IGNORE, PROBS,
            )  # fmt: skip
            at, keep = _kept_at(b, offs_c, offs_p, pmask, C, first, S)
            d = tl.load(d_ptr + at, mask=valid & keep, other=0.0)
            if SOFTMAX and sweep == 0:
                dot += tl.sum(p * d, axis=0)
            else:
                if SOFTMAX:
                    dz = p * (d - dot[None, :])
                elif PROBS:
                    dz = d
                else:
                    sp, sq = _sigmoid_pq(x)
                    dz = tl.where(valid, sp * sq * d, 0.0)
                out = grad_ptr + b * sgb + offs_c[:, None] * sgc + offs_p[None, :] * sgs
                tl.store(out, dz, mask=(offs_c[:, None] < C) & pmask[None, :])
