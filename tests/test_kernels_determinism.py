"""Every Triton kernel of the registry: the same inputs give bitwise the same loss and
gradient, and the inputs are left untouched (bf16 logits, ignored pixels)."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, run_with_grad

from segtriton.registry import LOSSES, make_inputs


@pytest.mark.parametrize("entry", [e for e in LOSSES if e.kernel], ids=lambda e: e.name)
def test_deterministic_and_inputs_untouched(entry, gen):
    C = entry.channels[0] if entry.channels else 3
    opts = {**entry.variants[0], "ignore_index": 255}
    x, t = make_inputs(
        entry, (2, C, 9, 11), opts, torch.bfloat16, gen, ignore_frac=0.1, device=DEVICE
    )
    before, target_before = x.clone(), t.clone()
    runs = [run_with_grad(entry.kernel, x, t, opts) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.equal(x, before) and torch.equal(t, target_before)
