"""Infinite and NaN logits. A class masked out with -inf logits (a common way to leave out classes
an image cannot hold): every softmax loss on integer labels matches the reference, value
and gradient. The CE kernel once returned NaN there: it multiplied the label-smoothing
term, infinite for a -inf logit, by a smoothing of 0; and the walks over class rows once
did, where the first class was masked (their running max started at -inf). A +inf
logit makes the softmax NaN: the loss must be NaN as the reference's (and torch's) is;
the CE kernel once returned a finite loss with a NaN gradient when the +inf was the true
class's. (The one-vs-rest
sigmoid focal loss, alone or as the focal term of a compound with ``sigmoid_focal``, is
left out of the -inf case: at a -inf logit its reference gradient is NaN, as
BCE-with-logits is in torch.) For every loss, one NaN, +inf or -inf logit makes the loss
non-finite where the reference's is, and leaves a non-finite gradient entry where the
reference's gradient has one: AMP's GradScaler skips a step only when it finds one; so
does a pixel with -inf at every class. The CE kernel on class probabilities once gave
such pixels a finite gradient (for a +inf logit the softmax's limit) under a NaN loss.
The region losses' option sets that take probabilities (``from_logits=False``) are left
out: there an input outside [0, 1] is bad input (``tests/test_kernels_region.py``)."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import (
    DEVICE,
    KERNELS,
    assert_matches,
    light_case,
    light_options,
    run_with_grad,
)

from segtriton.registry import make_inputs

CASES = [
    (entry, {**options, **entry.light})
    for entry in KERNELS
    if entry.target == "labels" and entry.name != "sigmoid_focal_ovr"
    for options in entry.variants
    if entry.target_kind(options) == "labels" and options.get("from_logits", True)
]


def _classes(entry, options: dict) -> list[int]:
    """Class counts to try: the length of a per-class option, else one tile, and for the
    default options also C = 300 (classes streamed in chunks)."""
    lengths = {len(v) for v in options.values() if isinstance(v, list) and len(v) > 2}
    default = {**entry.variants[0], **entry.light}
    return sorted(lengths) or ([4, 300] if options == default else [4])


FINITE_GRAD = [(e, o) for e, o in CASES if not o.get("sigmoid_focal")]


@pytest.mark.parametrize(
    "entry, options", FINITE_GRAD, ids=[f"{e.name}-{i}" for i, (e, _) in enumerate(FINITE_GRAD)]
)
def test_class_masked_with_minus_inf(entry, options, seed, gen):
    for C in _classes(entry, options):
        x, t = make_inputs(entry, (2, C, 4, 5), options, torch.float32, gen, device=DEVICE)
        x[:, :2] = float("-inf")  # the first two: a class walk starts on a -inf max
        t = torch.where(t < 2, 2, t)  # no pixel holds a masked class
        loss, grad = assert_matches(entry, x, t, options, torch.float32, seed)
        assert not grad.isnan().any()


@pytest.mark.parametrize(
    "entry, options", CASES, ids=[f"{e.name}-{i}" for i, (e, _) in enumerate(CASES)]
)
def test_plus_inf_logit_of_the_true_class_gives_nan(entry, options, gen):
    for C in _classes(entry, options):
        x, t = make_inputs(entry, (2, C, 4, 5), options, torch.float32, gen, device=DEVICE)
        t[0, 0, 0] = C - 1  # at C = 300, in the last chunk of classes
        x[0, C - 1, 0, 0] = float("inf")
        want = entry.reference(x.cpu(), t.cpu(), **options)
        got = entry.kernel(x, t, **options)
        assert want.isnan().any(), "the reference is no longer NaN here: revisit this test"
        assert torch.equal(got.isnan().cpu(), want.isnan())


NON_FINITE = [
    pytest.param(entry, value, spread, C, id=f"{entry.name}-{value}-{spread}-C{C}")
    for entry in KERNELS
    for value, spread in (("nan", "one"), ("inf", "one"), ("-inf", "one"), ("-inf", "all"))
    for C in ((4, 300) if value == "inf" else (4,))
    if C == 4 or entry.fit_shape((2, C, 4, 5), light_options(entry))[1] == C
]


@pytest.mark.parametrize(("entry", "value", "spread", "C"), NON_FINITE)
def test_non_finite_logits_reach_loss_and_gradient(entry, value, spread, C, gen):
    """``value`` at one logit of a pixel, or at all its classes (a pixel whose every
    class is masked out)."""
    options, x, t = light_case(entry, (2, C, 4, 5), gen)
    classes = slice(None) if spread == "all" else x.shape[1] - 1  # at C = 300, the last chunk
    x[1, classes, 2, 3] = float(value)
    if t.dim() < x.dim():  # a counted pixel: at C = 300 a random label can be 255, ignored
        t[1, 2, 3] = 0
    got = x.clone().requires_grad_(True)
    want = x.double().cpu().requires_grad_(True)
    loss = entry.kernel(got, t, **options)
    ref_loss = entry.reference(want, t.cpu(), **options)
    (grad,) = torch.autograd.grad(loss.sum(), got)
    (ref_grad,) = torch.autograd.grad(ref_loss.sum(), want)
    assert torch.equal(loss.isfinite().cpu(), ref_loss.isfinite())
    assert bool(grad.isfinite().all()) == bool(ref_grad.isfinite().all())


IGNORING = [e for e in KERNELS if "ignore_index" in light_options(e)]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("entry", IGNORING, ids=lambda e: e.name)
def test_logits_of_an_ignored_pixel_are_not_read(entry, value, gen):
    """Non-finite logits at an ignored pixel (every entry of it ignored) change neither
    the kernel's loss nor its gradient, which is 0 there. (The references follow torch,
    whose softmax backward turns such a logit into a NaN gradient at its pixel.)"""
    options, x, t = light_case(entry, (2, 4, 4, 5), gen)
    if t.dim() < x.dim():
        t[1, 2, 3] = 255
    else:
        t[1, :, 2, 3] = 255
    poisoned = x.clone()
    poisoned[1, :, 2, 3] = float(value)
    loss, grad = run_with_grad(entry.kernel, x, t, options)
    got_loss, got_grad = run_with_grad(entry.kernel, poisoned, t, options)
    assert torch.equal(got_loss, loss)
    assert torch.equal(got_grad, grad) and not grad[1, :, 2, 3].any()
