"""Every Triton loss at saturated logits, against the float64 reference: extreme logits
(+-1e4, whose probabilities round to 0 and 1 in every precision: no overflow, NaN or inf
may appear) and, for the losses made of non-negative terms, confident right predictions,
whose small loss and gradient must keep their digits. Runs compiled on a GPU and in
Triton's interpreter on CPU."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, KERNELS, assert_matches, confident

from segtriton.registry import make_inputs

# clDice's test helper must order float32 probabilities as float64 ones, which saturated
# ones tie in float32 only; the Lovasz losses' identity weights -1/p_y are infinite where
# p_y rounds to 0 (see LossEntry.grad_weights)
SATURABLE = [e for e in KERNELS if not (e.order_sensitive or e.grad_weights)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("entry", SATURABLE, ids=lambda e: e.name)
def test_extreme_logits(entry, dtype, seed, gen):
    opts = dict(entry.variants[0])
    shape = entry.fit_shape((2, 4, 5, 6), opts)
    x, t = make_inputs(entry, shape, opts, dtype, gen, device=DEVICE)
    extreme = torch.where(torch.rand(x.shape, generator=gen) < 0.5, 1e4, -1e4)
    assert_matches(entry, extreme.to(DEVICE, dtype), t, opts, dtype, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("entry", [e for e in KERNELS if e.nonneg_terms], ids=lambda e: e.name)
def test_confident_predictions(entry, dtype, seed, gen):
    """Labels: the true class's logit 14 ahead (``1 - p_y`` near 1e-6); masks: logits of
    +-9 on the right side (:func:`kernel_checks.confident`). A loss such as ``1 - Dice``
    is left out: near 0 its float32 reference loses digits (differences of its sums),
    and the comparison's allowance with it; ``test_kernels_region`` holds the region
    kernels there to float64 itself."""
    opts = dict(entry.variants[0])
    shape = entry.fit_shape((2, 4, 5, 6), opts)
    x, t = make_inputs(entry, shape, opts, torch.float32, gen, device=DEVICE)
    assert_matches(entry, confident(entry, opts, x, t).to(dtype), t, opts, dtype, seed)
