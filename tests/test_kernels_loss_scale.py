"""fp16 gradients under a loss scale, as ``torch.amp.GradScaler`` trains: grad_output
65536 on a 'mean' loss over 20480 pixels. Divided by N in the forward and rounded to fp16,
a gradient of about 1/N lies among fp16's subnormals and keeps a few bits; scaling it in
the backward kept the error (up to 2e-3 of the largest entry, some entries 0). Every
loss must give the float64 gradient times the scale to fp16's precision."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE

from segtriton.registry import LOSSES, make_inputs

SCALE = 65536.0


@pytest.mark.parametrize("entry", [e for e in LOSSES if e.kernel], ids=lambda e: e.name)
def test_fp16_gradient_under_a_loss_scale(entry, seed, gen):
    options = {**entry.variants[0], "reduction": "mean", "ignore_index": 255}
    shape = entry.fit_shape((1, 2, 128, 160), options)
    x, t = make_inputs(entry, shape, options, torch.float16, gen, 0.1, device=DEVICE)
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
