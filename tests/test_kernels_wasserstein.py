"""The generalized Wasserstein Dice kernel against the float64 reference: loss and
gradient over class counts (one class tile and streamed chunks), dtypes, layouts, ignored
and bad labels, and the distance matrix's forms and checks. MONAI is compared with the
reference in test_peers.py; the registry's shared suites (determinism, graphs, layouts,
random options, bad input) run it too."""

from __future__ import annotations

import functools

import pytest
import torch
from kernel_checks import (
    CASE_ARGS,
    DEVICE,
    assert_matches,
    kernel_cases,
    run_with_grad,
    to_channels_last,
)

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.registry import get, make_inputs

ENTRY = get("wasserstein_dice")


def _inputs(shape, gen, options=None, dtype=torch.float32, ignore_frac=0.2):
    return make_inputs(ENTRY, shape, options, dtype, gen, ignore_frac=ignore_frac, device=DEVICE)


@pytest.mark.parametrize(
    CASE_ARGS, kernel_cases([ENTRY], ["mean", "sum", "none"], classes=[2, 3, 19, 150])
)
def test_kernel_matches_reference(
    entry, options, C, dtype, spatial, channels_last, reduction, seed, gen
):
    opts = {**options, "reduction": reduction, "ignore_index": 255}
    x, t = _inputs((2, C, *spatial), gen, opts, dtype)
    if channels_last:
        x = to_channels_last(x)
    assert_matches(entry, x, t, opts, dtype, seed)


@pytest.mark.parametrize("mode", ["default", "GDL"])
def test_large_class_count_streams_classes(mode, seed, gen):
    """C = 300 > 256: both passes walk the classes in chunks (online softmax)."""
    opts = {"weighting_mode": mode, "ignore_index": 255, "reduction": "none"}
    x, t = _inputs((2, 300, 3, 5), gen, opts)
    assert_matches(ENTRY, x, t, opts, torch.float32, seed)


def test_all_ignored_image(seed, gen):
    """Image 0 fully ignored: loss 1 - smooth_nr / smooth_dr = 0 and no gradient there;
    image 1 as usual."""
    opts = {"ignore_index": 255, "reduction": "none"}
    x, t = _inputs((2, 5, 4, 6), gen, opts)
    t[0] = 255
    loss, grad = assert_matches(ENTRY, x, t, opts, torch.float32, seed)
    assert loss[0] == 0 and loss[1] > 0
    assert not grad[0].any() and grad[1].abs().sum() > 0


@pytest.mark.parametrize("mode", ["default", "GDL"])
def test_unequal_smooth_terms(mode, seed, gen):
    """``smooth_nr`` and ``smooth_dr`` enter the loss apart: image 0 fully ignored gives
    ``1 - smooth_nr / smooth_dr`` exactly, image 1 matches the reference."""
    opts = {"weighting_mode": mode, "ignore_index": 255, "reduction": "none"}
    opts |= {"smooth_nr": 0.5, "smooth_dr": 2.0}
    x, t = _inputs((2, 4, 3, 5), gen, opts)
    t[0] = 255
    loss, _ = assert_matches(ENTRY, x, t, opts, torch.float32, seed)
    assert loss[0] == 0.75


@pytest.mark.parametrize("C", [3, 300], ids=["one-tile", "chunked"])
def test_bad_label_is_nan_or_a_validation_error(C, gen):
    x, t = _inputs((2, C, 4, 5), gen, ignore_frac=0.0)
    t[1, 2, 3] = C
    loss = ker.generalized_wasserstein_dice_loss(x, t, reduction="none")
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])
    with pytest.raises(ValueError, match=f"label {C} outside"):
        ker.generalized_wasserstein_dice_loss(x, t, validate=True)


def test_distance_matrix_forms_agree(seed, gen):
    """A nested list, a NumPy array, a tensor and the same matrix scaled by 4 (both
    losses divide it by its largest entry) give one loss and gradient."""
    x, t = _inputs((2, 4, 5, 3), gen, ignore_frac=0.0)
    dist = torch.rand(4, 4, generator=gen).to(DEVICE)
    forms = [dist.tolist(), dist.cpu().numpy(), dist, 4 * dist]
    results = [run_with_grad(ker.generalized_wasserstein_dice_loss, x, t, {"dist_matrix": d})
               for d in forms]  # fmt: skip
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-9)
    assert_matches(ENTRY, x, t, {"dist_matrix": dist.tolist()}, torch.float32, seed)


@pytest.mark.parametrize("form", ["list", "array", "tensor"])
@pytest.mark.parametrize("fn", [ker, ref], ids=["kernel", "reference"])
def test_every_distance_matrix_form_compiles_whole(form, fn, gen):
    """``torch.compile(fullgraph=True)`` takes the matrix as a nested list, a NumPy array
    (which Dynamo traces as a tensor input) or a tensor, with eager's loss and gradient."""
    x, t = _inputs((2, 3, 5, 6), gen)
    dist = torch.rand(3, 3, generator=gen) + 0.1
    matrix = {"list": dist.tolist(), "array": dist.numpy(), "tensor": dist.to(DEVICE)}[form]
    options = {"dist_matrix": matrix, "ignore_index": 255, "reduction": "none"}
    loss = functools.partial(fn.generalized_wasserstein_dice_loss, **options)
    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    got, want = run_with_grad(compiled, x, t, {}), run_with_grad(loss, x, t, {})
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_unit_distances_give_the_closed_form(gen):
    """dist_matrix None puts classes 1 apart, so ``w_i = 1 - p_{y_i}``: with the default
    weights ``TP = sum_{y_i != 0} p_{y_i}`` and ``D = 2 TP + sum_i (1 - p_{y_i})``."""
    x, t = _inputs((2, 4, 6, 5), gen, ignore_frac=0.0)
    p = torch.softmax(x.double(), 1).gather(1, t.unsqueeze(1)).squeeze(1).flatten(1)
    tp = (p * (t.flatten(1) != 0)).sum(1)
    want = 1 - (2 * tp + 1e-5) / (2 * tp + (1 - p).sum(1) + 1e-5)
    got = ker.generalized_wasserstein_dice_loss(x, t, reduction="none")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("dist", "error", "match"),
    [
        ([[0, 1], [1, 0]], ValueError, r"\[3, 3\]"),
        ([[0, 1, 1], [1, 0, 1], [1, 1, -1]], ValueError, "non-negative"),
        ([[0.0] * 3] * 3, ValueError, "positive entry"),
        ([[0, 1, float("nan")], [1, 0, 1], [1, 1, 0]], ValueError, "finite"),
        ([[0, 1], [1, 0, 1], [1, 1, 0]], TypeError, "matrix of numbers"),
        ("far", TypeError, "matrix of numbers"),
        (torch.ones(3, 3).fill_diagonal_(0) * -1, ValueError, "non-negative"),
        (torch.zeros(3, 3), ValueError, "positive entry"),
        (torch.ones(3, 3).fill_diagonal_(float("inf")), ValueError, "finite"),
    ],
)
def test_bad_distance_matrix_is_refused(dist, error, match, gen):
    x, t = _inputs((1, 3, 4, 4), gen, ignore_frac=0.0)
    with pytest.raises(error, match=match):
        ref.generalized_wasserstein_dice_loss(x.double(), t, dist)
    with pytest.raises(error, match=match):
        ker.generalized_wasserstein_dice_loss(x, t, dist, validate=True)


def test_distance_matrix_requiring_grad_and_one_class_are_refused(gen):
    x, t = _inputs((1, 3, 4, 4), gen, ignore_frac=0.0)
    dist = torch.ones(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="dist_matrix requires grad"):
        ker.generalized_wasserstein_dice_loss(x, t, dist)
    x1, t1 = x[:, :1], torch.zeros_like(t)
    for fn in (ref.generalized_wasserstein_dice_loss, ker.generalized_wasserstein_dice_loss):
        with pytest.raises(ValueError, match="C >= 2"):
            fn(x1, t1)


@pytest.mark.parametrize("mode", ["default", "GDL"])
def test_small_loss_keeps_its_digits(mode, gen):
    """Confident right logits: the loss is near 2e-6. Formed as ``1 - r`` from fp32 sums
    it came out 2% off; the finalize forms ``(D - 2 TP + ...) / (D + ...)`` directly."""
    t = torch.randint(0, 4, (2, 9, 11), generator=gen)
    x = 14.0 * torch.nn.functional.one_hot(t, 4).movedim(-1, 1).float()
    x += 0.3 * torch.randn(x.shape, generator=gen)
    x, t = x.to(DEVICE), t.to(DEVICE)
    opts = {"weighting_mode": mode, "reduction": "none"}
    want = ref.generalized_wasserstein_dice_loss(x.double(), t, **opts)
    assert float(want.max()) < 1e-5
    got = ker.generalized_wasserstein_dice_loss(x, t, **opts)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


def test_loss_near_one_keeps_its_gradient(seed, gen):
    """'default' mode gives the background no credit, so an image labelled 0 throughout
    has loss ``1 - smooth_nr / (W + smooth_dr)``, within float32 rounding of 1, and a
    gradient ``~ smooth_nr / W^2``, held to its own scale beside image 1's. Taken as
    ``1 - loss`` in fp32 that gradient came out 8-14% off (0 where the loss rounds to 1);
    the finalize forms it from ``2 TP`` directly."""
    opts = {"reduction": "none"}
    x, t = _inputs((2, 4, 9, 11), gen, opts, ignore_frac=0.0)
    t[0] = 0
    _, grad = assert_matches(ENTRY, x, t, opts, torch.float32, seed)
    assert grad[0].abs().max() > 0
