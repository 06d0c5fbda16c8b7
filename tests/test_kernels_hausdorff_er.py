"""The erosion Hausdorff loss: the Triton erosions, loss and gradient against the float64
reference, a worked example, ties at a map's max and min, all-ignored batches, and the
per-level reductions over many partial rows; in the interpreter on CPU and compiled on a
GPU."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import CASE_ARGS, DEVICE, assert_matches, kernel_cases, to_channels_last

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.kernels import hausdorff_er as her_mod
from segtriton.registry import get, make_inputs

HDER = get("hausdorff_er")
SPATIAL = [(9, 11), (4, 5, 6), (1, 9)]


@pytest.mark.parametrize(
    CASE_ARGS,
    kernel_cases([HDER], ["mean", "sum", "none"], spatial=SPATIAL, classes=[1, 2, 3, 19]),
)
def test_hausdorff_er_matches_reference(
    entry, options, C, dtype, spatial, channels_last, reduction, seed, gen
):
    opts = {**options, "reduction": reduction, "ignore_index": 255}
    x, t = make_inputs(entry, (2, C, *spatial), opts, dtype, gen, ignore_frac=0.2, device=DEVICE)
    if channels_last:
        x = to_channels_last(x)
    assert_matches(entry, x, t, opts, dtype, seed)


@pytest.mark.parametrize("v", range(len(HDER.variants)))
def test_levels_reduce_many_partial_rows(v, seed, gen, monkeypatch):
    """Each level's extrema and tie coefficients reduce a unit's partial rows (one per
    pixel block of 2048, 1024 in the backward) up to 128 at a time, looping only past 2^18
    pixels per map; with blocks of 16 pixels and 2 rows at a time, a 9 x 11 map has 7
    rows, taken in four steps, the last one partial."""
    monkeypatch.setattr(her_mod, "FORWARD_BLOCK", 16)
    monkeypatch.setattr(her_mod, "BACKWARD_BLOCK", 16)
    monkeypatch.setattr(her_mod, "UNIT_ROWS", 2)
    opts = {**HDER.variants[v], **HDER.light, "ignore_index": 255}
    C = HDER.fit_classes(3, opts)
    x, t = make_inputs(HDER, (2, C, 9, 11), opts, torch.float32, gen, 0.2, device=DEVICE)
    assert_matches(HDER, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_forward_alone_equals_the_kept_forward(reduction, gen):
    """Without a gradient wanted, the levels take turns in two rows instead of one row
    each. A missed object (a 36 x 40 square of errors near 1 at a random place in 53 x 61
    maps, so that levels stay nonzero across the boundary of the maps' two blocks of 2048
    pixels) with five erosions: each level still reads the whole level before it, and the
    loss is bitwise the one the gradient path computes."""
    t = torch.zeros(2, 1, 53, 61)
    for b in range(2):
        r0, c0 = (int(v) for v in torch.randint(3, 12, (2,), generator=gen))
        t[b, 0, r0 : r0 + 36, c0 : c0 + 40] = 1.0
    x = -4.0 + 0.5 * torch.randn(t.shape, generator=gen)
    x, t = x.to(DEVICE), t.to(DEVICE)
    opts = {"mode": "binary", "iterations": 5, "reduction": reduction}
    with torch.no_grad():
        alone = ker.hausdorff_er_loss(x, t, **opts)
    kept = ker.hausdorff_er_loss(x.requires_grad_(True), t, **opts)
    assert torch.equal(alone, kept.detach())


def test_worked_example_row_of_five():
    """``tests/test_reference_hausdorff_er.py``'s row: errors of 1 everywhere give ``L =
    [0, 1, 5, 1, 0]``."""
    t = torch.ones(1, 1, 1, 5, device=DEVICE)
    opts = {"mode": "binary", "iterations": 3, "reduction": "none"}
    loss = ker.hausdorff_er_loss(torch.full_like(t, -30.0), t, **opts)
    want = torch.tensor([0.0, 1.0, 5.0, 1.0, 0.0], device=DEVICE).view(1, 1, 1, 5)
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-5)


def test_ties_at_the_max_split_the_gradient(seed, gen):
    """Logits of 0 and four classes make every error 0.75 or 0.25, so every level-1 sum is
    exact and equal neighbourhoods tie exactly, in float32 as in float64: the pixels whose
    cross is all one class share each map's max, and the gradient through the max is split
    evenly among them (``torch.amax``'s rule, the reference's). 'none' with a random
    grad_output: under one weight for every entry, the max's terms cancel the pixels' own
    (``b`` does not change when every ``e`` is scaled), leaving rounding alone."""
    labels = torch.zeros(2, 9, 11, dtype=torch.int64)
    labels[:, 2:7, 3:9] = 1
    labels[1, 4:, :5] = 2
    labels[0, 6:, 6:] = 3
    x = torch.zeros(2, 4, 9, 11, device=DEVICE)
    opts = {"iterations": 1, "reduction": "none"}
    loss, grad = assert_matches(HDER, x, labels.to(DEVICE), opts, torch.float32, seed)
    assert loss.sum() > 0 and grad.abs().max() > 0


def _equal_errors(*spatial: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary logits of -3 against a target of 1 everywhere: ``b_0 = (p - 1)^2 = 0.907``
    at every pixel."""
    t = torch.ones(2, 1, *spatial, device=DEVICE)
    return torch.full_like(t, -3.0), t


def test_ties_at_a_positive_min_split_the_gradient(seed, gen):
    """Every error the same and large (logits of -3, target 1: ``b_0 = 0.907``), so level 1
    is ``b_0 - 1/2`` inside, ``4 b_0 / 5 - 1/2`` on the edges and ``3 b_0 / 5 - 1/2 = 0.044``
    at the four corners, exactly tied in float32 as in float64. The min is above 0, so
    the erosion lets the gradient of the min's term through to the corners, split evenly
    among them."""
    x, t = _equal_errors(6, 7)
    opts = {"mode": "binary", "iterations": 2, "reduction": "none"}
    loss, grad = assert_matches(HDER, x, t, opts, torch.float32, seed)
    assert loss.sum() > 0 and grad[..., 0, 0].abs().min() > 0


@pytest.mark.parametrize("spatial", [(2, 2), (2, 2, 2)], ids=["2d", "3d"])
def test_a_level_without_spread_is_kept_unscaled(spatial, seed, gen):
    """Every pixel of a 2 x 2 (2 x 2 x 2) image is a corner, so equal errors give equal
    level-1 values, ``3 b_0 / 5 - 1/2`` (``4 b_0 / 7 - 1/2``), above 0 for ``b_0 = 0.907``:
    the map's max equals its min, and the level is kept as it is instead of scaled (kornia's
    rule), in the forward and the backward."""
    x, t = _equal_errors(*spatial)
    opts = {"mode": "binary", "iterations": 3, "reduction": "none"}
    loss, grad = assert_matches(HDER, x, t, opts, torch.float32, seed)
    assert loss.sum() > 0 and grad.abs().min() > 0


@pytest.mark.parametrize("ignore_frac", [0.9, 1.0])
def test_ignored_batches(ignore_frac, seed, gen):
    """Batches (almost) all ignored: with every pixel ignored, 'sum' is 0 with no gradient
    and 'mean' is 0 / 0 = NaN, as in the reference."""
    for reduction in ("sum", "mean"):
        opts = {"ignore_index": 255, "reduction": reduction, "iterations": 3}
        x, t = make_inputs(HDER, (2, 3, 8, 9), opts, torch.float32, gen, ignore_frac, device=DEVICE)
        loss, grad = assert_matches(HDER, x, t, opts, torch.float32, seed)
        if ignore_frac == 1.0:
            assert loss.isnan() if reduction == "mean" else loss == 0
            if reduction == "sum":
                assert grad.abs().max() == 0


def test_bad_options_are_refused():
    x = torch.randn(2, 3, 5, 6)
    t = torch.randint(0, 3, (2, 5, 6))
    for fn in (ref.hausdorff_er_loss, ker.hausdorff_er_loss):
        with pytest.raises(ValueError, match="2-D or 3-D"):
            fn(x[..., 0], t[..., 0])
        with pytest.raises(ValueError, match="iterations must be >= 1"):
            fn(x, t, iterations=0)
        with pytest.raises(ValueError, match="alpha"):
            fn(x, t, alpha=float("inf"))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_hausdorff_er_torch_compile_fullgraph(reduction, seed, gen):
    opts = {"ignore_index": 255, "iterations": 3, "reduction": reduction}
    x, t = make_inputs(HDER, (2, 3, 5, 6), opts, torch.float32, gen, 0.2, device=DEVICE)
    step = torch.compile(lambda x, t: ker.hausdorff_er_loss(x, t, **opts), fullgraph=True)
    assert_matches(HDER, x, t, opts, torch.float32, seed, kernel=lambda x, t, **_: step(x, t))


def test_bad_values_make_nan_without_validate(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE)
    y[1, 2, 3] = 7
    assert torch.isnan(ker.hausdorff_er_loss(x, y))
    assert torch.isnan(ker.hausdorff_er_loss(x, y, reduction="none")).all()
    with pytest.raises(ValueError, match="label 7 outside"):
        ker.hausdorff_er_loss(x, y, validate=True)
    m = (torch.rand(2, 3, 4, 5, generator=gen) < 0.5).float().to(DEVICE)
    m[0, 1, 0, 0] = 2.0
    assert torch.isnan(ker.hausdorff_er_loss(x, m, mode="multilabel", reduction="sum"))
