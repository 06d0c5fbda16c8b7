"""Worked examples from the seed documents (shared/seeds) and the research notes
(shared/research/hard-losses.md section 15), as exact assertions.

Probabilities p are fed as logits: ``logit(p)`` for sigmoid losses, ``log(p)`` for softmax
losses (softmax(log p) = p when p sums to 1). Saturated masks use logits of +-1000, whose
sigmoid is exactly 1 or 0 in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from segtriton import reference as ref

D = torch.float64


def _sig_logits(p) -> torch.Tensor:
    """``[1, 1, ...]`` logits whose sigmoid is ``p``."""
    p = torch.as_tensor(p, dtype=D)
    return torch.logit(p).reshape(1, 1, *p.shape)


def _hard_logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), 1000.0, -1000.0).to(D).reshape(1, 1, *mask.shape)


def _mask(t) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=D)
    return t.reshape(1, 1, *t.shape)


# --- seed 000: the 2x2 car example -----------------------------------------------------


def test_seed000_car_iou_and_dice_after_threshold():
    probs = torch.tensor([[0.1, 0.5], [0.8, 0.7]])
    gt = torch.tensor([[0, 0], [1, 1]])
    pred = (probs >= 0.5).long()  # the seed's mask: [[0, 1], [1, 1]]
    m = ref.segmentation_metrics(pred[None], gt[None], num_classes=2)
    assert m["iou"][1].item() == pytest.approx(2 / 3, abs=1e-15)
    assert m["dice"][1].item() == pytest.approx(4 / 5, abs=1e-15)
    # the same numbers through the soft losses on saturated logits
    assert ref.jaccard_loss(_hard_logits(pred), _mask(gt), mode="binary").item() == pytest.approx(
        1 - 2 / 3, abs=1e-12
    )
    assert ref.dice_loss(_hard_logits(pred), _mask(gt), mode="binary").item() == pytest.approx(
        1 - 4 / 5, abs=1e-12
    )


def test_seed000_cross_entropy_of_one_pixel():
    logits = torch.tensor([0.1, 0.8, 0.1], dtype=D).log().reshape(1, 3, 1, 1)
    loss = ref.cross_entropy(logits, torch.tensor([[[1]]]))
    assert loss.item() == pytest.approx(-math.log(0.8), abs=1e-15)
    assert round(loss.item(), 3) == 0.223


def test_seed000_focal_alpha_025_gamma_2():
    expected = 0.25 * (1 - 0.8) ** 2 * -math.log(0.8)
    sig = ref.sigmoid_focal_loss(_sig_logits([0.8]), _mask([1.0]), alpha=0.25, gamma=2.0)
    soft = ref.softmax_focal_loss(
        torch.tensor([0.1, 0.8, 0.1], dtype=D).log().reshape(1, 3, 1),
        torch.tensor([[1]]),
        alpha=[1.0, 0.25, 1.0],
        gamma=2.0,
    )
    assert sig.item() == pytest.approx(expected, rel=1e-12)
    assert soft.item() == pytest.approx(expected, rel=1e-12)
    assert round(expected, 5) == 0.00223


def _grid_masks(inter: int, pred_only: int, gt_only: int) -> tuple[torch.Tensor, torch.Tensor]:
    """5x5 pred/gt masks with the given counts of overlap, pred-only and gt-only pixels."""
    pred, gt = torch.zeros(25), torch.zeros(25)
    pred[:inter] = gt[:inter] = 1
    pred[inter : inter + pred_only] = 1
    gt[inter + pred_only : inter + pred_only + gt_only] = 1
    return pred.reshape(5, 5), gt.reshape(5, 5)


def test_seed000_5x5_iou_on_masks_with_its_own_numbers():
    # The seed's IoU uses intersection 6 and union 10; its Dice uses |P| = 8, |G| = 9 with
    # intersection 6, which implies a union of 11. The two cannot hold for one pair of
    # masks, so each formula is checked on masks built for its own numbers.
    pred, gt = _grid_masks(inter=6, pred_only=2, gt_only=2)  # union 10
    loss = ref.jaccard_loss(_hard_logits(pred), _mask(gt), mode="binary")
    assert loss.item() == pytest.approx(1 - 6 / 10, abs=1e-12)
    m = ref.segmentation_metrics(pred.long()[None], gt.long()[None], num_classes=2)
    assert m["iou"][1].item() == 0.6


def test_seed000_5x5_dice_on_masks_with_its_own_numbers():
    pred, gt = _grid_masks(inter=6, pred_only=2, gt_only=3)  # |P| = 8, |G| = 9
    loss = ref.dice_loss(_hard_logits(pred), _mask(gt), mode="binary")
    assert loss.item() == pytest.approx(1 - 12 / 17, abs=1e-12)
    assert round(loss.item(), 3) == 0.294


# --- seed 003: the 10x10 lung grids and the focal table --------------------------------

LUNG_GT = """
0000000000
0011110000
0011110000
0011110000
0011110000
0011110000
0000000000
0000000000
0000000000
0000000000"""
LUNG_PRED_GOOD = """
0000000000
0011100000
0011110000
0011110000
0011110000
0011110000
0000000000
0000000000
0000000000
0000000000"""
LUNG_PRED_POOR = """
0000000000
0000100000
0001100000
0011000000
0000000000
0000000000
0001000000
0010000000
0000000000
0000000000"""


def _grid(text: str) -> torch.Tensor:
    return torch.tensor([[int(c) for c in row] for row in text.split()])


@pytest.mark.parametrize(
    ("pred", "dice", "iou"),
    [(LUNG_PRED_GOOD, 38 / 39, 19 / 20), (LUNG_PRED_POOR, 10 / 27, 5 / 22)],
    ids=["good", "poor"],
)
def test_seed003_lung_grids(pred, dice, iou):
    gt, p = _grid(LUNG_GT), _grid(pred)
    assert int(gt.sum()) == 20
    m = ref.segmentation_metrics(p[None], gt[None], num_classes=2)
    assert m["dice"][1].item() == pytest.approx(dice, abs=1e-15)
    assert m["iou"][1].item() == pytest.approx(iou, abs=1e-15)
    soft_dice = 1 - ref.dice_loss(_hard_logits(p), _mask(gt), mode="binary")
    soft_iou = 1 - ref.jaccard_loss(_hard_logits(p), _mask(gt), mode="binary")
    assert soft_dice.item() == pytest.approx(dice, abs=1e-12)
    assert soft_iou.item() == pytest.approx(iou, abs=1e-12)


@pytest.mark.parametrize(
    ("p", "t", "alpha", "expected", "printed"),
    [
        (0.9, 1, 0.5, 0.5 * 0.1**2 * -math.log(0.9), 0.00053),
        (0.1, 0, 0.5, 0.5 * 0.1**2 * -math.log(0.9), 0.00053),
        (0.6, 1, 0.5, 0.5 * 0.4**2 * -math.log(0.6), 0.041),
        (0.4, 0, 0.5, 0.5 * 0.4**2 * -math.log(0.6), 0.041),
        (0.9, 1, None, 0.1**2 * -math.log(0.9), 0.00105),
        (0.1, 1, None, 0.9**2 * -math.log(0.1), 1.865),
    ],
)
def test_seed003_004_focal_tables(p, t, alpha, expected, printed):
    loss = ref.sigmoid_focal_loss(_sig_logits([p]), _mask([float(t)]), alpha=alpha, gamma=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    digits = len(str(printed).split(".")[1])
    assert abs(loss.item() - printed) <= 0.5 * 10**-digits + 1e-12


def test_seed004_focal_is_per_pixel_not_from_the_batch_mean_bce():
    # Seed 004's code takes p_t = exp(-mean BCE) over the whole batch, so every pixel gets
    # the same modulating factor. Ours modulates each pixel by its own (1 - p_t)^gamma.
    p = torch.tensor([0.95, 0.9, 0.6, 0.3], dtype=D)
    t = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=D)
    ours = ref.sigmoid_focal_loss(_sig_logits(p), _mask(t), alpha=None, gamma=2.0)
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    p_t = torch.where(t == 1, p, 1 - p)
    per_pixel = ((1 - p_t) ** 2 * bce).mean()
    batch_pt = torch.exp(-bce.mean())
    seed004 = (1 - batch_pt) ** 2 * bce.mean()
    assert ours.item() == pytest.approx(per_pixel.item(), rel=1e-12)
    assert abs(ours.item() - seed004.item()) > 0.01  # 0.0785 vs 0.1074 here


# --- hard-losses.md section 15 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("gt", "grad"),
    [
        ([0, 1, 0, 1], [1 / 3, 1 / 3, 1 / 12, 1 / 4]),
        ([1, 0, 1, 0], [1 / 2, 1 / 6, 1 / 3, 0]),
        ([0, 0, 0], [1, 0, 0]),
        ([1, 1, 1], [1 / 3, 1 / 3, 1 / 3]),
    ],
)
def test_15_1_lovasz_grad(gt, grad):
    out = ref.lovasz_grad(torch.tensor(gt, dtype=D))
    torch.testing.assert_close(out, torch.tensor(grad, dtype=D), rtol=0, atol=1e-15)


def test_15_2_lovasz_hinge():
    z = torch.tensor([2.0, -1.0, 0.5, -0.25], dtype=D).reshape(1, 1, 4).requires_grad_()
    loss = ref.lovasz_hinge_loss(z, torch.tensor([1.0, 0, 0, 1]).reshape(1, 1, 4))
    loss.backward()
    assert loss.item() == pytest.approx(1.5 / 3 + 1.25 / 3, abs=1e-15)
    torch.testing.assert_close(z.grad.flatten(), torch.tensor([0, 0, 1 / 3, -1 / 3], dtype=D))


def test_15_3_lovasz_softmax_value_and_gradient():
    p1 = torch.tensor([0.9, 0.4, 0.2], dtype=D)
    p = torch.stack([1 - p1, p1])  # [C=2, N=3]
    z = p.log().reshape(1, 2, 3).requires_grad_()
    loss = ref.lovasz_softmax_loss(z, torch.tensor([[1, 1, 0]]))
    loss.backward()
    assert loss.item() == pytest.approx((0.4 + 0.3666666666666667) / 2, abs=1e-12)
    # dL/dp per pixel (class 0, class 1) from the notes, taken through the softmax
    g = torch.tensor([[0, -1 / 6], [0.25, -0.25], [-0.25, 1 / 12]], dtype=D).T
    expected = p * (g - (p * g).sum(0, keepdim=True))
    torch.testing.assert_close(z.grad[0], expected, rtol=0, atol=1e-12)


def test_15_4_tversky_and_focal_tversky():
    p, g = [0.9, 0.4, 0.2, 0.7], [1.0, 1.0, 0.0, 0.0]
    z = _sig_logits(p).requires_grad_()
    kw = {"mode": "binary", "alpha": 0.3, "beta": 0.7}
    assert ref.tversky_loss(z, _mask(g), **kw).item() == pytest.approx(0.3689320, abs=5e-8)
    assert ref.tversky_loss(z, _mask(g), smooth_nr=1, smooth_dr=1, **kw).item() == pytest.approx(
        0.2483660, abs=5e-8
    )
    ftl = ref.focal_tversky_loss(z, _mask(g), gamma=0.75, **kw)
    assert ftl.item() == pytest.approx(0.4733799, abs=5e-8)
    assert ref.focal_tversky_loss(
        z, _mask(g), gamma=0.75, smooth_nr=1, smooth_dr=1, **kw
    ).item() == pytest.approx(0.3518189, abs=5e-8)
    # gradients w.r.t. p, taken through the sigmoid: dL/dz = dL/dp * p (1 - p)
    pt = torch.tensor(p, dtype=D)
    (gz,) = torch.autograd.grad(ref.tversky_loss(z, _mask(g), **kw), z)
    dti_dp = torch.tensor([0.393534, 0.393534, -0.091903, -0.091903], dtype=D)
    torch.testing.assert_close(gz.flatten(), -dti_dp * pt * (1 - pt), rtol=0, atol=1e-6)
    (gz,) = torch.autograd.grad(ftl, z)
    dftl_dp = torch.tensor([-0.378710, -0.378710, 0.088441, 0.088441], dtype=D)
    torch.testing.assert_close(gz.flatten(), dftl_dp * pt * (1 - pt), rtol=0, atol=1e-6)


def test_15_5_monai_unit_vectors():
    z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=D).reshape(1, 1, 2, 2)
    t = _mask([[1.0, 0.0], [1.0, 1.0]])
    kw = {"mode": "binary", "smooth_nr": 1e-6, "smooth_dr": 1e-6}
    assert ref.dice_loss(z, t, **kw).item() == pytest.approx(0.307576, abs=1e-6)
    assert ref.generalized_dice_loss(z, t, **kw).item() == pytest.approx(0.307576, abs=1e-6)
    kw = {"mode": "binary", "smooth_nr": 1e-5, "smooth_dr": 1e-5}
    assert ref.tversky_loss(z, t, alpha=0.3, beta=0.7, **kw).item() == pytest.approx(
        0.3589, abs=5e-5
    )
    assert ref.tversky_loss(z, t, alpha=0.7, beta=0.3, **kw).item() == pytest.approx(
        0.247366, abs=2e-6
    )  # MONAI's own test asserts these values with rtol 1e-4


def test_15_6_generalized_dice_and_combo():
    P = torch.tensor([[0.9, 0.4, 0.2, 0.7], [0.1, 0.6, 0.8, 0.3]], dtype=D)
    z = P.log().reshape(1, 2, 4)
    assert ref.generalized_dice_loss(z, torch.tensor([[0, 0, 1, 1]])).item() == pytest.approx(
        0.4, abs=1e-15
    )
    assert ref.generalized_dice_loss(z, torch.tensor([[0, 0, 0, 1]])).item() == pytest.approx(
        0.7236842, abs=5e-8
    )
    # absent-class weight policy (section 4.3): MONAI's max-weight rule gives 0.249995
    P3 = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]], dtype=D)
    gdl = ref.generalized_dice_loss(
        P3.log().reshape(1, 2, 4),
        torch.zeros(1, 4, dtype=torch.long),
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        absent_weight="max",
    )
    assert gdl.item() == pytest.approx(0.249995, abs=5e-7)
    z = _sig_logits([0.9, 0.4, 0.2, 0.7])
    t = _mask([1.0, 1.0, 0.0, 0.0])
    combo = ref.combo_loss(z, t, alpha=0.5, beta=0.5, smooth=1.0)
    assert combo.item() == pytest.approx(0.5 * 0.3060960 - 0.5 * 3.6 / 5.2, abs=5e-8)
    assert combo.item() == pytest.approx(-0.1931059, abs=5e-8)


def test_15_7_boundary_maps_and_loss():
    row = torch.tensor([[0, 0, 1, 1, 1, 0]])
    phi = ref.signed_distance_map(row[:, None], mode="binary")
    torch.testing.assert_close(phi.flatten(), torch.tensor([2.0, 1, 0, -1, 0, 1], dtype=D))
    sq = torch.zeros(1, 5, 5, dtype=torch.long)
    sq[0, 1:4, 1:4] = 1
    r2 = math.sqrt(2)
    expected = torch.tensor(
        [[r2, 1, 1, 1, r2], [1, 0, 0, 0, 1], [1, 0, -1, 0, 1], [1, 0, 0, 0, 1], [r2, 1, 1, 1, r2]],
        dtype=D,
    )
    torch.testing.assert_close(ref.signed_distance_map(sq, 2)[0, 1], expected)
    g = sq[:, None].to(D)
    assert ref.boundary_loss(_hard_logits(sq[0]), g, mode="binary").item() == pytest.approx(
        -0.04, abs=1e-15
    )
    half = torch.zeros(1, 1, 5, 5, dtype=D)
    assert ref.boundary_loss(half, g, mode="binary").item() == pytest.approx(0.3331371, abs=5e-8)


def test_15_7_boundary_map_guards_and_spacing():
    full = torch.ones(1, 1, 3, 4)
    empty = torch.zeros(1, 1, 3, 4)
    assert ref.signed_distance_map(full, mode="binary").abs().max() == 0
    assert ref.signed_distance_map(empty, mode="binary").abs().max() == 0
    row = torch.tensor([[[0, 0, 1, 1, 1, 0]]])
    phi = ref.signed_distance_map(row[:, None], mode="binary", spacing=(2.0, 1.0))
    torch.testing.assert_close(phi.flatten(), torch.tensor([2.0, 1, 0, -1, 0, 1], dtype=D))


def ohem_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Four pixels of two classes whose true-class probabilities are 0.9, 0.6, 0.8, 0.3
    (logits ``log p``, ``log(1 - p)``; labels alternate)."""
    p = torch.tensor([0.9, 0.6, 0.8, 0.3], dtype=D)
    y = torch.tensor([0, 1, 0, 1])
    probs = torch.stack([torch.where(y == 0, p, 1 - p), torch.where(y == 1, p, 1 - p)])
    return probs.log().reshape(1, 2, 4), y.reshape(1, 4)


@pytest.mark.parametrize(
    ("min_kept", "kept"), [(1, [0.6, 0.3]), (3, [0.6, 0.8, 0.3]), (0, [0.6, 0.3])]
)
def test_ohem_worked_example(min_kept, kept):
    """Sorted, q = [0.3, 0.6, 0.8, 0.9]; t = max(q[min_kept], 0.7): 0.7 for min_kept 1
    (keeps 0.6 and 0.3), 0.9 for min_kept 3 (keeps all but 0.9); the mean of -log p."""
    z, y = ohem_example()
    want = -torch.tensor(kept, dtype=D).log().mean()
    assert ref.ohem_cross_entropy(z, y, 0.7, min_kept).item() == pytest.approx(want.item())


@pytest.mark.parametrize(
    ("k", "kept"),
    [(50, [0.6, 0.3]), (75, [0.6, 0.8, 0.3]), (10, [0.3]), (100, [0.9, 0.6, 0.8, 0.3])],
)
def test_topk_worked_example(k, kept):
    """The same four pixels: the int(4 k / 100) (at least 1) smallest p, i.e. the largest
    -log p, averaged: k = 50 keeps 0.3 and 0.6, k = 10 keeps 0.3 alone."""
    z, y = ohem_example()
    want = -torch.tensor(kept, dtype=D).log().mean()
    assert ref.topk_cross_entropy(z, y, k).item() == pytest.approx(want.item())


def test_topk_worked_example_with_ties():
    """p = [0.5, 0.5, 0.5, 0.9] and k = 50: the two places go to three tied pixels, 2/3
    each, so the loss is -log 0.5 and each tied pixel's logit gradient is 2/3 of its
    cross-entropy gradient (p - 1 on its class) over n = 2; the 0.9 pixel gets none."""
    p = torch.tensor([0.5, 0.5, 0.5, 0.9], dtype=D)
    z = torch.stack([p.log(), (1 - p).log()]).reshape(1, 2, 4).requires_grad_(True)
    y = torch.zeros(1, 4, dtype=torch.long)
    loss = ref.topk_cross_entropy(z, y, 50)
    assert loss.item() == pytest.approx(-math.log(0.5))
    (grad,) = torch.autograd.grad(loss, z)
    want = torch.tensor([-0.5, -0.5, -0.5, 0.0], dtype=D) * (2 / 3) / 2
    torch.testing.assert_close(grad[0, 0], want)
    torch.testing.assert_close(grad[0, 1], -want)


def hausdorff_example() -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """A hand-checked HD-DT case: target [0, 0, 1, 1], prediction p = [1/4, 3/4, 3/4, 3/4]
    (mask [0, 1, 1, 1]). Distances to the other side: target [2, 1, 1, 2], prediction
    [1, 1, 2, 3]; with alpha = 2, w = [5, 2, 5, 13]; (p - g)^2 = [1, 9, 1, 1] / 16, so
    the mean is (5 + 18 + 5 + 13) / 64 = 41/64, and dL/dz = 2 (p - g) w p (1 - p) / 4 =
    (p - g) w 3/32. Returns (logits, target, loss, gradient)."""
    z = torch.tensor([-math.log(3), math.log(3), math.log(3), math.log(3)], dtype=D)
    grad = torch.tensor([1.25, 1.5, -1.25, -3.25], dtype=D) * 3 / 32
    return z.reshape(1, 1, 4), torch.tensor([0.0, 0, 1, 1], dtype=D).reshape(1, 1, 4), 41 / 64, grad


def test_hausdorff_dt_worked_example():
    z, g, loss, grad = hausdorff_example()
    z.requires_grad_()
    out = ref.hausdorff_dt_loss(z, g, mode="binary")
    out.backward()
    assert out.item() == pytest.approx(loss, abs=1e-15)
    torch.testing.assert_close(z.grad.flatten(), grad)
    # the same as a two-class softmax over logits (0, z), background left out by default
    z2 = torch.cat([torch.zeros_like(z), z.detach()], dim=1).requires_grad_()
    out = ref.hausdorff_dt_loss(z2, g[:, 0].long())
    out.backward()
    assert out.item() == pytest.approx(loss, abs=1e-15)
    torch.testing.assert_close(z2.grad[0, 1], grad)
    torch.testing.assert_close(z2.grad[0, 0], -grad)


def wasserstein_example() -> tuple[torch.Tensor, torch.Tensor, list[list[float]]]:
    """Three pixels labelled [1, 2, 1] with p = (0.2, 0.6, 0.2), (0.1, 0.4, 0.5),
    (0.1, 0.8, 0.1), and M = [[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]]: each pixel's
    distance w = M[y] . p is 0.2 + 0.1 = 0.3, 0.1 + 0.2 = 0.3 and 0.1 + 0.05 = 0.15.

    'default' (a = 1 for both labels): TP = 0.7 + 0.7 + 0.85 = 2.25, D = 2 TP + 0.75 =
    5.25, loss = 1 - 4.5 / 5.25 = 1/7. 'GDL' (a = 1/3 for label 1, counted twice, 1/2 for
    label 2): TP = (0.7 + 0.85) / 3 + 0.7 / 2 = 13/15, D = (1.7 + 1.85) / 3 + 1.7 / 2 =
    61/30, loss = 1 - (26/15) / (61/30) = 9/61. Returns (logits, labels, M)."""
    p = torch.tensor([[0.2, 0.6, 0.2], [0.1, 0.4, 0.5], [0.1, 0.8, 0.1]], dtype=D)
    z = p.log().T.reshape(1, 3, 3)
    return z, torch.tensor([[1, 2, 1]]), [[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]]


@pytest.mark.parametrize(("mode", "want"), [("default", 1 / 7), ("GDL", 9 / 61)])
def test_wasserstein_dice_worked_example(mode, want):
    z, y, dist = wasserstein_example()
    loss = ref.generalized_wasserstein_dice_loss(z, y, dist, mode, smooth_nr=0, smooth_dr=0)
    assert loss.item() == pytest.approx(want, abs=1e-15)
    # MONAI's docstring example: confident right predictions give 0 in either mode
    sure = 1000.0 * torch.eye(3, dtype=D).reshape(1, 3, 3)
    assert ref.generalized_wasserstein_dice_loss(sure, torch.tensor([[0, 1, 2]]), dist, mode) == 0


def test_15_9_label_smoothing_cross_entropy():
    z = torch.tensor([2.0, 0.0, 0.0], dtype=D).reshape(1, 3, 1).requires_grad_()
    loss = ref.cross_entropy(z, torch.tensor([[0]]), label_smoothing=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(0.3728781, abs=5e-8)
    torch.testing.assert_close(
        z.grad.flatten(), torch.tensor([-0.146347, 0.073174, 0.073174], dtype=D), rtol=0, atol=5e-7
    )
