"""Every Triton kernel of the registry: the same inputs give bitwise the same loss and
gradient, also under ``torch.use_deterministic_algorithms(True)`` (which raises on a
torch op with no deterministic CUDA implementation and fills new tensors with NaN, so an
output entry a kernel leaves unwritten shows), and the inputs are left untouched (bf16
logits, ignored pixels); the eager path and the custom op agree bitwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from kernel_checks import DEVICE, KERNELS, run_with_grad
from torch.utils._python_dispatch import TorchDispatchMode

from segtriton.kernels import _ops
from segtriton.registry import make_inputs


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_deterministic_and_inputs_untouched(entry, gen):
    C = entry.fit_classes(3, entry.variants[0])
    opts = entry.ignoring(entry.variants[0])
    x, t = make_inputs(
        entry, (2, C, 9, 11), opts, torch.bfloat16, gen, ignore_frac=0.1, device=DEVICE
    )
    before, target_before = x.clone(), t.clone()
    runs = [run_with_grad(entry.kernel, x, t, opts) for _ in range(2)]
    with deterministic_algorithms():
        runs.append(run_with_grad(entry.kernel, x, t, opts))
    for loss, grad in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1])
    assert torch.equal(x, before) and torch.equal(t, target_before)


class _Namespaces(TorchDispatchMode):
    """Records the namespace of every op dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.namespace)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_eager_path_equals_the_custom_op_and_skips_its_dispatcher(entry, gen, monkeypatch):
    """Eager calls run each op's implementation through a plain autograd.Function (the
    custom-op dispatcher costs host time every call); under torch.compile the custom op
    runs. Both paths give bitwise the same loss and gradient, eager calls dispatch no
    segtriton op, and with the fast path off (``SEGTRITON_EAGER_OPS=0``) they do."""
    C = entry.fit_classes(3, entry.variants[0])
    for reduction in [r for r in ("mean", "none") if r in entry.reductions]:
        opts = entry.ignoring({**entry.variants[0], "reduction": reduction})
        x, t = make_inputs(entry, (2, C, 9, 11), opts, torch.float32, gen, 0.1, device=DEVICE)
        with _Namespaces() as spy:
            eager = run_with_grad(entry.kernel, x, t, opts)
        assert spy.seen and "segtriton" not in spy.seen
        with monkeypatch.context() as m, _Namespaces() as spy:
            m.setattr(_ops, "fast_eager", False)
            custom = run_with_grad(entry.kernel, x, t, opts)
        assert "segtriton" in spy.seen  # SEGTRITON_EAGER_OPS=0 goes through the custom op
        for a, b in zip(eager, custom, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
