"""``torch.library.opcheck`` on every custom op, called with the arguments the losses really
pass it. Each kernel loss runs forward and backward once per variant, with
reduction='none', with fp16 logits and with channels_last ones; every op call is recorded,
and each distinct kind of call is checked for its schema, its autograd registration, its
fake implementation (output shapes, dtypes, strides and storage offsets as the real op
gives) and its outputs and gradients under AOTAutograd. A fake that disagrees with the real
op misleads torch.compile, and the losses' own tests never run the two on the same inputs."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, KERNELS, to_channels_last

from segtriton import kernels as ker
from segtriton.kernels import _ops
from segtriton.registry import get, make_inputs


def _key(args: tuple) -> tuple:
    """What tells two calls of an op apart for its fake and its autograd: tensors by dtype,
    rank, whether they require grad and whether they are contiguous (a fake must give an
    output the layout the real op writes), flags and modes by value, numbers by type."""

    def one(a):
        if isinstance(a, torch.Tensor):
            return (a.dtype, a.dim(), a.requires_grad, a.is_contiguous())
        return a if isinstance(a, bool | str) or a is None else type(a).__name__

    return tuple(one(a) for a in args)


def _record(calls: dict, fn) -> None:
    """Run ``fn`` with every custom-op call noted in ``calls``: ``(op, key) -> args``."""
    original = _ops.Op.__call__

    def noting(op, *args):
        calls.setdefault((op, _key(args)), args)
        return original(op, *args)

    _ops.Op.__call__ = noting
    try:
        fn()
    finally:
        _ops.Op.__call__ = original


def _runs(entry):
    """``(options, dtype, channels_last)`` of each run: the variants, reduction 'none' where
    the loss has it, fp16 logits (whose 'mean' gradient is written undivided, and divided
    in the backward), and channels_last logits (whose gradient keeps their layout)."""
    runs = [(entry.ignoring(v), torch.float32, False) for v in entry.variants]
    if "none" in entry.reductions:
        none = entry.ignoring({**entry.variants[0], "reduction": "none"})
        runs.append((none, torch.float32, False))
    first = entry.ignoring(entry.variants[0])
    return [*runs, (first, torch.float16, False), (first, torch.float32, True)]


# The fused losses return the gradient their forward wrote, and an eager backward scales
# that buffer in place by grad_output / N (``kernels/_tiles.py``: scale_grad), which
# AOTAutograd's functional backward does not: where the factor is not 1 (fp16 logits,
# whose 'mean' gradient is written undivided) the outputs it compares after the backward
# differ by design, so those calls skip that one comparison
_NO_AOT = ("test_schema", "test_autograd_registration", "test_faketensor")
_ALL = (*_NO_AOT, "test_aot_dispatch_dynamic")


def _check(calls: dict) -> None:
    for (op, _), args in calls.items():
        if op.function is None:  # a backward-only op (no autograd of its own)
            args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        fp16 = isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float16
        torch.library.opcheck(op.custom_op, args, test_utils=_NO_AOT if fp16 else _ALL)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_custom_ops_pass_opcheck(entry, gen):
    calls: dict = {}
    for options, dtype, channels_last in _runs(entry):
        C = 1 if entry.is_binary(options) else 3
        x, t = make_inputs(
            entry, (2, C, 6, 7), options, dtype, gen, 0.1, mask_dtype=dtype, device=DEVICE
        )
        x = (to_channels_last(x) if channels_last else x).requires_grad_(True)

        def step(x=x, t=t, options=options):
            loss = entry.kernel(x, t, **options)
            torch.autograd.grad(loss.sum(), x)

        _record(calls, step)
    assert calls, f"{entry.name} called no custom op"
    _check(calls)


@pytest.mark.parametrize("name", ["bce", "sigmoid_focal"])
def test_sigmoid_ops_pass_opcheck_on_channels_last_masks(name, gen):
    """Logits and masks both channels_last: the sigmoid ops read them as flat ranges and
    return per-element losses in that layout, which their fakes must give too."""
    entry = get(name)
    calls: dict = {}
    for reduction in ("none", "mean"):
        options = entry.ignoring({**entry.variants[0], "reduction": reduction})
        x, t = make_inputs(
            entry, (2, 3, 6, 7), options, torch.float32, gen, 0.1, mask_dtype=torch.float32
        )
        x, t = to_channels_last(x.to(DEVICE)), to_channels_last(t.to(DEVICE))
        x.requires_grad_(True)

        def step(x=x, t=t, options=options):
            loss = entry.kernel(x, t, **options)
            torch.autograd.grad(loss.sum(), x)

        _record(calls, step)
    _check(calls)


def test_region_stats_op_passes_opcheck(gen):
    """The differentiable sums of ``region_stats`` (an op no registry loss calls)."""
    x = torch.randn(2, 3, 6, 7, generator=gen).to(DEVICE).requires_grad_(True)
    y = torch.randint(0, 3, (2, 6, 7), generator=gen).to(DEVICE)
    calls: dict = {}

    def step():
        stats = ker.region_stats(x, y, "multiclass", None, "image")
        torch.autograd.grad((stats.inter + 2 * stats.psum).sum(), x)

    _record(calls, step)
    assert {op.name for op, _ in calls} == {"segtriton::region_stats", "segtriton::region_grad"}
    _check(calls)
