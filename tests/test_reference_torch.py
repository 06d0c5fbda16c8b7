"""Pixel-wise references against torch.nn.functional (the semantics users know)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segtriton import reference as ref

D = torch.float64


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("C", [1, 2, 3, 19])
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_cross_entropy_is_bit_identical_to_torch_in_float64(
    reduction, smoothing, weighted, C, label_dtype, gen
):
    x = 3 * torch.randn(2, C, 5, 7, generator=gen, dtype=D)
    y = torch.randint(0, C, (2, 5, 7), generator=gen)
    y = y.masked_fill(torch.rand(y.shape, generator=gen) < 0.3, 255).to(label_dtype)
    w = torch.rand(C, generator=gen, dtype=D) + 0.1 if weighted else None
    ours = ref.cross_entropy(
        x, y, weight=w, ignore_index=255, reduction=reduction, label_smoothing=smoothing
    )
    theirs = F.cross_entropy(
        x, y.long(), weight=w, ignore_index=255, reduction=reduction, label_smoothing=smoothing
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_with_probabilities_is_torchs(reduction, smoothing, weighted, gen):
    """A floating target of the logits' shape holds class probabilities, as in
    F.cross_entropy, which takes its default ignore_index (-100) beside it and refuses
    another value; so does the reference."""
    x = 3 * torch.randn(2, 5, 4, 6, generator=gen, dtype=D)
    probs = torch.softmax(2 * torch.randn(2, 5, 4, 6, generator=gen, dtype=D), dim=1)
    w = torch.rand(5, generator=gen, dtype=D) + 0.1 if weighted else None
    opts = {"weight": w, "reduction": reduction, "label_smoothing": smoothing}
    theirs = F.cross_entropy(x, probs, **opts)
    assert torch.equal(ref.cross_entropy_probs(x, probs, **opts), theirs)
    assert torch.equal(ref.cross_entropy(x, probs, **opts), theirs)
    with pytest.raises(RuntimeError, match="ignore_index"):
        F.cross_entropy(x, probs, ignore_index=255, **opts)
    with pytest.raises(ValueError, match="ignore_index applies to integer labels"):
        ref.cross_entropy(x, probs, ignore_index=255, **opts)
    y = torch.randint(0, 5, (2, 4, 6), generator=gen)
    one_hot = F.one_hot(y, 5).movedim(-1, 1).to(D)
    if not (weighted and reduction == "mean"):  # there torch divides by N, not sum w_y
        torch.testing.assert_close(
            ref.cross_entropy(x, one_hot, **opts), ref.cross_entropy(x, y, **opts)
        )
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ref.cross_entropy(x, probs * 3)


def test_cross_entropy_mmseg_divisor_counts_ignored_pixels(gen):
    # mmseg's avg_non_ignore=False: the per-pixel losses averaged over all pixels
    x = torch.randn(2, 4, 6, 6, generator=gen, dtype=D)
    y = torch.randint(0, 4, (2, 6, 6), generator=gen).masked_fill(
        torch.rand(2, 6, 6, generator=gen) < 0.5, 255
    )
    w = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=D)
    ours = ref.cross_entropy(x, y, weight=w, ignore_index=255, avg_non_ignore=False)
    mmseg = F.cross_entropy(x, y, weight=w, ignore_index=255, reduction="none").mean()
    torch.testing.assert_close(ours, mmseg, rtol=1e-14, atol=0)


def test_cross_entropy_all_ignored_matches_torch(gen):
    x = torch.randn(1, 3, 4, 4, dtype=D, requires_grad=True)
    y = torch.full((1, 4, 4), -100)
    ours = ref.cross_entropy(x, y)
    assert torch.isnan(ours) and torch.isnan(F.cross_entropy(x, y))
    (grad,) = torch.autograd.grad(ref.cross_entropy(x, y, reduction="sum"), x)
    assert grad.abs().max() == 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_matches_torch(reduction, gen):
    x = 3 * torch.randn(2, 3, 5, 6, generator=gen, dtype=D)
    t = torch.rand(x.shape, generator=gen, dtype=D)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=D)
    pw = torch.tensor([3.0, 1.0, 0.25], dtype=D)
    ours = ref.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction=reduction)
    theirs = F.binary_cross_entropy_with_logits(
        x, t, weight=w.view(1, 3, 1, 1), pos_weight=pw.view(1, 3, 1, 1), reduction=reduction
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_losses_are_finite_when_confident(gamma):
    # p -> 1 exactly in float32 and gamma < 1: no NaN in value or gradient
    x = torch.tensor([[[30.0, -30.0, 1e4, -1e4]]], requires_grad=True)
    t = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])
    loss = ref.sigmoid_focal_loss(x, t, gamma=gamma)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    z = torch.tensor([[[1e4], [0.0], [-1e4]]], requires_grad=True)
    loss = ref.softmax_focal_loss(z, torch.tensor([[0]]), gamma=gamma)
    (g,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_softmax_focal_with_gamma_zero_is_cross_entropy(gen):
    x = torch.randn(2, 5, 4, 4, generator=gen, dtype=D)
    y = torch.randint(0, 5, (2, 4, 4), generator=gen)
    torch.testing.assert_close(ref.softmax_focal_loss(x, y, gamma=0.0), F.cross_entropy(x, y))


@pytest.mark.parametrize("k", [0.5, 10, 37.5, 100])
@pytest.mark.parametrize("options", [{}, {"weight": [0.2, 1.0, 3.0], "label_smoothing": 0.2}])
def test_topk_cross_entropy_is_the_mean_of_torch_topk(k, options, gen):
    """nnU-Net's TopKLoss written with torch: the per-pixel F.cross_entropy (ignored pixels
    0), torch.topk of int(N * k / 100) of them over the whole batch, their mean. Tie-free
    float64 inputs, so the gradient is unique too."""
    x = torch.randn(2, 3, 9, 11, generator=gen, dtype=D).requires_grad_(True)
    y = torch.randint(0, 3, (2, 9, 11), generator=gen)
    y[0, :4] = 255
    w = torch.tensor(options["weight"], dtype=D) if "weight" in options else None
    smoothing = options.get("label_smoothing", 0.0)
    per_pixel = F.cross_entropy(
        x, y, weight=w, ignore_index=255, reduction="none", label_smoothing=smoothing
    )
    want = per_pixel.flatten().topk(max(1, int(y.numel() * k / 100))).values.mean()
    loss = ref.topk_cross_entropy(x, y, k=k, ignore_index=255, **options)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(loss, x)
    (want_grad,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-15)


def test_topk_cross_entropy_shares_ties_equally(gen):
    """Every pixel alike: all N tie, each keeps the share n / N, so the loss and its
    gradient are those of the plain mean whatever k is; k = 100 is the mean over all
    pixels, ignored ones counted as 0. One pixel per image: CPU log-softmax over an inner
    size > 1 rounds vector lanes and the scalar tail apart, which would break the tie."""
    x = torch.randn(1, 4, 1, 1, generator=gen, dtype=D).expand(70, 4, 1, 1).clone()
    x.requires_grad_(True)
    y = torch.full((70, 1, 1), 2)
    (want_grad,) = torch.autograd.grad(F.cross_entropy(x, y), x)
    for k in (3, 10, 50):
        loss = ref.topk_cross_entropy(x, y, k=k)
        torch.testing.assert_close(loss, F.cross_entropy(x, y), rtol=1e-12, atol=0)
        (grad,) = torch.autograd.grad(loss, x)
        torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-17)
    z = torch.randn(70, 4, 1, 1, generator=gen, dtype=D)
    y[:3] = -100
    torch.testing.assert_close(
        ref.topk_cross_entropy(z, y, k=100),
        F.cross_entropy(z, y, reduction="sum") / y.numel(),
        rtol=1e-12,
        atol=0,
    )


@pytest.mark.parametrize("C", [1, 2, 5, 19])
def test_recall_cross_entropy_weighs_classes_by_their_misses(C, gen):
    """Per class, counted one by one: ``w_c = 1 - recall_c`` of the batch's arg-max
    prediction over the valid pixels (0 for a class no valid pixel has), times each
    valid pixel's F.cross_entropy, averaged over the valid pixels."""
    x = torch.randn(2, C, 6, 7, generator=gen, dtype=D).requires_grad_(True)
    y = torch.randint(0, C, (2, 6, 7), generator=gen)
    y[1, :2] = 255
    valid, pred = y != 255, x.detach().argmax(1)
    w = torch.zeros(256, dtype=D)
    for c in range(C):
        n = int(((y == c) & valid).sum())
        w[c] = int(((y == c) & valid & (pred != c)).sum()) / n if n else 0.0
    per_pixel = F.cross_entropy(x, y, ignore_index=255, reduction="none") * w[y]
    want = per_pixel.sum() / valid.sum()
    loss = ref.recall_cross_entropy(x, y, ignore_index=255)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-15)
    (grad,) = torch.autograd.grad(loss, x)
    (want_grad,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-15)
    assert loss.item() > 0 or C == 1
