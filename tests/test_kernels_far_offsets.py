"""Element offsets past 2^31, the int32 range, without 2^31 elements: each input is a view
into a large buffer that ``torch.empty`` leaves untouched (on the CPU only the pages the
views touch get memory), with one axis strided so that ``index * stride`` passes 2^31
while each stride stays an int32. A kernel that multiplies such an index and stride in
int32 wraps and reads elsewhere. Every loss and the confusion matrix (multiclass and
multilabel) must give on the views bitwise what they give on views with the same strides
that stay near, and what they give on contiguous copies up to the order of their sums
(see ``_same_up_to_order``), for the batch, class and pixel axes in turn; 300 classes
take the streamed (chunked) class path.
Logits and masks are bf16, labels int16. The gradient buffer is a fresh contiguous tensor
here; the kernels write it through the same int64 image, class and pixel offsets.

On a GPU the buffer takes 4 GiB of real memory, so the pytest-xdist workers take turns
(a file lock) for the far run, after compiling its kernels outside the lock on views
with the same Triton specialisation whose far entries lie a few MiB apart."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import tempfile

import pytest
import torch
from kernel_checks import DEVICE, KERNELS, light_case, light_options, run_with_grad

from segtriton.kernels import confusion_matrix

PAST = 2**31
DENSE = 2**16  # elements below the first far entry, where the other dims are packed
CASES = [("batch", 3), ("classes", 3), ("classes", 300), ("pixels", 3)]
SPATIAL = (3, 4)


def logits_shape(axis: str, C: int) -> tuple[int, ...]:
    """Three images where the batch axis is the far one (with two, its stride would
    pass int32 itself), else one."""
    return (3 if axis == "batch" else 1, C, *SPATIAL)


class FarViews:
    """Tensors copied into one buffer of 2-byte elements, at views that lay out the dims
    of one axis (``n`` entries in all) ``unit`` elements apart, so that the last lies
    past ``reach``, and pack the other dims densely below ``DENSE``, each tensor after
    the previous one. ``unit`` is 7 modulo 16 and every stride an int32 whatever
    ``reach``, so kernels get the same Triton specialisation at any reach. Integer
    tensors become int16, floating and bool ones bf16."""

    def __init__(self, n: int, reach: int) -> None:
        assert n > 1, "a far axis needs two entries"
        self.unit = (max(reach // (n - 1), DENSE) // 16 + 1) * 16 + 7
        size = (n - 1) * self.unit + DENSE
        self.buffer = torch.empty(size, dtype=torch.int16, device=DEVICE)
        self.used = 0

    def put(self, x: torch.Tensor, dims: range | None) -> torch.Tensor:
        """``x`` as such a view, far along ``dims`` (consecutive); as it is for None."""
        if dims is None:
            return x
        whole = not (x.is_floating_point() or x.dtype == torch.bool)
        x = x.to(torch.int16 if whole else torch.bfloat16)
        strides, step = [0] * x.dim(), 1
        for d in reversed(range(x.dim())):
            if d not in dims:
                strides[d], step = step, step * x.shape[d]
        unit = self.unit
        for d in reversed(dims):
            strides[d], unit = unit, unit * x.shape[d]
        assert self.used + step <= DENSE and max(strides) < PAST
        view = self.buffer.view(x.dtype).as_strided(x.shape, strides, self.used)
        self.used += step
        return view.copy_(x)


def far_dims(axis: str, x: torch.Tensor, classes: bool) -> range | None:
    """The dims of ``axis`` in ``x`` (``[B, C, *S]`` when ``classes``, else ``[B, *S]``);
    None for the class axis of labels."""
    if axis == "batch":
        return range(1)
    if axis == "classes":
        return range(1, 2) if classes else None
    return range(2 if classes else 1, x.dim())


@contextlib.contextmanager
def _one_worker_at_a_time():
    """On a GPU, a file lock shared by the pytest-xdist workers; nothing on the CPU."""
    if DEVICE != "cuda":
        yield
        return
    with open(os.path.join(tempfile.gettempdir(), "segtriton-far-offsets.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            torch.cuda.empty_cache()


def check_far(check, n: int) -> None:
    """``check(views)`` with far entries past 2^31, after a few MiB apart (on a GPU the
    kernels then compile outside the lock). What ``check`` returns must be bitwise the
    same for both (when it returns anything): the same kernel reads the same values at
    other offsets."""
    near = check(FarViews(n, reach=DENSE))
    with _one_worker_at_a_time():
        far = check(FarViews(n, reach=PAST))
    if near is not None:
        assert all(torch.equal(a, b) for a, b in zip(far, near, strict=True))


def far_entries(axis: str, logits: torch.Tensor) -> int:
    """How many entries the far axis of ``logits`` holds: the ``n`` of :class:`FarViews`."""
    return math.prod(logits.shape[d] for d in far_dims(axis, logits, True))


def _same_up_to_order(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within a bf16 rounding of the sums: contiguous copies may take other tiles (a
    pixel stride of 1 gives vector loads and another thread layout on a GPU, and the
    column tiles of CE and the region losses everywhere), so a sum over a tile's pixels
    adds in another order: the dice, MCC and one-vs-rest focal losses of the pixel axis'
    case differed in the last bits on an H200 (2026-12-04). A wrong offset reads other
    values, far off both ways."""
    top = float(want.detach().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=2**-7, atol=1e-6 * top)


def _loss_cases():
    for entry in KERNELS:
        options = light_options(entry)
        for axis, C in CASES:
            shape = entry.fit_shape(logits_shape(axis, C), options)
            if axis == "classes" and shape[1] != C:
                continue  # a loss with a fixed class count (binary) has no such axis
            yield pytest.param(entry, axis, C, id=f"{entry.name}-{axis}-C{C}")


@pytest.mark.parametrize(("entry", "axis", "C"), list(_loss_cases()))
def test_loss_far_offsets(entry, axis, C, seed, gen):
    options, x, t = light_case(entry, logits_shape(axis, C), gen, torch.bfloat16, 0.2)
    masks = entry.target_kind(options) == "masks"

    def check(views: FarViews) -> tuple[torch.Tensor, torch.Tensor]:
        xv = views.put(x, far_dims(axis, x, True))
        tv = views.put(t, far_dims(axis, t, masks))
        loss, grad = run_with_grad(entry.kernel, xv, tv, options, seed)
        want = run_with_grad(entry.kernel, xv.contiguous(), tv.contiguous(), options, seed)
        _same_up_to_order(loss, want[0])
        _same_up_to_order(grad, want[1])
        return loss, grad

    check_far(check, far_entries(axis, x))


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(("axis", "C"), CASES)
def test_confusion_matrix_far_offsets(axis, C, per_image, mode, gen):
    """Multiclass from logits (the fused argmax) and from predicted labels; multilabel
    from logits and masks."""
    x = torch.randn(logits_shape(axis, C), generator=gen).to(DEVICE, torch.bfloat16)
    y = torch.randint(0, C, x[:, 0].shape, generator=gen).to(DEVICE)
    y[:, 0] = -1
    masks = (torch.rand(x.shape, generator=gen) < 0.5).to(DEVICE)
    options = {"ignore_index": -1, "per_image": per_image, "mode": mode}

    def check(views: FarViews) -> None:
        xv = views.put(x, far_dims(axis, x, True))
        if mode == "multiclass":
            yv = views.put(y, far_dims(axis, y, False))
            preds = views.put(x.argmax(1), far_dims(axis, y, False))
            pairs = [(xv, yv), (preds, yv)]
        else:
            pairs = [(xv, views.put(masks, far_dims(axis, masks, True)))]
        for p, target in pairs:
            got = confusion_matrix(p, target, C, **options)
            assert torch.equal(
                got, confusion_matrix(p.contiguous(), target.contiguous(), C, **options)
            )

    check_far(check, far_entries(axis, x))


@pytest.mark.parametrize(("axis", "C"), CASES)
def test_near_views_share_the_far_views_specialisation(axis, C):
    """The views a GPU compiles with (far entries a few MiB apart) and the far ones: same
    shapes, strides equal modulo 16 and all int32, same storage offsets (Triton
    specialises a launch on these, not on the values), the far ones reaching past 2^31."""
    x = torch.zeros(logits_shape(axis, C), device=DEVICE)
    y = torch.zeros(x[:, 0].shape, dtype=torch.int64, device=DEVICE)
    n = far_entries(axis, x)
    near, far = FarViews(n, reach=DENSE), FarViews(n, reach=PAST)
    assert near.buffer.numel() * 2 < 2**26 <= PAST < far.buffer.numel()
    for t, classes in ((x, True), (y, False), (x, True)):
        dims = far_dims(axis, t, classes)
        a, b = near.put(t, dims), far.put(t, dims)
        assert a.shape == b.shape and a.storage_offset() == b.storage_offset()
        assert [s % 16 for s in a.stride()] == [s % 16 for s in b.stride()]
        assert max(b.stride()) < PAST
        reach = sum((size - 1) * s for size, s in zip(b.shape, b.stride(), strict=True))
        assert dims is None or reach >= PAST
