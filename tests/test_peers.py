"""Our reference against the peer libraries, where their semantics agree with an option set
of ours (shared/research/peer-semantics.md section 2.8). float64, fresh random inputs.

Each case is (peer call, our call); README.md's compatibility table lists the same pairs.
A peer that is not installed fails the test (the dev extra installs them all; smp is
installed with --no-deps by .ci/run).
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F
from kernel_checks import KORNIA_REASON, NO_KORNIA, nested_masks, smooth_labels

from segtriton import reference as ref
from segtriton.bench.baselines import smp_losses

D = torch.float64
TOL = {"rtol": 1e-6, "atol": 1e-9}


def _inputs(gen, B=2, C=4, spatial=(6, 7), ignore=False):
    x = 2 * torch.randn(B, C, *spatial, generator=gen, dtype=D)
    y = torch.randint(0, C, (B, *spatial), generator=gen)
    if ignore:
        y = y.masked_fill(torch.rand(y.shape, generator=gen) < 0.2, 255)
    return x, y


def _close(ours, theirs):
    torch.testing.assert_close(ours, theirs.to(ours.dtype).reshape(ours.shape), **TOL)


@pytest.fixture(scope="module")
def monai():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("monai.losses")


@pytest.fixture(scope="module")
def kornia():
    if NO_KORNIA:
        pytest.skip(KORNIA_REASON)
    return importlib.import_module("kornia.losses")


@pytest.fixture(scope="module")
def smp():
    return smp_losses()


# --- MONAI 1.6.1 -----------------------------------------------------------------------

MONAI_CASES = {
    "dice": ({}, {"scope": "image"}),
    "dice_batch": ({"batch": True}, {"scope": "batch"}),
    "dice_squared": ({"squared_pred": True}, {"scope": "image", "squared": True}),
    "jaccard": ({"jaccard": True}, {"scope": "image"}),
}


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("case", MONAI_CASES)
def test_monai_dice_family(monai, case, spatial, gen):
    x, y = _inputs(gen, spatial=spatial)
    peer_kw, our_kw = MONAI_CASES[case]
    theirs = monai.DiceLoss(softmax=True, to_onehot_y=True, **peer_kw)(x, y.unsqueeze(1))
    fn = ref.jaccard_loss if case == "jaccard" else ref.dice_loss
    # MONAI's Jaccard is (2I + s)/(2U + s): our smoothing s/2 on both sides.
    s = 0.5e-5 if case == "jaccard" else 1e-5
    _close(fn(x, y, smooth_nr=s, smooth_dr=s, **our_kw), theirs)


@pytest.mark.parametrize("case", MONAI_CASES)
def test_monai_dice_family_on_soft_targets(monai, case, gen):
    """MONAI's default target form (``to_onehot_y=False``): class probabilities of the
    logits' shape, here soft; ours reads them as the multiclass target."""
    x = 2 * torch.randn(2, 4, 6, 7, generator=gen, dtype=D)
    t = torch.softmax(2 * torch.randn(2, 4, 6, 7, generator=gen, dtype=D), dim=1)
    peer_kw, our_kw = MONAI_CASES[case]
    theirs = monai.DiceLoss(softmax=True, **peer_kw)(x, t)
    fn = ref.jaccard_loss if case == "jaccard" else ref.dice_loss
    s = 0.5e-5 if case == "jaccard" else 1e-5
    _close(fn(x, t, smooth_nr=s, smooth_dr=s, **our_kw), theirs)


TVERSKY = {"alpha": 0.3, "beta": 0.7}
SOFT_LABEL_CASES = {
    "dice": ("DiceLoss", ref.dice_loss, {}, {}),
    "dice_batch": ("DiceLoss", ref.dice_loss, {"batch": True}, {"scope": "batch"}),
    "jaccard": ("DiceLoss", ref.jaccard_loss, {"jaccard": True}, {}),
    "tversky": ("TverskyLoss", ref.tversky_loss, TVERSKY, TVERSKY),
    "generalized_dice": ("GeneralizedDiceLoss", ref.generalized_dice_loss, {}, {}),
}


@pytest.mark.parametrize("case", SOFT_LABEL_CASES)
def test_monai_soft_label_on_soft_targets(monai, case, gen):
    """MONAI's ``soft_label=True`` (``tp = (|p| + |g| - |p - g|) / 2``, the L1 form) is
    ours: loss and gradient, on soft class probabilities."""
    name, fn, peer_kw, our_kw = SOFT_LABEL_CASES[case]
    x = (2 * torch.randn(2, 4, 6, 7, generator=gen, dtype=D)).requires_grad_(True)
    t = torch.softmax(2 * torch.randn(2, 4, 6, 7, generator=gen, dtype=D), dim=1)
    theirs = getattr(monai, name)(softmax=True, soft_label=True, **peer_kw)(x, t)
    s = 0.5e-5 if case == "jaccard" else 1e-5  # MONAI's Jaccard: (2I + s) / (2U + s)
    kw = {"scope": "image", "smooth_nr": s, "smooth_dr": s, **our_kw}
    ours = fn(x, t, soft_label=True, **kw)
    _close(ours, theirs)
    _close(*(torch.autograd.grad(loss, x, retain_graph=True)[0] for loss in (ours, theirs)))
    assert not torch.allclose(fn(x, t, **kw), theirs)  # the product form differs there


def test_monai_dice_ignore_index(monai, gen):
    x, y = _inputs(gen, C=3, ignore=True)
    theirs = monai.DiceLoss(softmax=True, to_onehot_y=True, ignore_index=255)(x, y.unsqueeze(1))
    ours = ref.dice_loss(x, y, scope="image", smooth_nr=1e-5, smooth_dr=1e-5, ignore_index=255)
    _close(ours, theirs)


def test_monai_multilabel_dice(monai, gen):
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=D)
    t = (torch.rand(x.shape, generator=gen) < 0.4).to(D)
    theirs = monai.DiceLoss(sigmoid=True)(x, t)
    _close(
        ref.dice_loss(x, t, mode="multilabel", scope="image", smooth_nr=1e-5, smooth_dr=1e-5),
        theirs,
    )


MONAI_ON_PROBABILITIES = {
    "dice": ("DiceLoss", ref.dice_loss, {}, {}),
    "jaccard": ("DiceLoss", ref.jaccard_loss, {"jaccard": True}, {}),
    "tversky": ("TverskyLoss", ref.tversky_loss, TVERSKY, TVERSKY),
    "generalized_dice": ("GeneralizedDiceLoss", ref.generalized_dice_loss, {}, {}),
}


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("case", MONAI_ON_PROBABILITIES)
def test_monai_losses_on_probabilities(monai, case, mode, gen):
    """MONAI's default of no activation (``sigmoid=False, softmax=False``) reads the input
    as probabilities: ours with ``from_logits=False``, loss and gradient."""
    name, fn, peer_kw, our_kw = MONAI_ON_PROBABILITIES[case]
    z = 2 * torch.randn(2, 4, 6, 7, generator=gen, dtype=D)
    p = (torch.softmax(z, dim=1) if mode == "multiclass" else torch.sigmoid(z)).requires_grad_()
    if mode == "multiclass":
        y = torch.randint(0, 4, (2, 6, 7), generator=gen)
        theirs = getattr(monai, name)(to_onehot_y=True, **peer_kw)(p, y.unsqueeze(1))
    else:
        y = (torch.rand(p.shape, generator=gen) < 0.4).to(D)
        theirs = getattr(monai, name)(**peer_kw)(p, y)
    s = 0.5e-5 if case == "jaccard" else 1e-5  # MONAI's Jaccard: (2I + s) / (2U + s)
    kw = {"scope": "image", "smooth_nr": s, "smooth_dr": s, **our_kw}
    ours = fn(p, y, mode=mode, from_logits=False, **kw)
    _close(ours, theirs)
    _close(*(torch.autograd.grad(loss, p, retain_graph=True)[0] for loss in (ours, theirs)))


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.7), (0.7, 0.3)])
def test_monai_tversky(monai, alpha, beta, gen):
    x, y = _inputs(gen)
    theirs = monai.TverskyLoss(softmax=True, to_onehot_y=True, alpha=alpha, beta=beta)(
        x, y.unsqueeze(1)
    )
    ours = ref.tversky_loss(
        x, y, alpha=alpha, beta=beta, scope="image", smooth_nr=1e-5, smooth_dr=1e-5
    )
    _close(ours, theirs)


def test_monai_tversky_ignore_index(monai, gen):
    """TverskyLoss(ignore_index=255) drops the ignored pixels from prediction and target."""
    x, y = _inputs(gen, ignore=True)
    kw = {"alpha": 0.3, "beta": 0.7}
    theirs = monai.TverskyLoss(softmax=True, to_onehot_y=True, ignore_index=255, **kw)(
        x, y.unsqueeze(1)
    )
    ours = ref.tversky_loss(
        x, y, scope="image", smooth_nr=1e-5, smooth_dr=1e-5, ignore_index=255, **kw
    )
    _close(ours, theirs)


@pytest.mark.parametrize("batch", [False, True])
def test_monai_mcc(monai, batch, gen):
    """MONAI 1.6's MCCLoss, sigmoid per channel and softmax over classes, values and
    gradients, with channels predicted perfectly (MCC 1), one of them absent from its
    image (0 / 0, where MONAI's perfect-prediction rule gives 1), and a channel absent
    but predicted (MCC 0): ours with eps=0 (its smooth_dr=1e-5 under the root moves
    these values by about 1e-10)."""
    kw = {"scope": "batch" if batch else "image", "eps": 0.0}
    x, y = _inputs(gen)
    t = F.one_hot(y, 4).movedim(-1, 1).to(D)
    t[1, 2], t[1, 1] = 0, 0
    for b, c in ((0, 3), (1, 1)):
        x[b, c] = torch.where(t[b, c] > 0, 1000.0, -1000.0)
    x.requires_grad_(True)
    pairs = (
        (monai.MCCLoss(sigmoid=True, batch=batch)(x, t), ref.mcc_loss(x, t, "multilabel", **kw)),
        (
            monai.MCCLoss(softmax=True, to_onehot_y=True, batch=batch)(x, y.unsqueeze(1)),
            ref.mcc_loss(x, y, "multiclass", **kw),
        ),
    )
    for theirs, ours in pairs:
        _close(ours, theirs)
        _close(*(torch.autograd.grad(loss, x, retain_graph=True)[0] for loss in (ours, theirs)))


@pytest.mark.parametrize("smooth", [1e-5, 1.0])
@pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("batch", [False, True])
def test_monai_generalized_dice(monai, batch, weight_type, smooth, gen):
    """Each weighting; smooth 1.0 is of the weighted sums' size, so the weights' scale
    shows (with smooth near 0 it cancels in the ratio)."""
    x, y = _inputs(gen, C=5, spatial=(4, 4))
    y[0] = y[0].clamp_max(2)  # classes 3 and 4 absent from image 0: the inf-weight rule
    kw = {"smooth_nr": smooth, "smooth_dr": smooth}
    theirs = monai.GeneralizedDiceLoss(
        softmax=True, to_onehot_y=True, batch=batch, w_type=weight_type, **kw
    )(x, y.unsqueeze(1))
    ours = ref.generalized_dice_loss(
        x,
        y,
        scope="batch" if batch else "image",
        weight_type=weight_type,
        absent_weight="max",
        **kw,
    )
    _close(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("mode", ["default", "GDL"])
def test_monai_generalized_wasserstein_dice(monai, mode, reduction, gen):
    """Loss and gradient, with an asymmetric distance matrix whose largest entry is not 1
    (both scale it to 1) and a class absent from image 0."""
    x, y = _inputs(gen, C=4, spatial=(5, 6))
    y[0] = y[0].clamp_max(2)
    dist = 3 * torch.rand(4, 4, generator=gen, dtype=D)
    kw = {"weighting_mode": mode, "reduction": reduction}
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    theirs = monai.GeneralizedWassersteinDiceLoss(dist.numpy(), **kw)(xs[0], y.unsqueeze(1))
    ours = ref.generalized_wasserstein_dice_loss(xs[1], y, dist, **kw)
    _close(ours, theirs)
    for loss, xi in zip((theirs, ours), xs, strict=True):
        loss.sum().backward()
        assert xi.grad is not None
    # MONAI's GDL weights are float32: 1 / (count + 1) to 7 digits
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batch", [False, True])
def test_monai_without_background(monai, batch, gen):
    """include_background=False drops channel 0 after the softmax: ours, and our ``weight``
    0 for class 0, do the same for Dice, Tversky, generalized Dice (whose absent-class
    weight is then the heaviest among the classes that take part, as MONAI's is) and the
    MCC."""
    x, y = _inputs(gen, C=5, spatial=(4, 4))
    y[0] = y[0].clamp_max(2)  # classes 3 and 4 absent from image 0
    common = {"softmax": True, "to_onehot_y": True, "include_background": False, "batch": batch}
    smooth = {"smooth_nr": 1e-5, "smooth_dr": 1e-5}
    tversky = {"alpha": 0.3, "beta": 0.7}
    cases = [
        (monai.DiceLoss(**common), ref.dice_loss, smooth),
        (monai.TverskyLoss(**tversky, **common), ref.tversky_loss, {**tversky, **smooth}),
        (monai.GeneralizedDiceLoss(**common), ref.generalized_dice_loss, smooth),
        (monai.MCCLoss(**common), ref.mcc_loss, {"eps": 0.0}),
    ]
    scope = "batch" if batch else "image"
    for theirs, ours, options in cases:
        expected = theirs(x, y.unsqueeze(1))
        _close(ours(x, y, scope=scope, include_background=False, **options), expected)
        _close(ours(x, y, scope=scope, weight=[0.0, 1.0, 1.0, 1.0, 1.0], **options), expected)


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_monai_sigmoid_focal_one_vs_rest(monai, alpha, gen):
    x, y = _inputs(gen)
    theirs = monai.FocalLoss(to_onehot_y=True, gamma=2.0, alpha=alpha)(x, y.unsqueeze(1))
    _close(ref.sigmoid_focal_loss(x, y, mode="multiclass", alpha=alpha, gamma=2.0), theirs)


def test_monai_sigmoid_focal_class_weight(monai, gen):
    """FocalLoss(weight=...) on overlapping masks: each channel's elements times its weight,
    the 'mean' still over every element."""
    x = 2 * torch.randn(2, 3, 6, 7, generator=gen, dtype=D)
    t = nested_masks(gen, (2, 6, 7))
    w = [0.5, 1.0, 3.0]
    theirs = monai.FocalLoss(gamma=1.5, alpha=0.25, weight=w)(x, t)
    ours = ref.sigmoid_focal_loss(x, t, mode="multilabel", alpha=0.25, gamma=1.5, weight=w)
    _close(ours, theirs)


def test_monai_per_class_alpha_is_ours_with_weight(monai, gen):
    """MONAI weighs positives by a per-class alpha ``a`` and negatives by 1 (its scalar alpha
    gives negatives 1 - a); that is our ``alpha = a / (1 + a)`` with ``weight = 1 + a``."""
    x = 2 * torch.randn(2, 3, 6, 7, generator=gen, dtype=D)
    t = nested_masks(gen, (2, 6, 7))
    a = torch.tensor([0.2, 0.6, 0.9], dtype=D)
    theirs = monai.FocalLoss(gamma=2.0, alpha=a.tolist())(x, t)
    ours = ref.sigmoid_focal_loss(x, t, mode="multilabel", alpha=a / (1 + a), weight=1 + a)
    _close(ours, theirs)


def test_monai_softmax_focal_is_ours_over_c(monai, gen):
    x, y = _inputs(gen)
    theirs = monai.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=1.5)(x, y.unsqueeze(1))
    _close(ref.softmax_focal_loss(x, y, gamma=1.5) / x.shape[1], theirs)


def test_monai_focal_with_ignore_index_divides_by_valid_pixels(monai, gen):
    """With ``ignore_index`` MONAI's focal 'mean' divides by the valid pixels, not the
    valid elements: its softmax form (only the label's class contributes) is then ours,
    its sigmoid form (every class contributes) C times ours, even with no pixel ignored."""
    x, y = _inputs(gen, ignore=True)
    C = x.shape[1]
    for use_softmax, ours in (
        (True, ref.softmax_focal_loss(x, y, ignore_index=255)),
        (False, C * ref.sigmoid_focal_loss(x, y, mode="multiclass", alpha=None, ignore_index=255)),
    ):
        loss = monai.FocalLoss(to_onehot_y=True, use_softmax=use_softmax, ignore_index=255)
        _close(ours, loss(x, y.unsqueeze(1)))
    kept = y.masked_fill(y == 255, 0)
    loss = monai.FocalLoss(to_onehot_y=True, ignore_index=255)
    plain = ref.sigmoid_focal_loss(x, kept, mode="multiclass", alpha=None)
    _close(C * plain, loss(x, kept.unsqueeze(1)))
    _close(plain, monai.FocalLoss(to_onehot_y=True)(x, kept.unsqueeze(1)))


@pytest.mark.parametrize("batch", [False, True])
def test_monai_dice_ce(monai, batch, gen):
    """Also with include_background=False, which leaves class 0 out of the Dice term only
    (its CE term keeps every class)."""
    x, y = _inputs(gen, C=5)
    kw = {"lambda_ce": 0.7, "lambda_dice": 1.3, "label_smoothing": 0.1}
    scope = "batch" if batch else "image"
    for background in (True, False):
        theirs = monai.DiceCELoss(
            softmax=True, to_onehot_y=True, batch=batch, include_background=background, **kw
        )(x, y.unsqueeze(1))
        ours = ref.ce_dice_loss(
            x, y, smooth_nr=1e-5, smooth_dr=1e-5, scope=scope, include_background=background, **kw
        )
        _close(ours, theirs)


@pytest.mark.parametrize("weight_mode", ["exp", "two", "same"])
def test_monai_deep_supervision(monai, weight_mode, gen):
    """MONAI's DeepSupervisionLoss around DiceCELoss over a 4-level pyramid of odd sizes
    (nearest-exact targets): loss and every level's gradient. MONAI casts the outputs to
    float32, hence the float32 tolerance."""
    sizes = [(13, 10), (7, 5), (4, 3), (2, 2)]
    outputs = [torch.randn(2, 3, *s, generator=gen, dtype=D, requires_grad=True) for s in sizes]
    y = torch.randint(0, 3, (2, *sizes[0]), generator=gen)
    kw = {"lambda_ce": 0.7, "lambda_dice": 1.3}
    peer = monai.DiceCELoss(softmax=True, to_onehot_y=True, **kw)
    theirs = monai.DeepSupervisionLoss(peer, weight_mode)(outputs, y.unsqueeze(1).to(D))
    loss = ref.CEDiceLoss(smooth_nr=1e-5, smooth_dr=1e-5, scope="image", **kw)
    ours = ref.DeepSupervisionLoss(loss, weight_mode)(outputs, y)
    f32 = {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(ours, theirs.to(D), **f32)
    grads = [torch.autograd.grad(v, outputs, retain_graph=True) for v in (ours, theirs)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **f32)


def test_monai_dice_ce_on_soft_targets(monai, gen):
    """MONAI's DiceCELoss on a target of the logits' shape (its default
    ``to_onehot_y=False``): Dice against it and cross-entropy against it as class
    probabilities, as ce_dice_loss reads a probability target."""
    x = 2 * torch.randn(2, 4, 5, 6, generator=gen, dtype=D)
    t = torch.softmax(2 * torch.randn(2, 4, 5, 6, generator=gen, dtype=D), dim=1)
    kw = {"lambda_ce": 0.7, "lambda_dice": 1.3}
    theirs = monai.DiceCELoss(softmax=True, **kw)(x, t)
    _close(ref.ce_dice_loss(x, t, smooth_nr=1e-5, smooth_dr=1e-5, scope="image", **kw), theirs)


def test_monai_sigmoid_dice_ce_of_one_channel(monai, gen):
    """DiceCELoss(sigmoid=True) adds BCE for one channel. For more, MONAI's CE term is a
    softmax cross-entropy against the masks read as class probabilities."""
    x = torch.randn(2, 1, 5, 6, generator=gen, dtype=D)
    t = (torch.rand(x.shape, generator=gen) < 0.4).to(D)
    theirs = monai.DiceCELoss(sigmoid=True, lambda_ce=0.5)(x, t)
    ours = ref.bce_dice_loss(x, t, lambda_bce=0.5, smooth_nr=1e-5, smooth_dr=1e-5, scope="image")
    _close(ours, theirs)
    x3 = torch.randn(2, 3, 5, 6, generator=gen, dtype=D)
    t3 = (torch.rand(x3.shape, generator=gen) < 0.4).to(D)
    dice = ref.dice_loss(x3, t3, "multilabel", 1e-5, 1e-5, scope="image")
    _close(dice + ref.cross_entropy(x3, t3), monai.DiceCELoss(sigmoid=True)(x3, t3))


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_monai_sigmoid_dice_focal(monai, alpha, gen):
    """DiceFocalLoss(sigmoid=True); with softmax=True MONAI's focal term stays the sigmoid
    one-vs-rest focal (our ``sigmoid_focal_loss(mode='multiclass')``) beside a softmax Dice."""
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=D)
    t = (torch.rand(x.shape, generator=gen) < 0.4).to(D)
    kw = {"gamma": 1.5, "lambda_focal": 0.8, "alpha": alpha}
    theirs = monai.DiceFocalLoss(sigmoid=True, **kw)(x, t)
    ours = ref.focal_dice_loss(
        x, t, "multilabel", smooth_nr=1e-5, smooth_dr=1e-5, scope="image", **kw
    )
    _close(ours, theirs)


@pytest.mark.parametrize("batch", [False, True])
def test_monai_sigmoid_generalized_dice_focal(monai, batch, gen):
    """GeneralizedDiceFocalLoss(sigmoid=True) on overlapping masks: its focal term has no
    alpha; a channel missing from an image's target takes the max weight."""
    x = 2 * torch.randn(2, 3, 6, 7, generator=gen, dtype=D)
    t = nested_masks(gen, (2, 6, 7)).to(D)
    t[1, 2] = 0  # channel 2 absent from image 1
    kw = {"gamma": 1.5, "lambda_gdl": 0.7, "lambda_focal": 1.2}
    theirs = monai.GeneralizedDiceFocalLoss(sigmoid=True, batch=batch, **kw)(x, t)
    ours = ref.generalized_dice_focal_loss(
        x, t, mode="multilabel", alpha=None, smooth_nr=1e-5, smooth_dr=1e-5,
        scope="batch" if batch else "image", **kw,
    )  # fmt: skip
    _close(ours, theirs)


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_monai_softmax_dice_focal_is_softmax_dice_plus_sigmoid_focal(monai, alpha, gen):
    """MONAI's multiclass DiceFocalLoss keeps its focal term sigmoid one-vs-rest: the sum
    of our two losses, and focal_dice_loss(sigmoid_focal=True) in one call."""
    x, y = _inputs(gen)
    theirs = monai.DiceFocalLoss(softmax=True, to_onehot_y=True, gamma=2.0, alpha=alpha)(
        x, y.unsqueeze(1)
    )
    dice = ref.dice_loss(x, y, scope="image", smooth_nr=1e-5, smooth_dr=1e-5)
    _close(dice + ref.sigmoid_focal_loss(x, y, mode="multiclass", alpha=alpha), theirs)
    kw = {"scope": "image", "smooth_nr": 1e-5, "smooth_dr": 1e-5}
    _close(ref.focal_dice_loss(x, y, alpha=alpha, sigmoid_focal=True, **kw), theirs)


@pytest.mark.parametrize("C", [2, 5])
def test_monai_dice_focal_without_background(monai, C, gen):
    """DiceFocalLoss(include_background=False) cuts channel 0 before both terms: the
    one-vs-rest focal term over the other C - 1 classes, labels or multilabel masks; a
    softmax focal term has no background to leave out (ValueError)."""
    x, y = _inputs(gen, C=C)
    kw = {"gamma": 1.5, "alpha": 0.25, "include_background": False}
    ours = {"scope": "image", "smooth_nr": 1e-5, "smooth_dr": 1e-5, **kw}
    theirs = monai.DiceFocalLoss(softmax=True, to_onehot_y=True, **kw)(x, y.unsqueeze(1))
    _close(ref.focal_dice_loss(x, y, sigmoid_focal=True, **ours), theirs)
    t = (torch.rand(x.shape, generator=gen) < 0.4).to(D)
    theirs = monai.DiceFocalLoss(sigmoid=True, **kw)(x, t)
    _close(ref.focal_dice_loss(x, t, "multilabel", **ours), theirs)
    with pytest.raises(ValueError, match="sigmoid_focal=True"):
        ref.focal_dice_loss(x, y, **ours)


@pytest.mark.parametrize("batch", [False, True])
def test_monai_generalized_dice_focal_without_background(monai, batch, gen):
    """GeneralizedDiceFocalLoss(include_background=False): class 0 out of the generalized
    Dice weights (a class absent from an image still takes the max of the others) and of
    the sigmoid focal term, labels or masks."""
    x, y = _inputs(gen, C=5)
    y[1] = y[1].masked_fill(y[1] == 1, 0)  # class 1 absent from image 1
    kw = {"gamma": 1.5, "lambda_gdl": 0.7, "include_background": False}
    ours = {**kw, "scope": "batch" if batch else "image", "smooth_nr": 1e-5, "smooth_dr": 1e-5}
    theirs = monai.GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True, batch=batch, **kw)
    got = ref.generalized_dice_focal_loss(x, y, sigmoid_focal=True, **ours)
    _close(got, theirs(x, y.unsqueeze(1)))
    t = (torch.rand(x.shape, generator=gen) < 0.4).to(D)
    theirs = monai.GeneralizedDiceFocalLoss(sigmoid=True, batch=batch, **kw)(x, t)
    _close(ref.generalized_dice_focal_loss(x, t, "multilabel", alpha=None, **ours), theirs)


@pytest.mark.parametrize("batch", [False, True])
def test_monai_softmax_generalized_dice_focal(monai, batch, gen):
    x, y = _inputs(gen, C=5)
    theirs = monai.GeneralizedDiceFocalLoss(
        softmax=True, to_onehot_y=True, gamma=1.5, lambda_gdl=0.7, batch=batch
    )(x, y.unsqueeze(1))
    ours = ref.generalized_dice_focal_loss(
        x, y, gamma=1.5, lambda_gdl=0.7, sigmoid_focal=True, smooth_nr=1e-5, smooth_dr=1e-5,
        scope="batch" if batch else "image",
    )  # fmt: skip
    _close(ours, theirs)


@pytest.mark.parametrize("spatial", [(9, 11), (4, 5, 6)], ids=["2d", "3d"])
def test_monai_hausdorff_dt(monai, spatial, gen):
    """MONAI's HausdorffDTLoss (scipy's EDT on the CPU, one map at a time) is ours with
    the default classes (no background) for one-hot labels, every channel for sigmoid;
    on probabilities (its default of no activation) with ``from_logits=False``, loss
    and gradient."""
    x, y = _inputs(gen, spatial=spatial)
    theirs = monai.HausdorffDTLoss(softmax=True, to_onehot_y=True, alpha=1.5)(x, y.unsqueeze(1))
    _close(ref.hausdorff_dt_loss(x, y, alpha=1.5), theirs)
    t = (torch.rand(x.shape, generator=gen) < 0.5).to(D)
    theirs = monai.HausdorffDTLoss(sigmoid=True, include_background=True)(x, t)
    _close(ref.hausdorff_dt_loss(x, t, mode="multilabel"), theirs)
    for p, target, ours in (
        (torch.softmax(x, 1), y, {"alpha": 1.5}),
        (torch.sigmoid(x), t, {"mode": "multilabel"}),
    ):
        p = p.requires_grad_(True)
        labels = target.dim() < x.dim()
        loss = monai.HausdorffDTLoss(
            alpha=ours.get("alpha", 2.0), to_onehot_y=labels, include_background=not labels
        )
        theirs = loss(p, target.unsqueeze(1) if labels else target)
        mine = ref.hausdorff_dt_loss(p, target, from_logits=False, **ours)
        _close(mine, theirs)
        _close(*(torch.autograd.grad(v, p, retain_graph=True)[0] for v in (mine, theirs)))


def test_monai_log_hausdorff_dt_is_log1p_of_ours(monai, gen):
    """LogHausdorffDTLoss takes ``log(1 + loss)`` of the mean: ``torch.log1p`` of ours,
    in value and gradient."""
    x, y = _inputs(gen)
    x.requires_grad_(True)
    theirs = monai.LogHausdorffDTLoss(softmax=True, to_onehot_y=True)(x, y.unsqueeze(1))
    ours = torch.log1p(ref.hausdorff_dt_loss(x, y))
    _close(ours, theirs)
    _close(*(torch.autograd.grad(v, x)[0] for v in (ours, theirs)))


@pytest.mark.parametrize(
    ("spatial", "spacing"),
    [((30, 41), (0.7, 1.3)), ((9, 12, 14), (2.0, 1.0, 0.5))],
    ids=["2d", "3d"],
)
def test_monai_hausdorff_distance(spatial, spacing, gen):
    """MONAI's compute_hausdorff_distance (one-hot inputs, surfaces by erosion, scipy's EDT
    per map) is ours, HD and HD95, symmetric and directed, where a class is in both
    masks, and for the maximum everywhere (inf where a class is in one mask only); for a
    percentile MONAI gives NaN there (left out of its means), and we inf. Its
    ``include_background=False`` is our ``classes`` without 0."""
    from monai.metrics import compute_hausdorff_distance

    C = 3
    pred, target = (smooth_labels(gen, C, (2, *spatial)) for _ in range(2))
    pred[0][pred[0] == 2] = 1  # class 2 missed in image 0
    one_hot = [F.one_hot(t, C).movedim(-1, 1) for t in (pred, target)]
    both = one_hot[0].flatten(2).any(-1) & one_hot[1].flatten(2).any(-1)
    assert both.sum() >= 4
    for percentile in (None, 95):
        for directed in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = compute_hausdorff_distance(
                    *one_hot, True, percentile=percentile, directed=directed, spacing=spacing
                ).double()
            ours = ref.hausdorff_distance(pred, target, C, percentile, directed, spacing)
            # MONAI works in float32
            torch.testing.assert_close(ours[both], theirs[both], rtol=1e-5, atol=1e-5)
            assert ours[0, 2] == torch.inf
            assert torch.isnan(theirs[0, 2]) if percentile else theirs[0, 2] == torch.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = compute_hausdorff_distance(*one_hot, False, spacing=spacing).double()
    ours = ref.hausdorff_distance(pred, target, C, spacing=spacing, classes=[1, 2])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("spatial", "spacing"),
    [((30, 41), (0.7, 1.3)), ((9, 12, 14), (2.0, 1.0, 0.5))],
    ids=["2d", "3d"],
)
def test_monai_surface_distance_and_surface_dice(spatial, spacing, gen):
    """MONAI's compute_average_surface_distance (``symmetric=True`` is our default,
    ``False`` our ``directed``) and compute_surface_dice (``class_thresholds`` is our
    ``tolerance``) are ours, absent classes included (inf, and 0 for the surface Dice)."""
    from monai.metrics import compute_average_surface_distance, compute_surface_dice

    C = 3
    pred, target = (smooth_labels(gen, C, (2, *spatial)) for _ in range(2))
    pred[0][pred[0] == 2] = 1  # class 2 missed in image 0
    one_hot = [F.one_hot(t, C).movedim(-1, 1) for t in (pred, target)]
    tolerance = [1.25, 2.1, 0.8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for symmetric in (True, False):
            theirs = compute_average_surface_distance(
                *one_hot, True, symmetric=symmetric, spacing=spacing
            )
            ours = ref.average_surface_distance(pred, target, C, not symmetric, spacing)
            torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5)
            assert ours[0, 2] == torch.inf
        theirs = compute_surface_dice(*one_hot, tolerance[1:], spacing=spacing)
    ours = ref.surface_dice(pred, target, C, tolerance, spacing, classes=[1, 2])
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5)
    assert ours[0, 1] == 0


# MONAI 1.6.1's surface distances pass get_mask_edges an argument MONAI itself deprecates
@pytest.mark.filterwarnings("ignore:monai.metrics.utils get_mask_edges:FutureWarning")
def test_monai_surface_metrics_of_overlapping_masks(gen):
    """MONAI's surface metrics take one binary mask per channel, which may overlap
    (BraTS's nested tumour regions): ours with ``mode='multilabel'``."""
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    pred, target = (nested_masks(gen, (2, 11, 13, 9)).bool() for _ in range(2))
    spacing = (1.0, 1.5, 2.0)
    opts = {"spacing": spacing, "mode": "multilabel"}
    pairs = [
        (compute_hausdorff_distance(pred, target, True, percentile=95, spacing=spacing),
         ref.hausdorff_distance(pred, target, 3, 95, **opts)),
        (compute_average_surface_distance(pred, target, True, symmetric=True, spacing=spacing),
         ref.average_surface_distance(pred, target, 3, **opts)),
        (compute_surface_dice(pred, target, [2.0] * 3, include_background=True, spacing=spacing),
         ref.surface_dice(pred, target, 3, 2.0, **opts)),
    ]  # fmt: skip
    for theirs, ours in pairs:
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5)


def test_monai_dice_metric_without_background(gen):
    """MONAI's DiceMetric(include_background=False) over one-hot label maps: per class
    over images ('mean_batch') is ours with ``average='image'`` and ``classes=range(1,
    C)``. Every class is in every target, so MONAI's ``ignore_empty`` drops nothing."""
    from monai.metrics import DiceMetric

    C = 4
    pred, target = (torch.randint(0, C, (3, 12, 13), generator=gen) for _ in range(2))
    target[:, 0, :C] = torch.arange(C)
    acc = DiceMetric(include_background=False, reduction="mean_batch")
    acc(*(F.one_hot(x, C).movedim(-1, 1) for x in (pred, target)))
    ours = ref.segmentation_metrics(pred, target, C, average="image", classes=range(1, C))
    torch.testing.assert_close(ours["dice"], acc.aggregate().double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("background", [True, False])
def test_monai_generalized_dice_score(background, gen):
    """MONAI's per-image generalized Dice (weights 1 / T_c^2; a class missing from an
    image's target weighs as its heaviest present class) averaged over images is ours
    with ``average='image'``; ``include_background=False`` is ``classes=range(1, C)``."""
    from monai.metrics import compute_generalized_dice

    C = 5
    pred = torch.randint(0, C, (4, 9, 11), generator=gen)
    target = torch.randint(0, C - 1, (4, 9, 11), generator=gen)  # class 4: in no target
    target[0, 0, :2] = 4  # but image 0's
    hot = [F.one_hot(x, C).movedim(-1, 1) for x in (pred, target)]
    theirs = compute_generalized_dice(*hot, background, sum_over_classes=True).mean()
    classes = range(C) if background else range(1, C)
    ours = ref.segmentation_metrics(pred, target, C, average="image", classes=classes)
    torch.testing.assert_close(ours["generalized_dice"], theirs.double(), rtol=1e-6, atol=1e-6)


def test_monai_dice_and_iou_metrics_of_overlapping_masks(gen):
    """MONAI's DiceMetric and MeanIoU over one mask per channel, averaged per class over
    images (``reduction='mean_batch'``), are our multilabel metrics with
    ``average='image'``. Every (image, channel) has target pixels: where it has none,
    MONAI's ``ignore_empty`` drops the image and ours scores its false positives as 0."""
    from monai.metrics import DiceMetric, MeanIoU

    pred, target = (nested_masks(gen, (3, 11, 13, 9)).bool() for _ in range(2))
    target[:, :, 5, 6, 4] = True
    ours = ref.segmentation_metrics(pred, target, 3, average="image", mode="multilabel")
    for key, metric in (("dice", DiceMetric), ("iou", MeanIoU)):
        acc = metric(include_background=True, reduction="mean_batch")
        acc(pred, target)
        torch.testing.assert_close(ours[key], acc.aggregate().double(), rtol=1e-6, atol=1e-6)


# --- kornia 0.9.0 ----------------------------------------------------------------------


def test_kornia_softmax_focal_is_ours_over_c(kornia, gen):
    x, y = _inputs(gen)
    theirs = kornia.focal_loss(x, y, alpha=None, gamma=2.0, reduction="mean")
    _close(ref.softmax_focal_loss(x, y, gamma=2.0) / x.shape[1], theirs)


def test_kornia_focal_with_ignore_index(kornia, gen):
    """Its 'sum' is ours; its 'mean' divides that by every pixel, ignored or not, and by C."""
    x, y = _inputs(gen, ignore=True)
    ours = ref.softmax_focal_loss(x, y, ignore_index=255, reduction="sum")
    for reduction, divisor in (("sum", 1), ("mean", y.numel() * x.shape[1])):
        theirs = kornia.focal_loss(x, y, alpha=None, reduction=reduction, ignore_index=255)
        _close(ours / divisor, theirs)


def test_kornia_binary_focal_one_vs_rest(kornia, gen):
    x, y = _inputs(gen)
    onehot = F.one_hot(y, x.shape[1]).movedim(-1, 1).to(D)
    theirs = kornia.binary_focal_loss_with_logits(
        x, onehot, alpha=0.25, gamma=2.0, reduction="mean"
    )
    _close(ref.sigmoid_focal_loss(x, y, mode="multiclass", alpha=0.25, gamma=2.0), theirs)


def test_kornia_binary_focal_pos_weight_and_weight(kornia, gen):
    """kornia weighs positives by ``alpha pos_weight_c w_c`` and negatives by ``(1 - alpha)
    w_c``: ours with the per-class pair ``weight = w (alpha pw + 1 - alpha)``,
    ``alpha = alpha pw / (alpha pw + 1 - alpha)``."""
    x = 2 * torch.randn(2, 3, 6, 7, generator=gen, dtype=D)
    t = nested_masks(gen, (2, 6, 7)).to(D)
    pw, w = torch.tensor([0.5, 2.0, 4.0], dtype=D), torch.tensor([1.0, 0.3, 2.0], dtype=D)
    theirs = kornia.binary_focal_loss_with_logits(
        x, t, alpha=0.25, gamma=1.5, pos_weight=pw, weight=w, reduction="mean"
    )
    pos, neg = 0.25 * pw, 0.75
    ours = ref.sigmoid_focal_loss(
        x, t, mode="multilabel", alpha=pos / (pos + neg), gamma=1.5, weight=w * (pos + neg)
    )
    _close(ours, theirs)


def test_kornia_tversky_macro_over_present_classes(kornia, gen):
    x, y = _inputs(gen, C=5, spatial=(4, 5))
    y[1] = y[1].clamp_max(1)  # image 1 holds two of five classes
    theirs = kornia.tversky_loss(x, y, alpha=0.3, beta=0.7, eps=1e-8)
    ours = ref.tversky_loss(
        x, y, alpha=0.3, beta=0.7, scope="image", absent="exclude", smooth_dr=1e-8
    )
    _close(ours, theirs)


def test_kornia_dice_macro(kornia, gen):
    x, y = _inputs(gen, C=5, spatial=(4, 5), ignore=True)
    y[1] = torch.where(y[1] == 255, y[1], y[1].clamp_max(2))
    theirs = kornia.dice_loss(x, y, average="macro", eps=1e-8, ignore_index=255)
    ours = ref.dice_loss(x, y, scope="image", absent="exclude", smooth_dr=1e-8, ignore_index=255)
    _close(ours, theirs)


def test_kornia_lovasz_softmax_per_image_all_classes(kornia, gen):
    x, y = _inputs(gen)
    theirs = kornia.lovasz_softmax_loss(x, y)
    _close(ref.lovasz_softmax_loss(x, y, classes="all", per_image=True), theirs)


def test_kornia_lovasz_hinge_per_image(kornia, gen):
    x = torch.randn(3, 1, 5, 6, generator=gen, dtype=D)
    t = (torch.rand(3, 5, 6, generator=gen) < 0.5).long()
    theirs = kornia.lovasz_hinge_loss(x, t)
    _close(ref.lovasz_hinge_loss(x, t.to(D), per_image=True), theirs)


@pytest.mark.parametrize("spatial", [(9, 10), (5, 6, 7)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kornia_hausdorff_er(kornia, spatial, reduction, gen):
    """kornia's HausdorffERLoss (3-D: HausdorffERLoss3D) on softmax probabilities and
    labels is ours, loss and gradient, for its defaults and for other ``alpha`` and ``k``
    (ours from the logits, and on the same probabilities with ``from_logits=False``).
    kornia keeps its kernel as a float32 buffer (1/5 rounded to float32); the test gives
    it float64 weights, so that only the two computations differ. Its 'none' is ``[C, B,
    1, *S]``, ours ``[B, C, *S]``."""
    x, y = _inputs(gen, C=3, spatial=spatial)
    w = torch.randn(x.shape, generator=gen, dtype=D)  # a weighting for 'none'
    cls = kornia.HausdorffERLoss if len(spatial) == 2 else kornia.HausdorffERLoss3D
    for opts in ({}, {"alpha": 1.5, "k": 4}):
        loss = cls(reduction=reduction, **opts)
        cross = loss.kernel != 0
        loss.kernel = cross.to(D) / cross.sum()
        z = x.clone().requires_grad_(True)
        theirs = loss(torch.softmax(z, 1), y.unsqueeze(1))
        if reduction == "none":
            theirs = theirs.squeeze(2).movedim(0, 1)
        (want,) = torch.autograd.grad((theirs * w).sum(), z)
        z = x.clone().requires_grad_(True)
        kw = {"alpha": opts.get("alpha", 2.0), "iterations": opts.get("k", 10)}
        got = ref.hausdorff_er_loss(z, y, reduction=reduction, **kw)
        (grad,) = torch.autograd.grad((got * w).sum(), z)
        _close(got, theirs)
        _close(grad, want)
        p = torch.softmax(x, dim=1).requires_grad_(True)
        theirs = loss(p, y.unsqueeze(1))
        if reduction == "none":
            theirs = theirs.squeeze(2).movedim(0, 1)
        ours = ref.hausdorff_er_loss(p, y, reduction=reduction, from_logits=False, **kw)
        _close(ours, theirs)
        (want,) = torch.autograd.grad((theirs * w).sum(), p, retain_graph=True)
        (grad,) = torch.autograd.grad((ours * w).sum(), p)
        _close(grad, want)


# --- segmentation_models_pytorch 0.6.0 -------------------------------------------------

SMP_REGION = {
    "DiceLoss": (ref.dice_loss, {}),
    "JaccardLoss": (ref.jaccard_loss, {}),
    "TverskyLoss": (ref.tversky_loss, {"alpha": 0.3, "beta": 0.7}),
}


@pytest.mark.parametrize("name", SMP_REGION)
def test_smp_region_losses(smp, name, gen):
    x, y = _inputs(gen, C=5, ignore=True)
    y = torch.where(y == 4, 3, y)  # class 4 absent from the batch: smp zeroes its loss
    fn, kw = SMP_REGION[name]
    theirs = getattr(smp, name)("multiclass", ignore_index=255, **kw)(x, y)
    _close(fn(x, y, scope="batch", absent="zero", ignore_index=255, **kw), theirs)


@pytest.mark.parametrize("mode", ["multilabel", "binary"])
@pytest.mark.parametrize("name", SMP_REGION)
def test_smp_region_losses_on_soft_masks(smp, name, mode, gen):
    """smp computes I as ``(P + T - sum |p - g|) / 2`` always: on soft masks that is our
    ``soft_label=True`` (loss and gradient), with ignored entries dropped."""
    C = 3 if mode == "multilabel" else 1
    x = torch.randn(2, C, 6, 7, generator=gen, dtype=D, requires_grad=True)
    t = torch.rand(x.shape, generator=gen, dtype=D)
    t = t.masked_fill(torch.rand(x.shape, generator=gen) < 0.2, 255)
    fn, kw = SMP_REGION[name]
    theirs = getattr(smp, name)(mode, ignore_index=255, **kw)(x, t)
    ours = fn(x, t, mode=mode, absent="zero", ignore_index=255, soft_label=True, **kw)
    _close(ours, theirs)
    _close(*(torch.autograd.grad(loss, x, retain_graph=True)[0] for loss in (ours, theirs)))


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("name", SMP_REGION)
def test_smp_region_losses_on_probabilities(smp, name, mode, gen):
    """smp's ``from_logits=False`` is ours: loss and gradient with respect to the
    probabilities, ignored pixels (entries) dropped."""
    z = 2 * torch.randn(2, 4, 6, 7, generator=gen, dtype=D)
    p = (torch.softmax(z, dim=1) if mode == "multiclass" else torch.sigmoid(z)).requires_grad_()
    if mode == "multiclass":
        y = torch.randint(0, 4, (2, 6, 7), generator=gen)
    else:
        y = (torch.rand(p.shape, generator=gen) < 0.4).to(D)
    y = y.masked_fill(torch.rand(y.shape, generator=gen) < 0.2, 255)
    fn, kw = SMP_REGION[name]
    theirs = getattr(smp, name)(mode, from_logits=False, ignore_index=255, **kw)(p, y)
    ours = fn(p, y, mode=mode, absent="zero", ignore_index=255, from_logits=False, **kw)
    _close(ours, theirs)
    _close(*(torch.autograd.grad(loss, p, retain_graph=True)[0] for loss in (ours, theirs)))


def test_smp_focal_tversky_after_mean(smp, gen):
    x, y = _inputs(gen)
    theirs = smp.TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=0.75)(x, y)
    ours = ref.focal_tversky_loss(
        x, y, alpha=0.3, beta=0.7, gamma=0.75, gamma_after_mean=True, absent="zero"
    )
    _close(ours, theirs)


def test_smp_multiclass_focal_is_one_vs_rest_sigmoid(smp, gen):
    x, y = _inputs(gen, ignore=True)
    theirs = smp.FocalLoss("multiclass", ignore_index=255)(x, y)
    _close(ref.sigmoid_focal_loss(x, y, mode="multiclass", alpha=None, ignore_index=255), theirs)


def test_smp_lovasz(smp, gen):
    # smp's Lovasz fails on float64 (a dtype bug in its dot product): it runs in fp32 here,
    # ours in float64 on the same (fp32-representable) values.
    x, y = _inputs(gen, ignore=True)
    x = x.float()
    theirs = smp.LovaszLoss("multiclass", ignore_index=255)(x, y)
    ours = ref.lovasz_softmax_loss(x.double(), y, ignore_index=255)
    torch.testing.assert_close(ours, theirs.to(D), rtol=1e-5, atol=1e-7)
    # smp 0.6.0's LovaszLoss takes the softmax whatever its from_logits says; its
    # _lovasz_softmax (Berman's function) takes probabilities: ours with from_logits=False
    p = torch.softmax(x, dim=1)
    ignored = smp.LovaszLoss("multiclass", ignore_index=255, from_logits=False)(x, y)
    torch.testing.assert_close(ignored, theirs)
    berman = importlib.import_module(smp.LovaszLoss.__module__)._lovasz_softmax
    ours = ref.lovasz_softmax_loss(p.double(), y, ignore_index=255, from_logits=False)
    torch.testing.assert_close(ours, berman(p, y, ignore=255).to(D), rtol=1e-5, atol=1e-7)
    xb = torch.randn(2, 1, 5, 6, generator=gen)
    tb = (torch.rand(2, 1, 5, 6, generator=gen) < 0.5).float()
    theirs = smp.LovaszLoss("binary")(xb, tb)
    torch.testing.assert_close(
        ref.lovasz_hinge_loss(xb.double(), tb), theirs.to(D), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("per_image", [False, True])
def test_smp_multilabel_lovasz_pools_the_channels(smp, per_image, gen):
    """smp's LovaszLoss('multilabel') is one hinge over every (pixel, channel) entry of the
    batch (or of each image): ours with mode='multilabel'."""
    x = torch.randn(2, 3, 5, 6, generator=gen)
    t = nested_masks(gen, (2, 5, 6)).float()
    t[0, 1, :2] = 255  # ignored entries
    theirs = smp.LovaszLoss("multilabel", per_image=per_image, ignore_index=255)(x, t)
    ours = ref.lovasz_hinge_loss(
        x.double(), t, mode="multilabel", per_image=per_image, ignore_index=255
    )
    torch.testing.assert_close(ours, theirs.to(D), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spatial", [(9, 11), (3, 5, 7)], ids=["2d", "3d"])
def test_smp_mcc_is_binary_batch_mcc_on_probabilities(smp, spatial, gen):
    """smp's MCCLoss takes probabilities and pools the batch: ours on the logits, or on the
    probabilities with ``from_logits=False``; its gradient too."""
    x = (2 * torch.randn(3, 1, *spatial, generator=gen, dtype=D)).requires_grad_(True)
    t = (torch.rand(x.shape, generator=gen) < 0.3).to(D)
    p = torch.sigmoid(x)
    theirs = smp.MCCLoss()(p, t)
    ours = ref.mcc_loss(x, t, mode="binary")
    _close(ours, theirs)
    _close(*(torch.autograd.grad(loss, x, retain_graph=True)[0] for loss in (ours, theirs)))
    on_p = ref.mcc_loss(p, t, mode="binary", from_logits=False)  # its own input form
    _close(on_p, theirs)
    _close(*(torch.autograd.grad(loss, p, retain_graph=True)[0] for loss in (on_p, theirs)))


def test_smp_soft_cross_entropy_is_label_smoothing(smp, gen):
    """Without ignored pixels (smp averages over them too, we do not)."""
    x, y = _inputs(gen)
    theirs = smp.SoftCrossEntropyLoss(smooth_factor=0.1)(x, y)
    _close(ref.cross_entropy(x, y, label_smoothing=0.1), theirs)


def test_smp_soft_bce_is_bce_with_label_smoothing(smp, gen):
    """SoftBCEWithLogitsLoss(smooth_factor=s) is our label_smoothing=s, the same as BCE of
    the soft target ``t (1 - 2s) + s``; pos_weight is ours per class. With ignored
    elements smp's mean counts them too, so their 'sum's are compared."""
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=D)
    t = (torch.rand(x.shape, generator=gen) < 0.4).to(D)
    s, pw = 0.1, [2.0, 1.0, 0.5]
    theirs = smp.SoftBCEWithLogitsLoss(smooth_factor=s)(x, t)
    _close(ref.binary_cross_entropy_with_logits(x, t, label_smoothing=s), theirs)
    _close(ref.binary_cross_entropy_with_logits(x, t * (1 - 2 * s) + s), theirs)
    theirs = smp.SoftBCEWithLogitsLoss(pos_weight=torch.tensor(pw, dtype=D).view(1, 3, 1, 1))(x, t)
    _close(ref.binary_cross_entropy_with_logits(x, t, pos_weight=pw), theirs)
    t[torch.rand(x.shape, generator=gen) < 0.2] = 255
    theirs = smp.SoftBCEWithLogitsLoss(smooth_factor=s, ignore_index=255, reduction="sum")(x, t)
    ours = ref.binary_cross_entropy_with_logits(
        x, t, ignore_index=255, reduction="sum", label_smoothing=s
    )
    _close(ours, theirs)


# --- torchmetrics 1.9.0 ----------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(9, 11), (3, 5, 7)], ids=["2d", "3d"])
@pytest.mark.parametrize("C", [2, 19, 150])
def test_torchmetrics_confusion_and_jaccard(C, spatial, gen):
    from torchmetrics.classification import (
        BinaryMatthewsCorrCoef,
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassJaccardIndex,
        MulticlassMatthewsCorrCoef,
        MulticlassPrecision,
        MulticlassRecall,
        MulticlassSpecificity,
    )

    logits = torch.randn(2, C, *spatial, generator=gen)
    y = torch.randint(0, C, (2, *spatial), generator=gen)
    y = y.masked_fill(torch.rand(y.shape, generator=gen) < 0.1, 255)
    pred = logits.argmax(1)
    kw = {"num_classes": C, "ignore_index": 255}
    cm = ref.confusion_matrix(logits, y, C, ignore_index=255)
    assert torch.equal(cm, MulticlassConfusionMatrix(**kw)(pred, y))
    m = ref.segmentation_metrics(pred, y, C, ignore_index=255)
    theirs = MulticlassJaccardIndex(average="none", **kw)(pred, y).to(D)
    present = ~torch.isnan(m["iou"])
    torch.testing.assert_close(m["iou"][present], theirs[present], **TOL)
    assert (theirs[~present] == 0).all()  # torchmetrics gives 0 where we give NaN
    macro = MulticlassJaccardIndex(average="macro", **kw)(pred, y)
    torch.testing.assert_close(m["miou"], macro.to(D), **TOL)
    micro = MulticlassAccuracy(average="micro", **kw)(pred, y)
    torch.testing.assert_close(m["pixel_accuracy"], micro.to(D), **TOL)
    # per class, where both define it (they give 0 where we give NaN)
    for key, metric in [("precision", MulticlassPrecision), ("class_accuracy", MulticlassRecall),
                        ("dice", MulticlassF1Score),
                        ("specificity", MulticlassSpecificity)]:  # fmt: skip
        theirs = metric(average="none", **kw)(pred, y).to(D)
        ours = m[key]
        defined = ~torch.isnan(ours)
        assert defined.any() and (theirs[~defined] == 0).all(), key
        torch.testing.assert_close(ours[defined], theirs[defined], **TOL)
    # MCC per class: the binary MCC of the class against the rest over the counted pixels
    counted = y != 255
    defined = (~torch.isnan(m["mcc"])).nonzero().flatten()[:8]
    assert len(defined) > 0
    for c in defined.tolist():
        theirs = BinaryMatthewsCorrCoef()((pred[counted] == c).long(), (y[counted] == c).long())
        torch.testing.assert_close(m["mcc"][c], theirs.to(D), rtol=1e-5, atol=1e-7)
    # their multiclass MCC (Gorodkin's R_K) is our overall one; at C = 2 that of either class
    theirs = MulticlassMatthewsCorrCoef(**kw)(pred, y).to(D)
    torch.testing.assert_close(m["overall_mcc"], theirs, rtol=1e-5, atol=1e-7)
    if C == 2:
        torch.testing.assert_close(m["mcc"], theirs.expand(2), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("background", [True, False])
def test_torchmetrics_segmentation_mean_iou_and_dice_score(background, gen):
    """torchmetrics.segmentation's MeanIoU(per_class=True) and DiceScore score each image
    and average over images: ours with ``average='image'``; ``include_background=False``
    is ``classes=range(1, C)``. Every class is in every target (where one is in neither
    mask of an image they count a number, we NaN)."""
    from torchmetrics.segmentation import DiceScore, GeneralizedDiceScore, MeanIoU

    C = 4
    pred, target = (torch.randint(0, C, (3, 12, 13), generator=gen) for _ in range(2))
    target[:, 0, :C] = torch.arange(C)
    kw = {"num_classes": C, "include_background": background, "input_format": "index"}
    classes = range(C) if background else range(1, C)
    ours = ref.segmentation_metrics(pred, target, C, average="image", classes=classes)
    pairs = [
        (MeanIoU(per_class=True, **kw), ours["iou"]),
        (DiceScore(average="none", **kw), ours["dice"]),
        (DiceScore(average="macro", **kw), ours["mdice"]),
        (GeneralizedDiceScore(**kw), ours["generalized_dice"]),
    ]
    for metric, mine in pairs:
        metric.update(pred, target)
        torch.testing.assert_close(mine, metric.compute().double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spatial", [(9, 11), (4, 5, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("include_background", [True, False])
def test_monai_cldice(monai, spatial, include_background, gen):
    """MONAI's SoftclDiceLoss (max-pool skeletons) is ours per image, loss and gradient:
    one-hot labels with softmax, masks with sigmoid, and probabilities without an
    activation (its default: ours with ``from_logits=False``); its SoftDiceclDiceLoss is
    the mix ``(1 - alpha)`` Dice (smoothing 1, per image) ``+ alpha`` clDice."""
    x, y = _inputs(gen, spatial=spatial)
    t = (torch.rand(x.shape, generator=gen) < 0.5).to(D)
    flag = {"include_background": include_background}
    cases = [
        (monai.SoftclDiceLoss(softmax=True, to_onehot_y=True, iter_=2, **flag), y.unsqueeze(1),
         lambda z: ref.cldice_loss(z, y, iterations=2, **flag)),
        (monai.SoftclDiceLoss(sigmoid=True, reduction="none", **flag), t,
         lambda z: ref.cldice_loss(z, t, mode="multilabel", reduction="none", **flag)),
        (monai.SoftDiceclDiceLoss(softmax=True, to_onehot_y=True, alpha=0.3, **flag),
         y.unsqueeze(1),
         lambda z: 0.7 * ref.dice_loss(z, y, scope="image", smooth_nr=1, smooth_dr=1, **flag)
         + 0.3 * ref.cldice_loss(z, y, **flag)),
    ]  # fmt: skip
    for loss, target, ours in cases:
        z = x.clone().requires_grad_(True)
        theirs = loss(z, target)
        (want,) = torch.autograd.grad(theirs.sum(), z)
        z = x.clone().requires_grad_(True)
        got = ours(z)
        (grad,) = torch.autograd.grad(got.sum(), z)
        _close(got, theirs)
        _close(grad, want)
    p = torch.softmax(x, dim=1).requires_grad_(True)
    theirs = monai.SoftclDiceLoss(to_onehot_y=True, **flag)(p, y.unsqueeze(1))
    ours = ref.cldice_loss(p, y, from_logits=False, **flag)
    _close(ours, theirs)
    _close(*(torch.autograd.grad(loss, p, retain_graph=True)[0] for loss in (ours, theirs)))
