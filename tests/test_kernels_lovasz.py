"""Triton Lovasz hinge and Lovasz-softmax against the reference and the worked examples
(hard-losses section 15), in the interpreter on CPU and compiled on a GPU.

The Lovasz losses are piecewise linear in the sorted errors: values are compared for
every dtype, gradients element by element on fp32 inputs redrawn until tie-free (every
pair of sorted errors of a row more than 1e-5 apart, relatively), where the sort order,
and so the gradient, is unique; elsewhere through the loss the gradient implies
(``entry.grad_identity_err``), which holds for every order of ties.
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import (
    CASE_ARGS,
    DEVICE,
    assert_identity,
    assert_matches,
    kernel_cases,
    lovasz_errors,
    run_with_grad,
    separated,
    to_channels_last,
)

from segtriton import kernels as ker
from segtriton.kernels import lovasz as lovasz_mod
from segtriton.registry import get, make_inputs

ENTRIES = [get("lovasz_softmax"), get("lovasz_hinge")]
D = torch.float64


def _tie_free_inputs(entry, shape, options, gen, tries=20):
    """fp32 inputs whose rows of errors have no near ties, or None after ``tries`` draws."""
    for _ in range(tries):
        x, t = make_inputs(entry, shape, options, torch.float32, gen, 0.2, device=DEVICE)
        if entry.name == "lovasz_softmax" and shape[1] == 1:
            return x, t  # p = 1: every error is 0 and the gradient is 0 in any order
        rows = lovasz_errors(entry, x, t, options.get("per_image", False))
        if all(separated(row.sort().values) for row in rows):
            return x, t
    return None


@pytest.mark.parametrize(
    CASE_ARGS, kernel_cases(ENTRIES, ["mean", "sum", "none"], spatial=[(5, 6), (2, 3, 4)])
)
def test_kernel_matches_reference(
    entry, options, C, dtype, spatial, channels_last, reduction, seed, gen
):
    """fp32 inputs without ties: loss and gradient element by element; otherwise (low
    precision, or a row of thousands of fp32 errors where near ties cannot be avoided)
    the loss and the loss the gradient implies."""
    opts = {**options, "reduction": reduction, "ignore_index": 255}
    shape = (2, C, *spatial)
    drawn = _tie_free_inputs(entry, shape, opts, gen) if dtype == torch.float32 else None
    x, t = drawn or make_inputs(entry, shape, opts, dtype, gen, 0.2, device=DEVICE)
    if channels_last:
        x = to_channels_last(x)
    if drawn:
        assert_matches(entry, x, t, opts, dtype, seed)
        return
    assert_identity(entry, x, t, opts, dtype)


def test_channels_last_and_streamed_classes(seed, gen):
    entry = get("lovasz_softmax")
    for C in (4, 300):
        x, t = _tie_free_inputs(entry, (2, C, 3, 4), {"per_image": True}, gen)
        opts = {"per_image": True, "ignore_index": 255}
        x = x.contiguous(memory_format=torch.channels_last)
        assert_matches(entry, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize("per_image", [False, True])
def test_multilabel_hinge_reads_channels_last_in_place(per_image, seed, gen):
    """The multilabel hinge pools each image's channels into one row read in the logits'
    memory order: channels_last logits (with a target in either layout) give the
    reference's loss and gradient, and the gradient comes back through views in the
    logits' layout (a copied input would give it in NCHW order)."""
    entry = get("lovasz_hinge")
    opts = {"mode": "multilabel", "per_image": per_image, "ignore_index": 255}
    x, t = _tie_free_inputs(entry, (2, 4, 5, 6), opts, gen)
    x = x.contiguous(memory_format=torch.channels_last)
    for target in (t, t.contiguous(memory_format=torch.channels_last)):
        assert_matches(entry, x, target, opts, torch.float32, seed)
    z = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(ker.lovasz_hinge_loss(z, t, **opts), z)
    assert grad.is_contiguous(memory_format=torch.channels_last)  # a view: no copy


def test_worked_hinge():
    z = torch.tensor([2.0, -1.0, 0.5, -0.25], device=DEVICE).reshape(1, 1, 4).requires_grad_()
    loss = ker.lovasz_hinge_loss(z, torch.tensor([1.0, 0, 0, 1], device=DEVICE).reshape(1, 1, 4))
    loss.backward()
    assert loss.item() == pytest.approx(1.5 / 3 + 1.25 / 3, abs=1e-6)
    expected = torch.tensor([0, 0, 1 / 3, -1 / 3], device=DEVICE)
    torch.testing.assert_close(z.grad.flatten(), expected, rtol=0, atol=1e-7)


def test_worked_softmax():
    p1 = torch.tensor([0.9, 0.4, 0.2], dtype=D)
    p = torch.stack([1 - p1, p1])
    z = p.log().reshape(1, 2, 3).float().to(DEVICE).requires_grad_()
    loss = ker.lovasz_softmax_loss(z, torch.tensor([[1, 1, 0]], device=DEVICE))
    loss.backward()
    assert loss.item() == pytest.approx((0.4 + 0.3666666666666667) / 2, abs=1e-6)
    g = torch.tensor([[0, -1 / 6], [0.25, -0.25], [-0.25, 1 / 12]], dtype=D).T
    expected = (p * (g - (p * g).sum(0, keepdim=True))).float().to(DEVICE)
    torch.testing.assert_close(z.grad[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_grad_identity_holds_for_every_tie_order(entry, per_image, gen):
    """On logits with many ties, the reference's gradient and the one it gives the pixels
    in reverse order differ, yet both imply the loss; a gradient scaled by 1.01 or moved
    to the neighbouring pixel does not."""
    opts = {"ignore_index": 255, "per_image": per_image}
    C = entry.fit_classes(3, opts)
    x, t = make_inputs(entry, (2, C, 5, 8), opts, torch.float64, gen, 0.2)
    x = x.sign()  # logits of +-1: ties everywhere

    def loss_and_grad(x, t):
        x = x.detach().requires_grad_(True)
        loss = entry.reference(x, t, **opts)
        return loss, torch.autograd.grad(loss, x)[0]

    loss, grad = loss_and_grad(x, t)
    _, flipped = loss_and_grad(x.flip(-1), t.flip(-1))
    assert not torch.equal(grad, flipped.flip(-1))
    for g in (grad, flipped.flip(-1)):
        assert entry.grad_identity_err(x, t, g, loss, opts) < 1e-12
    for wrong in (1.01 * grad, grad.roll(1, -1)):
        assert entry.grad_identity_err(x, t, wrong, loss, opts) > 1e-3


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_ignore_heavy_and_all_ignored(entry, seed, gen):
    opts = {"ignore_index": 255, "per_image": True}
    C = entry.fit_classes(3, opts)
    x, t = make_inputs(entry, (2, C, 6, 7), opts, torch.float32, gen, 0.9, device=DEVICE)
    assert_identity(entry, x, t, opts, torch.float32)
    loss, grad = run_with_grad(entry.kernel, x, torch.full_like(t, 255), opts, seed)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(grad, torch.zeros_like(grad))


def _forward_saving(entry, x, t, opts) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss of a forward with grad, and the tensors it saves for its backward."""
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s) or s, lambda s: s):
        loss = entry.kernel(x, t, **opts)
    return loss, saved


def _saved_index_dtypes(entry, x, t, opts) -> set[torch.dtype]:
    """Dtypes of the integer ``[rows, *]`` tensors the loss saves for its backward."""
    _, saved = _forward_saving(entry, x.detach().requires_grad_(True), t, opts)
    return {s.dtype for s in saved if s.dim() == 2 and not s.is_floating_point()}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_sort_groups_and_index_dtype_change_nothing(entry, seed, gen, monkeypatch):
    """One row per sort call and int64 sort codes (the path of rows of 2^29 entries or more)
    give bitwise the loss and gradient of the default single call with int32 indices."""
    C = entry.fit_classes(19)
    for opts in ({"ignore_index": 255}, {"ignore_index": 255, "per_image": True}):
        x, t = make_inputs(entry, (3, C, 5, 7), opts, torch.float32, gen, 0.2, device=DEVICE)
        default = run_with_grad(entry.kernel, x, t, opts, seed)
        assert torch.int64 not in _saved_index_dtypes(entry, x, t, opts)
        monkeypatch.setattr(lovasz_mod, "SORT_MIN_ENTRIES", 1)
        monkeypatch.setattr(lovasz_mod, "SORT_PIECES", 10**6)  # one row per call
        monkeypatch.setattr(lovasz_mod, "INT32_ENTRIES", 0)
        assert torch.int64 in _saved_index_dtypes(entry, x, t, opts)  # the int64 codes ran
        for got, want in zip(run_with_grad(entry.kernel, x, t, opts, seed), default, strict=True):
            assert torch.equal(got, want), (seed, opts)
        monkeypatch.undo()


def test_sort_groups_are_a_sixteenth_of_the_rows_unless_small(gen, monkeypatch):
    """``sorted_groups`` bounds the sort's outputs and workspace: R // 16 rows a call
    where that holds ``SORT_MIN_ENTRIES`` entries, else as many rows as make that many (the
    last group holds what is left: 4 of 5), and every row comes back sorted (descending,
    stable) as one ``torch.sort`` gives it."""
    keys = torch.randint(0, 5, (64, 24), generator=gen).float().to(DEVICE)  # ties: stable
    want = torch.sort(keys, dim=1, descending=True, stable=True)
    for min_entries, rows in ((24, 4), (24 * 5, 5), (24 * 8, 8), (24 * 100, 64)):
        monkeypatch.setattr(lovasz_mod, "SORT_MIN_ENTRIES", min_entries)
        starts = []
        for r0, values, indices in lovasz_mod.sorted_groups(keys):
            starts.append(r0)
            assert torch.equal(values, want.values[r0 : r0 + rows])
            assert torch.equal(indices, want.indices[r0 : r0 + rows])
        assert starts == list(range(0, 64, rows)), min_entries


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_saved_for_backward_is_small(entry, gen):
    """Between the passes the loss keeps beyond its inputs one int32 index per logit (and
    the hinge one fp32 key): the errors and sort outputs of the forward are freed."""
    C = entry.fit_classes(5)
    x, t = make_inputs(entry, (2, C, 9, 11), {}, torch.float32, gen, 0.2, device=DEVICE)
    x.requires_grad_()
    loss, saved = _forward_saving(entry, x, t, {})
    inputs = {x.data_ptr(), t.data_ptr()}
    extra = sum(s.numel() * s.element_size() for s in saved if s.data_ptr() not in inputs)
    per_logit = 8 if entry.name == "lovasz_hinge" else 4
    assert extra <= per_logit * x.numel() + 64 * C * 2, (extra, x.numel())
    assert any(s.dtype == torch.int32 and s.numel() == x.numel() for s in saved)
    loss.backward()


def test_bad_targets_give_nan_or_a_clear_error(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE)
    y[1, 2, 3] = 7
    assert torch.isnan(ker.lovasz_softmax_loss(x, y))
    with pytest.raises(ValueError, match=r"label 7 outside \[0, 3\)"):
        ker.lovasz_softmax_loss(x, y, validate=True)
    m = torch.rand(2, 1, 4, 5, generator=gen).to(DEVICE)  # soft: not allowed
    assert torch.isnan(ker.lovasz_hinge_loss(x[:, :1], m))
    with pytest.raises(ValueError, match="hard"):
        ker.lovasz_hinge_loss(x[:, :1], m, validate=True)


def test_torch_compile_fullgraph(seed, gen):
    entry = get("lovasz_softmax")
    x, y = _tie_free_inputs(entry, (2, 5, 6, 7), {"per_image": True}, gen)
    opts = {
        "per_image": True,
        "ignore_index": 255,
        "classes": [0, 3],
        "weight": [2.0, 1, 1, 0.5, 1],
    }
    step = torch.compile(lambda x, y: ker.lovasz_softmax_loss(x, y, **opts), fullgraph=True)
    assert_matches(entry, x, y, opts, torch.float32, seed, kernel=lambda x, y, **_: step(x, y))
