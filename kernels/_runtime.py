"""Where Triton kernels run: compiled on a CUDA device, or in Triton's CPU interpreter.

The interpreter is chosen by the environment variable ``TRITON_INTERPRET=1``, which must
be set before ``triton`` is first imported.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, a, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, a * x + y, mask=mask)


def run_smoke_kernel(device: str | torch.device) -> float:
    """Run a tiny kernel on ``device`` and return its max abs error against torch."""
    n = 1000
    x = torch.randn(n, device=device)
    y = torch.randn(n, device=device)
    out = torch.empty_like(x)
    _axpy_kernel[(triton.cdiv(n, 256),)](x, y, out, 2.0, n, BLOCK=256)
    return float((out - (2.0 * x + y)).abs().max())
