"""Element offsets past 2^31, the int32 range, without 2^31 elements: each input is a view
into a large buffer that ``torch.empty`` leaves untouched (on the CPU only the pages the
view touches get memory), with one axis strided so that ``index * stride`` passes 2^31
while each stride stays an int32. A kernel that multiplies such an index and stride in
int32 wraps and reads elsewhere. Every loss and the confusion matrix (multiclass and
multilabel) must give on the view bitwise what they give on a contiguous copy of it, for
the batch, class and pixel axes in turn; 300 classes take the streamed (chunked) class
path. Logits are bf16, labels int16. The gradient buffer is a fresh contiguous tensor
here; the kernels write it through the same int64 image, class and pixel offsets."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import tempfile

import pytest
import torch
from kernel_checks import DEVICE, KERNELS, light_options, run_with_grad

from segtriton.kernels import confusion_matrix
from segtriton.registry import make_inputs

PAST = 2**31
STORE = PAST + 2**20  # elements of each buffer: the far entries plus a dense block below
CASES = [("batch", 3), ("classes", 3), ("classes", 300), ("pixels", 3)]


@contextlib.contextmanager
def _one_test_at_a_time():
    """On a GPU, where each buffer takes 4 GiB of real memory, the tests of the
    pytest-xdist workers take turns (a file lock); on the CPU they run side by side."""
    if DEVICE != "cuda":
        yield
        return
    with open(os.path.join(tempfile.gettempdir(), "segtriton-far-offsets.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def stores():
    """Buffers by (role, dtype), made on first use and freed after the test."""
    made: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def store(role: str, dtype: torch.dtype) -> torch.Tensor:
        if (role, dtype) not in made:
            made[role, dtype] = torch.empty(STORE, dtype=dtype, device=DEVICE)
        return made[role, dtype]

    with _one_test_at_a_time():
        yield store
        made.clear()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def far(x: torch.Tensor, dims: range, store: torch.Tensor) -> torch.Tensor:
    """``x`` copied into ``store`` at a view in which the consecutive ``dims`` are laid out
    densely among themselves but ``unit`` elements apart, so that their last entry lies
    just past 2^31; the other dims are packed densely below ``unit``."""
    n = math.prod(x.shape[d] for d in dims)
    assert n > 1, "a far axis needs two entries"
    strides, step = [0] * x.dim(), 1
    for d in reversed(range(x.dim())):
        if d not in dims:
            strides[d], step = step, step * x.shape[d]
    unit = PAST // (n - 1) + 7
    assert step < unit < PAST and (n - 1) * unit + step <= STORE
    for d in reversed(dims):
        strides[d], unit = unit, unit * x.shape[d]
    return store.as_strided(x.shape, strides).copy_(x)


def far_along(x: torch.Tensor, axis: str, classes: bool, stores, role: str) -> torch.Tensor:
    """``x`` (``[B, C, *S]`` when ``classes``, else ``[B, *S]``) as a far view along
    ``axis``, in ``stores(role, ...)``; as it is where it has no such axis. Integer
    tensors become int16 and floating ones bf16 (bool stays), so that a buffer of 2^31
    elements takes 4 GiB at most."""
    first = 2 if classes else 1
    dims = {"batch": range(1), "classes": range(1, 2) if classes else None}.get(
        axis, range(first, x.dim())
    )
    if dims is None:
        return x
    if x.is_floating_point():
        x = x.to(torch.bfloat16)
    elif x.dtype != torch.bool:
        x = x.to(torch.int16)
    return far(x, dims, stores(role, x.dtype))


def _loss_cases():
    for entry in KERNELS:
        options = light_options(entry)
        for axis, C in CASES:
            shape = entry.fit_shape((3, C, 3, 4), options)
            if axis == "classes" and shape[1] != C:
                continue  # a loss with a fixed class count (binary) has no such axis
            yield pytest.param(entry, axis, C, id=f"{entry.name}-{axis}-C{C}")


@pytest.mark.parametrize(("entry", "axis", "C"), list(_loss_cases()))
def test_loss_far_offsets(entry, axis, C, stores, seed, gen):
    options = light_options(entry)
    shape = entry.fit_shape((3, C, 3, 4), options)
    x, t = make_inputs(entry, shape, options, torch.bfloat16, gen, 0.2, device=DEVICE)
    xv = far_along(x, axis, True, stores, "logits")
    tv = far_along(t, axis, entry.target_kind(options) == "masks", stores, "target")
    loss, grad = run_with_grad(entry.kernel, xv, tv, options, seed)
    want_loss, want_grad = run_with_grad(
        entry.kernel, xv.contiguous(), tv.contiguous(), options, seed
    )
    assert torch.equal(loss, want_loss)
    assert torch.equal(grad, want_grad)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(("axis", "C"), CASES)
def test_confusion_matrix_far_offsets(axis, C, per_image, mode, stores, gen):
    """Multiclass from logits (the fused argmax) and from predicted labels; multilabel
    from logits and masks."""
    x = torch.randn(3, C, 3, 4, generator=gen).to(device=DEVICE, dtype=torch.bfloat16)
    xv = far_along(x, axis, True, stores, "logits")
    if mode == "multiclass":
        y = torch.randint(0, C, (3, 3, 4), generator=gen).to(DEVICE)
        y[:, 0] = -1
        yv = far_along(y, axis, False, stores, "target")
        pairs = [(xv, yv), (far_along(x.argmax(1), axis, False, stores, "preds"), yv)]
    else:
        masks = (torch.rand(3, C, 3, 4, generator=gen) < 0.5).to(DEVICE)
        pairs = [(xv, far_along(masks, axis, True, stores, "target"))]
    for preds, target in pairs:
        options = {"ignore_index": -1, "per_image": per_image, "mode": mode}
        got = confusion_matrix(preds, target, C, **options)
        want = confusion_matrix(preds.contiguous(), target.contiguous(), C, **options)
        assert torch.equal(got, want)
