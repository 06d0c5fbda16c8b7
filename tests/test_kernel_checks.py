"""The comparison helpers the kernel tests rely on, checked on their own: an allowance that
grew where it should not would let every kernel test pass."""

from __future__ import annotations

import torch
from kernel_checks import SoftmaxTerms


def test_softmax_terms_size_the_backward_of_a_class_softmax(gen):
    """``size = p (|g| + sum_k p_k |g_k|)`` for ``L = sum w p`` (``g = w``), summed over
    the two class softmaxes taken (one of the ``[B, C, pixels]`` view); a log-softmax, a
    softmax over another dim and one of another shape add nothing."""
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    with SoftmaxTerms(x.shape, x.device) as terms:
        p = torch.softmax(x, dim=1)
        flat = x.flatten(2).softmax(dim=1).view(x.shape)
        others = torch.log_softmax(x, 1).sum() + x.softmax(dim=2).sum() + x[:1].softmax(1).sum()
        torch.autograd.grad((w * p).sum() + (w * flat).sum() + others, x)
    p = p.detach()
    want = 2 * p * (w.abs() + (p * w.abs()).sum(1, keepdim=True))
    torch.testing.assert_close(terms.size, want, rtol=1e-12, atol=0.0)


def test_softmax_terms_are_zero_without_a_gradient(gen):
    x = torch.randn(1, 4, 6, generator=gen, dtype=torch.float64)
    with SoftmaxTerms(x.shape, x.device) as terms:
        torch.softmax(x, dim=1).sum()
    assert not terms.size.any()
