"""What a kernel loss's forward allocates: only whether a gradient is wanted (logits that
require grad, with grad mode on) may change it. Under ``torch.no_grad``, or with logits
that do not require grad, a forward allocates the same tensors, and no more than one that
wants a gradient; the losses whose forward writes the gradient (the fused ones) or keeps
maps for the backward (the skeletons, the erosions, the distance maps) allocate at least
the logits' size less, the others the same."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, KERNELS
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from segtriton.registry import make_inputs

# the forward writes the gradient, or keeps maps for the backward, when one is wanted
_KEEPS = {
    "cross_entropy", "cross_entropy_probs", "ohem_cross_entropy", "recall_cross_entropy",
    "bce", "sigmoid_focal", "sigmoid_focal_ovr", "softmax_focal", "boundary", "hausdorff_dt",
    "cldice", "hausdorff_er",
}  # fmt: skip


class _Allocations(TorchDispatchMode):
    """The bytes of the storages that the ops inside create. Each is held until the end,
    so that no later tensor can reuse its address and pass for it."""

    def __init__(self, inputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.seen = {t.untyped_storage().data_ptr() for t in inputs}
        self.held: list[torch.Tensor] = []
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            storage = t.untyped_storage() if isinstance(t, torch.Tensor) else None
            if storage is not None and storage.data_ptr() not in self.seen:
                self.seen.add(storage.data_ptr())
                self.held.append(t)
                self.bytes += storage.nbytes()
        return out


def _allocated(entry, x, t, options, requires_grad: bool, grad_mode: bool) -> int:
    x = x.detach().requires_grad_(requires_grad)
    with torch.set_grad_enabled(grad_mode), _Allocations([x, t]) as record:
        entry.kernel(x, t, **options)
    return record.bytes


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_a_forward_without_grad_allocates_less_or_the_same(entry, gen):
    options = dict(entry.variants[0])  # not light_case: HD-ER keeps its maps past 2 levels
    shape = entry.fit_shape((2, 3, 20, 24), options)
    x, t = make_inputs(entry, shape, options, torch.float32, gen, device=DEVICE)
    entry.kernel(x, t, **options)  # caches device constants
    no_grad_mode = _allocated(entry, x, t, options, True, False)
    no_requires = _allocated(entry, x, t, options, False, True)
    wanted = _allocated(entry, x, t, options, True, True)
    assert no_grad_mode == no_requires
    assert no_grad_mode <= wanted
    keeps = wanted - no_grad_mode >= x.numel() * x.element_size()
    assert keeps == (entry.name in _KEEPS), (no_grad_mode, wanted)
