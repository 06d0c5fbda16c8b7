"""Mixed-precision training calls the loss inside ``torch.autocast``, which runs matmuls and
convolutions in bf16 / fp16 even on fp32 tensors. No loss may change under it: the same
inputs give bitwise the same loss (dtype included) and gradient inside and outside."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, light_case

from segtriton.registry import LOSSES

CASES = [
    pytest.param(entry, which, dtype, id=f"{entry.name}-{which}-{str(dtype)[6:]}")
    for entry in LOSSES
    for which in ("kernel", "reference")
    # the reference's fp32-list ops (softmax, log, ...) take bf16 inputs to fp32 on CUDA
    for dtype in ((torch.float32, torch.bfloat16) if which == "kernel" else (torch.float32,))
    if getattr(entry, which) is not None
]


@pytest.mark.parametrize(("entry", "which", "dtype"), CASES)
def test_loss_and_gradient_are_unchanged_under_autocast(entry, which, dtype, gen):
    options, x, t = light_case(entry, (2, 3, 9, 11), gen, dtype, 0.2)
    fn = getattr(entry, which)
    results = []
    for enabled in (False, True):
        xi = x.detach().clone().requires_grad_(True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=enabled):
            loss = fn(xi, t, **options)
        (grad,) = torch.autograd.grad(loss.sum(), xi)
        results.append((loss, grad))
    (plain, plain_grad), (mixed, mixed_grad) = results
    bitwise = {"rtol": 0, "atol": 0, "equal_nan": True}  # and the same dtype
    torch.testing.assert_close(mixed, plain, **bitwise)
    torch.testing.assert_close(mixed_grad, plain_grad, **bitwise)
