"""Soft clDice: the Triton skeletons and loss against the float64 reference (values and
gradients), worked skeletons, and the topology the loss is for; in the interpreter on CPU
and compiled on a GPU."""

from __future__ import annotations

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
from segtriton.kernels import cldice as ker_cldice
from segtriton.registry import get, make_inputs

CLDICE = get("cldice")
SPATIAL = [(13, 17), (4, 6, 7), (1, 9)]


@pytest.mark.parametrize(
    CASE_ARGS,
    kernel_cases([CLDICE], ["mean", "sum", "none"], spatial=SPATIAL, classes=[1, 2, 3, 19]),
)
def test_cldice_matches_reference(
    entry, options, C, dtype, spatial, channels_last, reduction, seed, gen
):
    opts = {**options, "reduction": reduction, "ignore_index": 255}
    x, t = make_inputs(entry, (2, C, *spatial), opts, dtype, gen, ignore_frac=0.2, device=DEVICE)
    if channels_last:
        x = to_channels_last(x)
    assert_matches(entry, x, t, opts, dtype, seed)


@pytest.mark.parametrize("iterations", [0, 2, 6])
@pytest.mark.parametrize("ignore_frac", [0.9, 1.0])
def test_deep_skeletons_and_ignored_batches(iterations, ignore_frac, seed, gen):
    """More erosions than the image is thick, and batches (almost) all ignored: an
    all-ignored image has empty skeletons, loss ``smooth / (2 + smooth)`` and no
    gradient, as in the reference."""
    opts = {"iterations": iterations, "ignore_index": 255, "reduction": "none"}
    x, t = make_inputs(CLDICE, (2, 3, 9, 10), opts, torch.float32, gen, ignore_frac, device=DEVICE)
    loss, grad = assert_matches(CLDICE, x, t, opts, torch.float32, seed)
    if ignore_frac == 1.0:
        torch.testing.assert_close(loss, torch.full_like(loss, 1e-4 / (2 + 1e-4)))
        assert grad.abs().max() == 0


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_one_channel_keeps_its_background(mode, seed, gen):
    """``include_background=False`` is ignored for one sigmoid channel (as MONAI): the loss
    and gradient are the reference's and those of ``include_background=True``. (One
    softmax channel is p = 1 everywhere, a loss of 0 with or without it.)"""
    opts = {"mode": mode, "include_background": False, "reduction": "none"}
    x, t = make_inputs(CLDICE, (2, 1, 9, 10), opts, torch.float32, gen, device=DEVICE)
    loss, grad = assert_matches(CLDICE, x, t, opts, torch.float32, seed)
    kept = run_with_grad(ker.cldice_loss, x, t, {**opts, "include_background": True}, seed)
    assert torch.equal(loss, kept[0]) and torch.equal(grad, kept[1])


@pytest.mark.parametrize("soft", [False, True], ids=["one-hot", "soft"])
def test_class_probability_targets(soft, seed, gen):
    x, labels = make_inputs(CLDICE, (2, 3, 8, 9), {}, torch.float32, gen, device=DEVICE)
    if soft:
        t = torch.softmax(3 * torch.randn(x.shape, generator=gen, dtype=torch.float64), 1)
    else:
        t = torch.nn.functional.one_hot(labels.cpu(), 3).movedim(-1, 1).double()
    assert_matches(CLDICE, x, t.to(DEVICE), {"scope": "batch"}, torch.float32, seed)


@pytest.mark.parametrize("spatial", [(9, 11), (3, 5, 6)], ids=["2d", "3d"])
def test_ties_go_to_the_first_neighbour(spatial, seed, gen):
    """Logits drawn from {-2, .., 2} give five probabilities (sigmoid: a softmax would make
    mathematically equal ones that round apart), so erosions and dilations tie everywhere,
    in float32 as in float64: the gradient of each tied min or max goes to the first
    neighbour in code order, the reference's rule."""
    shape = (2, 3, *spatial)
    x = torch.randint(-2, 3, shape, generator=gen).float().to(DEVICE)
    t = torch.randint(0, 2, shape, generator=gen).float().to(DEVICE)
    opts = {"mode": "multilabel", "iterations": 2, "reduction": "none"}
    loss, grad = assert_matches(CLDICE, x, t, opts, torch.float32, seed)
    assert grad.abs().max() > 0


def _bar() -> torch.Tensor:
    """A 3-pixel-thick horizontal bar across an 11 x 20 image, ``[1, 1, 11, 20]``."""
    mask = torch.zeros(1, 1, 11, 20, dtype=torch.float64)
    mask[..., 4:7, :] = 1
    return mask


def test_the_skeleton_of_a_bar_is_its_centre_line():
    line = torch.zeros(11, 20, dtype=torch.float64)
    line[5] = 1
    for mask in (_bar(), _bar().unsqueeze(2).expand(1, 1, 3, 11, 20)):  # 2-D; 3 planes of it
        want = line.expand(mask.shape)
        for iterations in (1, 3):
            assert torch.equal(ref.soft_skeleton(mask, iterations), want)
            maps = ker_cldice._level_maps(mask.shape, iterations, False, DEVICE)
            maps[0] = mask.reshape(-1).to(maps)
            got = ker_cldice._skeleton(maps, mask.shape, iterations, False)[0]
            assert torch.equal(got.cpu().double(), want)


def test_a_break_costs_more_than_an_equal_notch():
    """The loss's reason to exist: cutting the bar (3 pixels across it) and notching its
    edge (3 pixels along it) cost the same Dice, but only the cut breaks the centre line.
    A perfect prediction costs ``smooth / (2 + smooth)``."""
    target = _bar()
    cut, notch = target.clone(), target.clone()
    cut[..., 4:7, 9] = 0
    notch[..., 4, [2, 9, 15]] = 0
    losses = {}
    for name, mask in (("cut", cut), ("notch", notch), ("same", target)):
        logits = ((2 * mask - 1) * 40).float().to(DEVICE)
        losses[name] = float(ker.cldice_loss(logits, target.to(DEVICE), mode="binary"))
        dice = ref.dice_loss(logits.double(), target.to(DEVICE), mode="binary")
        assert name == "same" or abs(float(dice) - 3 / 117) < 1e-9
    assert losses["same"] == pytest.approx(1e-4 / 2.0001, rel=1e-5)
    assert losses["notch"] == pytest.approx(losses["same"], rel=1e-5)
    assert losses["cut"] > 0.02


def test_bad_options_are_refused():
    x = torch.randn(2, 3, 5, 6)
    t = torch.randint(0, 3, (2, 5, 6))
    for fn in (ref.cldice_loss, ker.cldice_loss):
        with pytest.raises(ValueError, match="2-D or 3-D"):
            fn(x[..., 0], t[..., 0])
        with pytest.raises(ValueError, match="iterations must be >= 0"):
            fn(x, t, iterations=-1)
        with pytest.raises(TypeError, match="iterations must be an int"):
            fn(x, t, iterations=True)
        for name in ("smooth_dr", "smooth"):
            with pytest.raises(ValueError, match=f"{name} must be > 0"):
                fn(x, t, **{name: 0.0})
        with pytest.raises(ValueError, match="scope"):
            fn(x, t, scope="class")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cldice_torch_compile_fullgraph(reduction, seed, gen):
    opts = {"ignore_index": 255, "include_background": False, "reduction": reduction}
    x, t = make_inputs(CLDICE, (2, 3, 5, 6), opts, torch.float32, gen, 0.2, device=DEVICE)
    step = torch.compile(lambda x, t: ker.cldice_loss(x, t, **opts), fullgraph=True)
    assert_matches(CLDICE, x, t, opts, torch.float32, seed, kernel=lambda x, t, **_: step(x, t))


def test_bad_values_make_nan_without_validate(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE)
    y[1, 2, 3] = 7
    assert torch.isnan(ker.cldice_loss(x, y))
    with pytest.raises(ValueError, match="label 7 outside"):
        ker.cldice_loss(x, y, validate=True)
    m = (torch.rand(2, 3, 4, 5, generator=gen) < 0.5).float().to(DEVICE)
    m[0, 1, 0, 0] = 2.0
    assert torch.isnan(ker.cldice_loss(x, m, mode="multilabel", reduction="sum"))
    assert torch.isnan(ker.cldice_loss(x, m.masked_fill(m == 2, torch.nan), mode="multilabel"))
    probs = torch.softmax(x, 1)
    probs[0, 0, 0, 0] = 1.5
    assert torch.isnan(ker.cldice_loss(x, probs))
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        ker.cldice_loss(x, probs, validate=True)
