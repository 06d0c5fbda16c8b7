"""Triton kernel of the surface-distance metrics (see ``surface.py``): per (image, class)
sums over that class's run of surface distances, which lie together in each image's row
after the grouping sort."""

from __future__ import annotations

import triton.language as tl

from ._runtime import kernel_jit


@kernel_jit
def _surface_stats_kernel(
    d_ptr, first_ptr, count_ptr, tol_ptr, sum_ptr, within_ptr, P, K, BLOCK: tl.constexpr
):  # fmt: skip
    """Program ``b * K + k``: over the ``count`` distances ``d[b, first:first + count]``
    (float32), their float64 sum and how many are at most ``tol[k]`` (float64), added in
    a fixed order (deterministic, no atomics)."""
    pid = tl.program_id(0)
    b = pid // K
    start = tl.load(first_ptr + pid)
    n = tl.load(count_ptr + pid)
    tol = tl.load(tol_ptr + pid % K)
    row = d_ptr + b.to(tl.int64) * P + start
    offs = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], dtype=tl.float64)
    within = tl.zeros([BLOCK], dtype=tl.int64)
    for i in range(0, n, BLOCK):
        mask = i + offs < n
        d = tl.load(row + i + offs, mask=mask, other=0.0).to(tl.float64)
        total += d
        within += (mask & (d <= tol)).to(tl.int64)
    tl.store(sum_ptr + pid, tl.sum(total, axis=0))
    tl.store(within_ptr + pid, tl.sum(within, axis=0))
