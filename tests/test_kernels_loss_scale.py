"""fp16 gradients under a loss scale, as ``torch.amp.GradScaler`` trains: grad_output
65536 on a 'mean' loss over 20480 pixels. Divided by N in the forward and rounded to fp16,
a gradient of about 1/N lies among fp16's subnormals and keeps a few bits; scaling it in
the backward kept the error (up to 2e-3 of the largest entry, some entries 0). Every
loss must give the float64 gradient times the scale to fp16's precision."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, KERNELS

from segtriton import reference as ref
from segtriton.kernels import _ops
from segtriton.registry import make_inputs

SCALE = 65536.0
_TARGET_MAPS = {"boundary": ref.signed_distance_map, "hausdorff_dt": ref.distance_field}


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_fp16_gradient_under_a_loss_scale(entry, seed, gen):
    options = entry.ignoring({**entry.variants[0], **entry.light, "reduction": "mean"})
    shape = entry.fit_shape((1, 2, 128, 160), options)
    x, t = make_inputs(entry, shape, options, torch.float16, gen, 0.1, device=DEVICE)
    if entry.name in _TARGET_MAPS:  # the interpreter's transform takes 10-20 s at this size;
        # the tests of the distance losses check it, this one the scaled gradient
        keys = ("mode", "spacing", "ignore_index")
        given = {k: options[k] for k in keys if k in options}
        options["dist_map"] = _TARGET_MAPS[entry.name](t.cpu(), shape[1], **given).to(DEVICE)
    scale = torch.tensor(SCALE, device=DEVICE)
    xk = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(entry.kernel(xk, t, **options), xk, grad_outputs=scale)
    xd = x.detach().double().requires_grad_(True)
    loss = entry.reference(xd, t, **options) * SCALE
    if entry.grad_weights is not None:  # the gradient depends on how ties are ordered
        assert entry.grad_identity_err(x, t, grad, loss.detach(), options) <= 2e-3
        return
    (want,) = torch.autograd.grad(loss, xd)
    top = float(want.abs().max())
    assert top > 0.01  # well inside fp16's normal range once scaled
    torch.testing.assert_close(grad.double(), want, rtol=2e-3, atol=2e-4 * top)


@pytest.mark.parametrize("fast_eager", [True, False], ids=["function", "custom-op"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_repeated_backwards_through_one_graph(entry, dtype, fast_eager, seed, gen, monkeypatch):
    """retain_graph: each backward gives its grad_output times dL/dx, the
    gradients handed out do not alias (a later backward left the earlier ones as they
    were, and a grad_output changed after its backward does not alter the next), and
    x.grad accumulates them."""
    monkeypatch.setattr(_ops, "fast_eager", fast_eager)
    options = {**entry.variants[0], **entry.light, "reduction": "mean"}
    x, t = make_inputs(
        entry, entry.fit_shape((2, 3, 9, 11), options), options, dtype, gen, device=DEVICE
    )
    x.requires_grad_(True)
    loss = entry.kernel(x, t, **options)
    factors = (2.0, 3.0, 0.5, 1024.0, 1.0)  # the first not 1: later ones divide by it
    grads = []
    for f in factors:
        gout = torch.tensor(f, dtype=loss.dtype, device=DEVICE)
        grads.append(torch.autograd.grad(loss, x, grad_outputs=gout, retain_graph=True)[0])
        gout.fill_(-7.0)  # the caller's tensor changes: the backwards kept its value

    def close(got: torch.Tensor, f: float) -> None:
        # fp16: the first gradient may lie among the subnormals (step 2^-24), times f
        tol = {"rtol": 2e-3, "atol": 2.0**-23 * f} if dtype == torch.float16 else {}
        torch.testing.assert_close(got.float(), grads[0].float() * (f / factors[0]), **tol)

    for f, g in zip(factors, grads, strict=True):
        close(g, f)
    loss.backward(retain_graph=True)
    (2 * loss).backward()
    close(x.grad, 3.0)
