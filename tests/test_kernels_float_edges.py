"""Where float32 meets its edges inside a kernel, the interpreter computes what a GPU does:
float32 <-> bfloat16 casts equal torch's (round to nearest even, subnormals kept), and
``tl.exp2`` and ``tl.sqrt`` flush subnormals to zero as the approximate instructions they
compile to do (in the interpreter through tests/conftest.py's ``exact_bfloat16_casts``
and ``flush_like_the_gpu``). Run compiled on a GPU, the same tests check that the GPU
does what the interpreter is made to assume, and that ``fast_rcp`` and ``fast_log2`` flush
as their docstrings say (the interpreter does not emulate those two)."""

from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl
from kernel_checks import DEVICE

from segtriton.kernels._tiles import fast_exp, fast_log2, fast_rcp

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _round_trip(x_ptr, y_ptr, z_ptr, n, BLOCK: tl.constexpr):
    """``y = bf16(x)`` and ``z = float32(y)``, y read back from memory."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask).to(tl.bfloat16), mask=mask)
    tl.store(z_ptr + offs, tl.load(y_ptr + offs, mask=mask).to(tl.float32), mask=mask)


def _bits(v: torch.Tensor) -> torch.Tensor:
    """float32 values from their bit patterns (int64, below 2^32)."""
    return v.to(torch.int64).where(v < 2**31, v - 2**32).to(torch.int32).view(torch.float32)


def _hard_values(gen: torch.Generator) -> torch.Tensor:
    """Float32 values where a bf16 cast goes wrong first: subnormals and the smallest
    normals, halfway cases (low half 0x8000 under an even and an odd upper half, one
    step either side), the largest finite value (rounds to inf), signed zeros, inf, NaN,
    and random bit patterns over the whole range."""
    upper = torch.cat(
        [
            torch.tensor([0x0000, 0x0001, 0x0002, 0x007F, 0x0080, 0x0081, 0x3F80, 0x7F7F]),
            torch.randint(0, 0x7F80, (40,), generator=gen),
        ]
    )
    low = torch.tensor([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF])
    grid = (upper[:, None] << 16 | low[None, :]).flatten()
    grid = torch.cat([grid, grid | 0x80000000, torch.tensor([0x7F800000, 0x7FC00000])])
    spread = torch.randint(0, 2**32, (1000,), generator=gen, dtype=torch.int64)
    return _bits(torch.cat([grid, spread]))


def test_bfloat16_casts_match_torch(gen):
    if INTERPRETED:
        import conftest

        assert conftest.EXACT_BF16_CASTS, "the interpreter's float32 <-> bf16 casts were kept"
    x = _hard_values(gen).to(DEVICE)
    y = torch.empty(x.shape, dtype=torch.bfloat16, device=DEVICE)
    z = torch.empty_like(x)
    _round_trip[(triton.cdiv(x.numel(), 256),)](x, y, z, x.numel(), BLOCK=256)
    want = x.to(torch.bfloat16)
    nan = want.isnan()
    assert torch.equal(y.isnan(), nan)
    assert torch.equal(y[~nan].view(torch.int16), want[~nan].view(torch.int16))
    assert torch.equal(z.isnan(), nan)
    assert torch.equal(z[~nan], want[~nan].float())


@pytest.mark.skipif(not INTERPRETED, reason="compiled here: no interpreter conversion to compare")
def test_the_interpreters_own_casts_are_the_ones_replaced():
    """The conversion conftest.py keeps aside is the faulty one this module guards against
    (if a Triton release fixes it, this fails: the replacement can then go)."""
    import numpy as np
    from triton.runtime import interpreter

    slow = interpreter._convert_float.slow
    x = np.array([1e-38, 9.4e-40, 1.0 + 2.0**-8 + 2.0**-9], dtype=np.float32)
    got = slow(x, tl.float32, tl.bfloat16, None).view(np.uint16)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert (got != want).all()


@triton.jit
def _fast_functions(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """``out[0, i] = fast_exp(x_i)`` (``tl.exp2``), ``out[1, i] = fast_rcp(x_i)``, ``out[2,
    i] = fast_log2(x_i)``, ``out[3, i] = tl.sqrt(x_i)``."""
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=1.0)
    tl.store(out_ptr + offs, fast_exp(x), mask=mask)
    tl.store(out_ptr + n + offs, fast_rcp(x), mask=mask)
    tl.store(out_ptr + 2 * n + offs, fast_log2(x), mask=mask)
    tl.store(out_ptr + 3 * n + offs, tl.sqrt(x), mask=mask)


def test_exp2_and_sqrt_flush_subnormals():
    """Subnormal results and operands read as signed zeros: ``e^-88`` (6.1e-39) is 0 and
    ``sqrt(1e-39)`` is 0; normal values keep the functions' accuracy (``e^x`` within the
    rounding of ``x log2(e)``, about 5e-6 at ``x = -87``). Compiled, ``1 / 1e38`` is 0,
    ``1 / 1e-39`` is inf and ``log2(1e-39)`` is -inf too."""
    if INTERPRETED:
        import conftest

        assert conftest.FLUSHED_LIKE_THE_GPU, "the interpreter's exp2 and sqrt keep subnormals"
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([0.0, 1.0, -87.0, -88.0, 2.0, 1e38, -1e38, 1e-39, -1e-39, 8.0, tiny])
    out = torch.empty(4, x.numel(), device=DEVICE)
    _fast_functions[(1,)](x.to(DEVICE), out, x.numel(), BLOCK=16)
    out = out.cpu()
    inf = float("inf")
    exp = x[:9].double().exp()
    exp[3] = 0.0  # e^-88 is flushed
    torch.testing.assert_close(out[0, :9].double(), exp, rtol=2e-5, atol=0.0)
    sqrt = torch.tensor([0.0, 0.0, 0.0, 2.0**0.5, 2.0**-63])
    torch.testing.assert_close(out[3, [0, 7, 8, 4, 10]], sqrt, rtol=1e-6, atol=0.0)
    normal = [1, 2, 3, 4, 9]  # normal operands: no flush
    torch.testing.assert_close(out[1, normal], 1 / x[normal], rtol=1e-6, atol=0.0)
    torch.testing.assert_close(out[2, [1, 4, 9, 10]], x[[1, 4, 9, 10]].log2(), rtol=0, atol=3e-7)
    if not INTERPRETED:
        rcp = torch.tensor([inf, 0.0, -0.0, inf, -inf])
        assert torch.equal(out[1, [0, 5, 6, 7, 8]], rcp)
        assert torch.equal(out[1, 5:7].signbit(), torch.tensor([False, True]))
        assert torch.equal(out[2, [0, 7]], torch.tensor([-inf, -inf]))
