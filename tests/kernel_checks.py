"""Helpers shared by the kernel test modules: device, tolerances, and the float64 check."""

from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAD_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = list(GRAD_TOL)


def run_with_grad(fn, x, t, options, gout_seed=None):
    """(loss, dloss/dx) as float64, with a random grad_output in [0.5, 1.5)."""
    x = x.detach().requires_grad_(True)
    loss = fn(x, t, **options)
    g = torch.Generator().manual_seed(gout_seed or 0)
    gout = (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(loss.device)
    (grad,) = torch.autograd.grad(loss, x, grad_outputs=gout.to(loss.dtype))
    return loss.double(), grad.double()


def assert_matches(entry, x, t, options, dtype, seed, kernel=None):
    """The kernel's loss and gradient equal the reference's on float64 logits."""
    loss, grad = run_with_grad(kernel or entry.kernel, x, t, options, seed)
    ref_loss, ref_grad = run_with_grad(entry.reference, x.double(), t, options, seed)
    assert loss.shape == ref_loss.shape
    torch.testing.assert_close(loss, ref_loss, rtol=2e-5, atol=1e-6, equal_nan=True)
    scale = ref_grad.abs().max().clamp_min(1e-30)
    tol = GRAD_TOL[dtype]
    # Gradients below the dtype's normal range are stored as subnormals; the fused path
    # rounds twice (gradient in the forward, then times grad_output): allow two quanta.
    quantum = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    torch.testing.assert_close(grad, ref_grad, rtol=tol, atol=max(tol * scale, 2 * quantum))
    return loss, grad
