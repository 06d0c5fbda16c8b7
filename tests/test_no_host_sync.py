"""No host synchronisation inside a loss or a metric update: the torch ops that make a GPU
wait for the host to read a value (``.item()``, ``bool()`` of a tensor, boolean-mask
indexing, ``nonzero``, ``bincount``, ``unique``, ...) are recorded with a
TorchDispatchMode while every registry kernel runs forward and backward (each fixed
variant, after a warm-up call that puts Python-list options on the device), and while the
confusion matrix, the streaming update, the Hausdorff distance and the distance maps run
with ``validate=False``, and the deep-supervision wrapper around a kernel loss. This sees the
ops the Python code issues, on any device; the GPU tests capture the losses in CUDA
graphs, which would also fail on a sync inside an op."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, KERNELS
from torch.utils._python_dispatch import TorchDispatchMode

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.reference._common import value_checks
from segtriton.registry import get, make_inputs

# ops whose result size or value the host must read from the device
_SYNCING = {
    "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "bincount",
    "histc", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
}  # fmt: skip


class _Syncs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        index = args[1] if name in ("index", "index_put", "index_put_") else ()
        if name in _SYNCING or any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index or ()
        ):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_recorder_sees_a_sync():
    x = torch.randn(4, device=DEVICE)
    with _Syncs() as syncs:
        x.sum().item()
        x[x > 0]  # noqa: B018
        torch.bincount(torch.tensor([0, 2], device=DEVICE))
    assert len(syncs.seen) == 3, syncs.seen


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_losses_do_not_sync(entry, gen):
    for variant in entry.variants:
        options = entry.ignoring(variant)
        C = 1 if entry.is_binary(options) else 3
        x, t = make_inputs(entry, (2, C, 7, 9), options, torch.float32, gen, 0.2, device=DEVICE)
        x.requires_grad_(True)
        entry.kernel(x, t, **options)
        with _Syncs() as syncs:
            loss = entry.kernel(x, t, **options)
            torch.autograd.grad(loss, x)
        assert not syncs.seen, (variant, syncs.seen)


def test_metrics_do_not_sync(gen):
    logits = torch.randn(2, 4, 9, 11, generator=gen).to(DEVICE)
    target = torch.randint(0, 4, (2, 9, 11), generator=gen).to(DEVICE)
    stream = ker.StreamingMetrics(4, ignore_index=255, average="image")
    masks = ker.StreamingMetrics(4, ignore_index=255, average="image", mode="multilabel")
    warm_up = {"classes": [3, 1], "validate": False}  # list options reach the device first
    ker.hausdorff_distance(logits, target, 4, 95, **warm_up)
    ker.surface_dice(logits, target, 4, [1.0, 0.5, 2.0, 1.5], **warm_up)
    ker.average_surface_distance(logits, target, 4, **warm_up)
    ker.hausdorff_distance(logits, logits > 0, 4, mode="multilabel", **warm_up)
    ker.surface_metrics(logits, target, 4, 1.5, **warm_up)
    ker.segmentation_metrics(logits, target, 4, **warm_up)
    with _Syncs() as syncs:
        ker.confusion_matrix(logits, target, 4, 255, validate=False)
        ker.confusion_matrix(logits.argmax(1), target, 4, per_image=True, validate=False)
        stream.update(logits, target)
        masks.update(logits, (logits > 0.5).to(torch.uint8))
        ker.confusion_matrix(logits, logits < 0, 4, mode="multilabel", validate=False)
        ker.segmentation_metrics(logits, target, 4, average="image", **warm_up)
        ker.hausdorff_distance(logits, target, 4, 95, validate=False)
        ker.hausdorff_distance(logits, target, 4, directed=True, validate=False)
        ker.hausdorff_distance(logits, target, 4, 95, **warm_up)
        ker.average_surface_distance(logits, target, 4, **warm_up)
        ker.surface_dice(logits, target, 4, [1.0, 0.5, 2.0, 1.5], **warm_up)
        ker.hausdorff_distance(logits, logits > 0, 4, mode="multilabel", **warm_up)
        ker.surface_metrics(logits, target, 4, 1.5, **warm_up)
    assert not syncs.seen, syncs.seen


def test_deep_supervision_does_not_sync(gen):
    """The target resampled for each level on the device (``resize_nearest``), the kernel
    loss at every level, forward and backward."""
    outputs = [
        torch.randn(2, 3, 12 >> k, 10 >> k, generator=gen).to(DEVICE).requires_grad_(True)
        for k in range(3)
    ]
    labels = torch.randint(0, 3, (2, 12, 10), generator=gen).to(DEVICE)
    loss_fn = ker.DeepSupervisionLoss(ker.CEDiceLoss(ignore_index=255))
    loss_fn(outputs, labels)
    with _Syncs() as syncs:
        torch.autograd.grad(loss_fn(outputs, labels), outputs)
    assert not syncs.seen, syncs.seen


def test_distance_maps_do_not_sync(gen):
    """The exported maps with their default ``validate=False``: labels and masks, with an
    ignored value, and the plain transform of a bool map."""
    labels = torch.randint(0, 4, (2, 7, 9), generator=gen).to(DEVICE)
    labels = labels.masked_fill(torch.rand(labels.shape, generator=gen).to(DEVICE) < 0.2, 255)
    masks = torch.rand(2, 3, 5, 6, 4, generator=gen).to(DEVICE) < 0.4
    with _Syncs() as syncs:
        for make in (ker.signed_distance_map, ker.distance_field):
            make(labels, 4, ignore_index=255)
            make(masks, mode="multilabel", spacing=(1.0, 2.0, 0.5))
        ker.squared_edt(masks.flatten(0, 1))
    assert not syncs.seen, syncs.seen


# references whose formulas read nothing on the host (the others call F.one_hot, which
# checks its labels on the device, or take a data-dependent threshold as OHEM does)
_READ_FREE = ("cross_entropy", "bce", "softmax_focal", "bce_dice", "combo", "wasserstein_dice",
              "lovasz_hinge", "lovasz_softmax", "boundary", "hausdorff_dt")  # fmt: skip


def _syncs_with_checks_on_and_off(step) -> tuple[list[str], list[str]]:
    """The host reads of ``step()`` with the references' value checks on, then off."""
    with _Syncs() as on:
        step()
    with value_checks(False), _Syncs() as off:
        step()
    return on.seen, off.seen


@pytest.mark.parametrize("name", _READ_FREE)
def test_value_checks_off_leave_a_reference_without_syncs(name, gen):
    """The benchmark times eager and torch.compile baselines under ``value_checks(False)``:
    then the reference must not read label or mask values to validate them (a host sync,
    and for masks whole extra passes), or its eager figure would be charged for checks
    the Triton rows skip."""
    entry = get(name)
    options = entry.ignoring(entry.variants[0])
    C = 1 if entry.is_binary(options) else 3
    x, t = make_inputs(entry, (2, C, 7, 9), options, torch.float32, gen, 0.2, device=DEVICE)
    x.requires_grad_(True)
    checked, unchecked = _syncs_with_checks_on_and_off(
        lambda: torch.autograd.grad(entry.reference(x, t, **options), x)
    )
    assert checked, "the checks read no value: this test would prove nothing"
    assert not unchecked, unchecked


def test_value_checks_off_leave_the_reference_mask_matrix_without_syncs(gen):
    """The benchmark's 'bincount' provider of the multilabel confusion matrix."""
    logits = torch.randn(2, 3, 9, 11, generator=gen).to(DEVICE)
    masks = (torch.rand(2, 3, 9, 11, generator=gen) < 0.3).to(torch.uint8).to(DEVICE)
    checked, unchecked = _syncs_with_checks_on_and_off(
        lambda: ref.confusion_matrix(logits, masks, 3, 255, mode="multilabel")
    )
    assert checked
    assert not unchecked, unchecked
