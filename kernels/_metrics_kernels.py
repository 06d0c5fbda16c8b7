"""Triton kernel of the confusion matrix (see ``metrics.py``).

Each program walks a run of pixel tiles of one image. A pixel's bin is ``t * C + p``
(target t, prediction p: given labels, or the argmax of the logits over classes, fused),
``C * C`` for a bad label (outside ``[0, C)``, not ignored) and ``C * C + 1`` for an
ignored or padding pixel. HIST (small C): the program keeps a private histogram of every
bin in registers and writes it as one partial row, summed afterwards in a fixed order.
Otherwise each pixel adds 1 to its bin in the int64 output with an integer atomic,
relaxed: no fence per pixel, as only the kernel's end must order them and integer sums do
not depend on order. In a tile whose diagonal holds at least ``1 / _DENSE_DIAG`` of its
pixels in the image (a good model's: a few hot bins that atomics would serialise on),
the diagonal is counted in a private histogram of the target class instead (DIAG_BINS >
C), added with one atomic per class per program; a sparse diagonal (random predictions)
would pay the histogram's cost for no contention saved. All exact, so the result is
deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._pixelwise_kernels import _load_tile, _load_walk, _walk_ptrs
from ._runtime import kernel_jit
from ._tiles import ignored, label_values

_DENSE_DIAG = tl.constexpr(8)


@triton.jit
def _order_key(x):
    """An int32 that orders floats as ``torch.argmax`` does: -0.0 equals 0.0 and NaN is
    above +inf. The bits of a float order like ints when it is not negative; flipping the
    magnitude bits of a negative one reverses its order, and the +1 puts -0.0 on 0.0."""
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, (bits ^ 0x7FFFFFFF) + 1, bits)
    return tl.where(x != x, 0x7FFFFFFF, key)


@triton.jit
def _argmax_classes(
    x_ptr, b, offs_p, pmask, C, sxb, sxc, sxs,
    SINGLE: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    """Per pixel, the class of the largest logit (the lowest such class on ties; the first
    NaN, if any, as in ``torch.argmax``). A walk over class chunks keeps the best value
    so far: a chunk's winner (its row, or the argmax of :func:`_order_key` over a wider
    chunk) replaces it when greater, or when NaN and the best is not; float compares
    take -0.0 as 0.0."""
    offs_c0 = tl.arange(0, BLOCK_C).to(tl.int64)
    if SINGLE:
        x = _load_tile(x_ptr, b, offs_c0, offs_p, offs_c0 < C, pmask, sxb, sxc, sxs)
        return tl.argmax(_order_key(x), axis=0).to(tl.int32)
    best = tl.full([offs_p.shape[0]], float("-inf"), tl.float32)
    arg = tl.zeros([offs_p.shape[0]], tl.int32)
    ptrs, step, off = _walk_ptrs(x_ptr, b, offs_c0, offs_p, sxb, sxc, sxs)
    for c0 in tl.range(0, C, BLOCK_C, loop_unroll_factor=UNROLL):
        x = _load_walk(ptrs + off, c0 + tl.arange(0, BLOCK_C), pmask, C)[0]
        off += step
        if BLOCK_C == 1:
            win = tl.max(x, axis=0)  # the row
            at = c0
        else:
            k = tl.argmax(_order_key(x), axis=0).to(tl.int32)
            win = tl.sum(tl.where(tl.arange(0, BLOCK_C)[:, None] == k[None, :], x, 0.0), axis=0)
            at = c0 + k
        better = (win > best) | ((win != win) & (best == best))
        best = tl.where(better, win, best)
        arg = tl.where(better, at, arg)
    return arg


@kernel_jit
def _confusion_kernel(
    p_ptr,
    t_ptr,
    out_ptr,
    C,
    S,
    n_chunks,
    tiles_per_chunk,
    spb,
    spc,
    sps,
    stb,
    sts,
    ignore_index,
    LOGITS: tl.constexpr,
    SINGLE: tl.constexpr,
    HIST: tl.constexpr,
    PER_IMAGE: tl.constexpr,
    NB: tl.constexpr,
    DIAG_BINS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """HIST: ``out[pid, :NB]`` int32 partial histogram. Else: atomic adds into the int64
    ``out[(b if PER_IMAGE else 0), :C * C + 1]`` (the last bin counts bad labels); the
    diagonal through a private histogram when DIAG_BINS > 0."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_chunks
    first_tile = (pid % n_chunks) * tiles_per_chunk
    n_cells = C * C
    acc = tl.zeros([NB], tl.int32)
    diag = tl.zeros([DIAG_BINS if DIAG_BINS > 0 else 1], tl.int32)
    row = out_ptr + (b * (n_cells + 1) if PER_IMAGE else 0)
    for tile in range(first_tile, first_tile + tiles_per_chunk):
        offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
        pmask = offs_p < S
        t = label_values(tl.load(t_ptr + b * stb + offs_p * sts, mask=pmask, other=0))
        counted = pmask & ~ignored(t, ignore_index)
        if LOGITS:
            pred = _argmax_classes(
                p_ptr, b, offs_p, pmask, C, spb, spc, sps, SINGLE, BLOCK_C, UNROLL
            )
        else:
            pred = label_values(tl.load(p_ptr + b * spb + offs_p * sps, mask=pmask, other=0))
        # range tests in the loaded dtypes, then int32 (a label past int32 is no class)
        bad = counted & ((t < 0) | (t >= C) | (pred < 0) | (pred >= C))
        ok = counted & ~bad
        t = tl.where(ok, t, 0).to(tl.int32)
        pred = tl.where(ok, pred, 0).to(tl.int32)
        idx = tl.where(ok, t * C + pred, tl.where(bad, n_cells, n_cells + 1))
        if HIST:
            acc += tl.histogram(idx, NB)
        else:
            scattered = ok | bad
            if DIAG_BINS > 0:
                hit = ok & (t == pred)
                n_hit = tl.sum(hit.to(tl.int32), axis=0)
                n_in = tl.minimum(S - tile * BLOCK_P, BLOCK_P)  # the tile's pixels
                if (n_hit > 0) & (n_hit * _DENSE_DIAG >= n_in):
                    diag += tl.histogram(tl.where(hit, t, C), DIAG_BINS)
                    scattered = scattered & ~hit
            ones = tl.full([BLOCK_P], 1, tl.int64)
            tl.atomic_add(row + idx, ones, mask=scattered, sem="relaxed")
    if HIST:
        tl.store(out_ptr + pid * NB + tl.arange(0, NB), acc)
    elif DIAG_BINS > 0:
        k = tl.arange(0, DIAG_BINS)
        tl.atomic_add(
            row + k * (C + 1), diag.to(tl.int64), mask=(k < C) & (diag > 0), sem="relaxed"
        )


@kernel_jit
def _multilabel_counts_kernel(
    p_ptr,
    t_ptr,
    out_ptr,
    C,
    S,
    n_chunks,
    tiles_per_chunk,
    spb,
    spc,
    sps,
    stb,
    stc,
    sts,
    ignore_value,
    HAS_IGNORE: tl.constexpr,
    LOGITS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Seven int32 values per channel of class block ``program_id(1)`` over one run of pixel
    tiles of one image, stored at ``out[program_id(0), k, c]``: true positives, target
    entries, predicted entries, counted entries (target not ``ignore_value``), bad
    entries (a counted target not 0 / 1, or an integer prediction not 0 / 1), and
    whether any float prediction lies strictly between 0 and 1, and any outside [0, 1]
    (0 or 1 each; how probabilities passed for logits show).

    A prediction is in its mask where a logit is positive (LOGITS) or a value nonzero; a
    target where it equals 1. Values are compared in their loaded dtypes, as torch
    compares them with a Python number."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_chunks
    first_tile = (pid % n_chunks) * tiles_per_chunk
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    cmask = offs_c < C
    p_base = p_ptr + b * spb + offs_c[:, None] * spc
    t_base = t_ptr + b * stb + offs_c[:, None] * stc
    tp = tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
    n_true = tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
    n_pred = tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
    n_valid = tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
    n_bad = tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
    seen = tl.zeros([BLOCK_C if LOGITS else 1, BLOCK_P if LOGITS else 1], tl.int32)
    for tile in range(first_tile, first_tile + tiles_per_chunk):
        offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
        m2 = cmask[:, None] & (offs_p < S)[None, :]
        t = tl.load(t_base + offs_p[None, :] * sts, mask=m2, other=0)
        p = tl.load(p_base + offs_p[None, :] * sps, mask=m2, other=0)
        valid = m2
        if HAS_IGNORE:
            valid = valid & (t != ignore_value)
        true = valid & (t == 1)
        if LOGITS:  # fp32: a bf16 tile against 0 misreads in Triton's interpreter
            p = p.to(tl.float32)
            pred = valid & (p > 0)
            bad = valid & ~true & (t != 0)
            seen |= (m2 & (p > 0) & (p < 1)).to(tl.int32)  # bit 0: strictly in (0, 1)
            seen |= (m2 & ((p < 0) | (p > 1))).to(tl.int32) << 1  # bit 1: outside [0, 1]
        else:
            pred = valid & (p != 0)
            bad = (valid & ~true & (t != 0)) | (m2 & (p != 0) & (p != 1))
        tp += (true & pred).to(tl.int32)
        n_true += true.to(tl.int32)
        n_pred += pred.to(tl.int32)
        n_valid += valid.to(tl.int32)
        n_bad += bad.to(tl.int32)
    row = out_ptr + pid * 7 * C + offs_c  # int32: a program counts far fewer than 2^31
    tl.store(row, tl.sum(tp, axis=1), mask=cmask)
    tl.store(row + C, tl.sum(n_true, axis=1), mask=cmask)
    tl.store(row + 2 * C, tl.sum(n_pred, axis=1), mask=cmask)
    tl.store(row + 3 * C, tl.sum(n_valid, axis=1), mask=cmask)
    tl.store(row + 4 * C, tl.sum(n_bad, axis=1), mask=cmask)
    if LOGITS:
        tl.store(row + 5 * C, tl.max(seen & 1, axis=1), mask=cmask)
        tl.store(row + 6 * C, tl.max(seen >> 1, axis=1), mask=cmask)
    else:
        tl.store(row + 5 * C, tl.zeros([BLOCK_C], tl.int32), mask=cmask)
        tl.store(row + 6 * C, tl.zeros([BLOCK_C], tl.int32), mask=cmask)
