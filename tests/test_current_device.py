"""Triton launches on the current CUDA device, not on its arguments' device: a loss on
``cuda:1`` while ``cuda:0`` is current (a model moved with ``.to("cuda:1")`` and no
``torch.cuda.set_device``) fails with "Pointer argument cannot be accessed from Triton"
unless the entry makes the inputs' device current. The first two tests check that
routing on any machine, with fake tensors on ``cuda:1`` and the device switch recorded;
the third runs the kernels on a second GPU and needs a machine with two (none of this
project's machines has had two, so it has not run yet)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from kernel_checks import KERNELS, light_case
from torch._subclasses.fake_tensor import FakeTensorMode

from segtriton import kernels
from segtriton.kernels import boundary, metrics


@pytest.fixture
def switches(monkeypatch) -> list[torch.device]:
    """The devices made current by ``torch.cuda.device``, with ``cuda:0`` current before
    (``torch.cuda.current_device`` follows the switches)."""
    seen: list[torch.device] = []
    current = [0]

    @contextlib.contextmanager
    def switch(device):
        device = torch.device(device)
        seen.append(device)
        before, current[0] = current[0], device.index
        yield
        current[0] = before

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "device", switch)
    return seen


def _calls(entry, gen):
    """The entry's kernel with inputs from ``gen``, as a function of their device."""
    options, x, t = light_case(entry, (2, 3, 9, 11), gen, device="cpu")
    return lambda mode, device: entry.kernel(
        mode.from_tensor(x).to(device), mode.from_tensor(t).to(device), **options
    )


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_entries_make_the_inputs_device_current(entry, switches, gen):
    call = _calls(entry, gen)
    with FakeTensorMode() as mode:
        assert call(mode, "cuda:0").device == torch.device("cuda:0")
        assert switches == []  # the current device already: no switch, no cost
        assert call(mode, "cuda:1").device == torch.device("cuda:1")
    assert switches and set(switches) == {torch.device("cuda:1")}


def test_metrics_and_transform_launch_on_the_inputs_device(switches, monkeypatch):
    """The functions that launch the metric and transform kernels (stand-ins here: the
    fake tensors have no data) run with ``cuda:1`` current."""
    launched = []

    def matrix(preds, target, num_classes, *args):
        launched.append(torch.cuda.current_device())
        cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=target.device)
        return cm, torch.zeros((), dtype=torch.int64, device=target.device)

    def transform(src, shape, *args):
        launched.append(torch.cuda.current_device())
        return torch.zeros(shape, device=src.device)

    monkeypatch.setattr(metrics, "_matrix", matrix)
    monkeypatch.setattr(boundary, "_transform", transform)
    with FakeTensorMode() as mode:
        labels = mode.from_tensor(torch.zeros(2, 5, 6, dtype=torch.long)).to("cuda:1")
        kernels.confusion_matrix(labels, labels, 3, validate=False)
        kernels.StreamingMetrics(3).update(labels, labels)
        kernels.squared_edt(labels == 0)
    assert launched == [1, 1, 1] and set(switches) == {torch.device("cuda:1")}


def test_distance_maps_make_the_targets_device_current(switches):
    with FakeTensorMode() as mode:
        labels = mode.from_tensor(torch.zeros(2, 5, 6, dtype=torch.long)).to("cuda:1")
        for fn in (kernels.signed_distance_map, kernels.distance_field):
            assert fn(labels, 3).device == torch.device("cuda:1")
    assert switches == [torch.device("cuda:1")] * 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_kernels_run_on_a_second_gpu(entry, gen):
    options, x, t = light_case(entry, (2, 3, 9, 11), gen, device="cpu")
    torch.cuda.set_device(0)
    results = []
    for current in (0, 1):  # cuda:0 current, then cuda:1 itself
        with torch.cuda.device(current):
            xi = x.to("cuda:1").requires_grad_(True)
            loss = entry.kernel(xi, t.to("cuda:1"), **options)
            (grad,) = torch.autograd.grad(loss, xi)
        results.append((loss, grad))
    (loss, grad), (want, want_grad) = results
    assert loss.device == grad.device == torch.device("cuda:1")
    torch.testing.assert_close(loss, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
