"""Per-class options given as Python lists: checked on the host, copied to the device once.

A list (class weights, alpha, pos_weight, Lovasz ``classes``) becomes a cached device
constant, so repeated calls make no host-to-device copy and a CUDA graph can capture the
loss after a warm-up call (``test_kernels_graphs.py`` replays such variants on the GPU;
the capture path is checked here on the CPU with the capture state patched)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_checks import DEVICE
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from segtriton import kernels, reference
from segtriton.reference import _common
from segtriton.reference._common import check_class_vector, device_constant


def test_device_constant_is_reused_per_value_dtype_and_device():
    a = device_constant([0.5, 1.0, 2.0], torch.float32, torch.device(DEVICE))
    assert a is device_constant((0.5, 1.0, 2.0), torch.float32, torch.device(DEVICE))
    assert a.device.type == DEVICE and a.tolist() == [0.5, 1.0, 2.0]
    assert a is not device_constant([0.5, 1.0, 3.0], torch.float32, torch.device(DEVICE))
    b = device_constant([0.5, 1.0, 2.0], torch.float64, torch.device(DEVICE))
    assert b is not a and b.dtype == torch.float64


def test_device_constant_keeps_the_most_recent():
    first = device_constant([-1.0], torch.float32, torch.device("cpu"))
    for i in range(_common._CONSTANTS_KEPT):
        device_constant([float(i)], torch.float32, torch.device("cpu"))
    assert len(_common._CONSTANTS) <= _common._CONSTANTS_KEPT
    assert device_constant([-1.0], torch.float32, torch.device("cpu")) is not first


def test_device_constant_under_a_fake_mode_is_not_kept():
    """A call under ``FakeTensorMode`` (a memory estimate, a trace) gets a fake tensor,
    which later real calls must not be handed, and is not handed a real one."""
    cpu = torch.device("cpu")
    real = device_constant([6.5, 2.25], torch.float32, cpu)
    with FakeTensorMode():
        fake = device_constant([6.5, 2.25], torch.float32, cpu)
        assert isinstance(fake, FakeTensor) and device_constant([9.75], torch.float32, cpu)
    assert device_constant([6.5, 2.25], torch.float32, cpu) is real
    assert type(device_constant([9.75], torch.float32, cpu)) is torch.Tensor


def test_device_constant_under_capture_reuses_the_warm_up_copy(monkeypatch):
    """A CUDA graph capture may not copy from the host: it gets the copy a warm-up call
    made, kept after the cache has moved on (the graph reads it at every replay), or a
    RuntimeError that names the fix."""
    cpu = torch.device("cpu")
    warm = device_constant([7.25, 8.5], torch.float32, cpu)
    monkeypatch.setattr(_common, "_capturing", lambda device: True)
    assert device_constant([7.25, 8.5], torch.float32, cpu) is warm
    with pytest.raises(RuntimeError, match="before CUDA graph capture"):
        device_constant([-1234.5], torch.float32, cpu)  # never copied
    monkeypatch.setattr(_common, "_capturing", lambda device: False)
    for i in range(_common._CONSTANTS_KEPT + 1):
        device_constant([i + 0.5], torch.float32, cpu)
    assert device_constant([7.25, 8.5], torch.float32, cpu) is warm


def test_lists_and_tensors_give_the_same_vector():
    like = torch.empty(0, device=DEVICE)
    listed = check_class_vector("weight", [1, 2.5, 0], 3, like, check_values=False)
    tensor = check_class_vector("weight", torch.tensor([1, 2.5, 0]), 3, like, False)
    assert torch.equal(listed, tensor) and listed.dtype == torch.float32


@pytest.mark.parametrize("bad", [[1.0, -0.5, 1.0], [1.0, float("nan"), 1.0]])
def test_bad_list_values_are_rejected_without_validate(bad):
    x = torch.randn(2, 3, 5, 7, device=DEVICE)
    y = torch.randint(0, 3, (2, 5, 7), device=DEVICE)
    with pytest.raises(ValueError, match="weight must be finite and non-negative"):
        kernels.cross_entropy(x, y, weight=bad)
    with pytest.raises(ValueError, match="alpha must be finite and non-negative"):
        kernels.softmax_focal_loss(x, y, alpha=bad)


def test_sigmoid_focal_alpha_per_class_must_lie_in_unit_range():
    """A per-class alpha weighs positives by ``a`` and negatives by ``1 - a``: an entry above
    1 is refused (a list always, a tensor by the reference and with ``validate``), and a
    tensor that requires grad by the kernel."""
    x = torch.randn(2, 3, 5, 7, device=DEVICE)
    t = (torch.rand(2, 3, 5, 7) > 0.5).float().to(DEVICE)
    bad = [0.2, 1.5, 0.3]
    for fn in (reference.sigmoid_focal_loss, kernels.sigmoid_focal_loss):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
            fn(x, t, mode="multilabel", alpha=bad)
    tensor = torch.tensor(bad, device=DEVICE)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        reference.sigmoid_focal_loss(x, t, mode="multilabel", alpha=tensor)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        kernels.sigmoid_focal_loss(x, t, mode="multilabel", alpha=tensor, validate=True)
    with pytest.raises(ValueError, match="alpha requires grad"):
        kernels.sigmoid_focal_loss(x, t, mode="multilabel", alpha=tensor.requires_grad_())


def test_list_length_is_checked():
    x = torch.randn(2, 3, 5, 7, device=DEVICE)
    y = torch.randint(0, 3, (2, 5, 7), device=DEVICE)
    with pytest.raises(ValueError, match=r"weight must have one entry per class \(C=3\)"):
        kernels.cross_entropy(x, y, weight=[1.0, 2.0])


@pytest.mark.parametrize("lib", ["reference", "kernels"])
def test_per_class_options_broadcast_as_in_torch(lib, gen):
    """One value for every class (a number, a one-element list or tensor) and the
    ``[C, 1, 1]`` shape that broadcasts against ``[B, C, H, W]`` give torch's BCE."""
    fn = (reference if lib == "reference" else kernels).binary_cross_entropy_with_logits
    x = torch.randn(2, 3, 5, 7, generator=gen).to(DEVICE)
    t = (torch.rand(2, 3, 5, 7, generator=gen) > 0.5).float().to(DEVICE)
    per_class = torch.tensor([0.5, 2.0, 3.0], device=DEVICE).view(3, 1, 1)
    for given, torch_form in (
        (2.0, torch.tensor(2.0)),
        ([2.0], torch.tensor([2.0])),
        (torch.tensor([2.0], device=DEVICE), torch.tensor([2.0])),
        (per_class, per_class.cpu()),
    ):
        want = F.binary_cross_entropy_with_logits(
            x.cpu(), t.cpu(), weight=torch_form, pos_weight=torch_form
        )
        got = fn(x, t, weight=given, pos_weight=given)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"or shape \(C, 1, ..., 1\); got shape \(1, 3\)"):
        fn(x, t, pos_weight=per_class.view(1, 3))


def test_lovasz_class_list_selects_those_classes(gen):
    x = torch.randn(2, 3, 5, 7, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 5, 7), generator=gen).to(DEVICE)
    picked = kernels.lovasz_softmax_loss(x, y, classes=[2, 0], per_image=True, reduction="none")
    masked = kernels.lovasz_softmax_loss(
        x, y, classes="all", weight=[1.0, 0.0, 1.0], per_image=True, reduction="none"
    )
    torch.testing.assert_close(picked, masked)
