"""Triton region kernels (Dice, Jaccard, Tversky, focal Tversky, GDL, MCC) against the
float64 reference, loss and gradient.

Runs compiled on a GPU and in Triton's interpreter on CPU (small shapes): every region
registry entry with a kernel over its variants (modes, scopes, absent policies, weights,
squared / log), class counts, dtypes, 2-D/3-D, memory formats and reductions; then binary
soft masks, streamed classes, absent classes, ignore-heavy and all-ignored batches, fp16
sums over a 512x512 image, bad labels, label dtypes, determinism, torch.compile, and the
global (process_group) sums with two gloo processes.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.distributed as dist
import triton
import triton.language as tl
from kernel_checks import (
    CASE_ARGS,
    DEVICE,
    assert_matches,
    confident,
    kernel_cases,
    kernels_of,
    on_two_gloo_ranks,
    reads_probabilities,
    run_with_grad,
    to_channels_last,
    variants_at,
)
from kernel_checks import KERNELS as ALL_KERNELS

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.kernels._finalize_kernels import _log_cosh, _tanh
from segtriton.registry import fit_variant, get, make_inputs

KERNELS = kernels_of("region")


def _inputs(entry, shape, options, dtype, gen, ignore_frac=0.2, soft=True):
    return make_inputs(
        entry, shape, options, dtype, gen, ignore_frac=ignore_frac, soft=soft, device=DEVICE
    )


@pytest.mark.parametrize(CASE_ARGS, kernel_cases(KERNELS, ["mean", "sum", "none"]))
def test_kernel_matches_reference(
    entry, options, C, dtype, spatial, channels_last, reduction, seed, gen
):
    opts = {**options, "reduction": reduction, "ignore_index": 255}
    x, t = _inputs(entry, (2, C, *spatial), opts, dtype, gen)
    if channels_last:
        x = to_channels_last(x)
        if t.dim() == x.dim():
            t = to_channels_last(t)
    assert_matches(entry, x, t, opts, dtype, seed)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_binary_soft_masks(entry, seed, gen):
    opts = {"mode": "binary", "ignore_index": 255}
    x, t = _inputs(entry, (3, 1, 6, 7), opts, torch.float32, gen)
    assert_matches(entry, x, t, opts, torch.float32, seed)
    assert_matches(entry, x, t[:, 0], opts, torch.float32, seed)  # [B, *S] mask for C = 1


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_large_class_count_streams_classes(entry, mode, seed, gen):
    opts = {"mode": mode, "ignore_index": 255, "scope": "image"}
    x, t = _inputs(entry, (2, 300, 3, 5), opts, torch.float32, gen)  # C > 256: chunked
    assert_matches(entry, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize(("entry", "options"), variants_at(KERNELS, 300))
def test_every_variant_streams_classes(entry, options, seed, gen):
    """Every variant (modes, scopes, weights), its per-class vectors repeated to C = 300:
    past 256 classes pass 1 reads them in chunks and the finalize runs over 300."""
    opts = {**options, "ignore_index": 255}
    x, t = _inputs(entry, (2, 300, 3, 5), opts, torch.float32, gen)
    assert_matches(entry, x, t, opts, torch.float32, seed)


def _probability_cases():
    """(entry, options, C) over every multiclass variant of the region entries, its
    per-class vectors repeated to C."""
    return [
        pytest.param(e, fit_variant(v, C), C, id=f"{e.name}-{i}-C{C}")
        for e in KERNELS
        for i, v in enumerate(e.variants)
        for C in (2, 3, 19, 300)
        if v.get("mode", "multiclass") == "multiclass" and "ignore_index" not in v
    ]


@pytest.mark.parametrize(("entry", "options", "C"), _probability_cases())
def test_probability_targets(entry, options, C, seed, gen):
    """Soft class probabilities ``[B, C, *S]`` as the multiclass target (MONAI's
    ``to_onehot_y=False`` form): softmax over the logits (or probabilities as the input),
    the target read as ``g``; C = 300 streams the classes. dtype, layout and reduction
    take turns."""
    k = C % 3
    dtype = (torch.float32, torch.bfloat16, torch.float16)[k]
    x = 2 * torch.randn(2, C, 5, 7, generator=gen)
    x = (x if options.get("from_logits", True) else torch.softmax(x, dim=1)).to(dtype)
    t = torch.softmax(3 * torch.randn(2, C, 5, 7, generator=gen), dim=1)
    x, t = x.to(DEVICE), t.to(dtype).double().to(DEVICE)
    if k == 1:
        x, t = to_channels_last(x), to_channels_last(t)
    reduction = "mean" if options.get("gamma_after_mean") else ("mean", "sum", "none")[k]
    assert_matches(entry, x, t, {**options, "reduction": reduction}, dtype, seed)


@pytest.mark.parametrize(
    "entry", [e for e in ALL_KERNELS if reads_probabilities(e)], ids=lambda e: e.name
)
def test_one_hot_probabilities_equal_labels(entry, gen):
    """A one-hot target, float or bool, gives the loss and gradient of its labels, in the
    kernel and the reference, for every loss that reads class probabilities."""
    x, t = _inputs(entry, (2, 4, 6, 5), {}, torch.float32, gen, ignore_frac=0.0)
    one_hot = torch.nn.functional.one_hot(t, 4).movedim(-1, 1)
    opts = {"scope": "image"} if entry.takes("scope") else {}
    for fn in (entry.reference, entry.kernel):
        loss, grad = run_with_grad(fn, x, t, opts, 1)
        for target in (one_hot.float(), one_hot.bool()):
            loss_p, grad_p = run_with_grad(fn, x, target, opts, 1)
            torch.testing.assert_close(loss_p, loss, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(grad_p, grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("C", [3, 300])
def test_ce_dice_on_probability_targets(C, seed, gen):
    """CE + Dice against class probabilities: the two losses apart (cross-entropy reads
    them as probabilities), equal to the reference."""
    entry = get("ce_dice")
    x = (2 * torch.randn(2, C, 5, 6, generator=gen)).to(DEVICE)
    t = torch.softmax(2 * torch.randn(2, C, 5, 6, generator=gen), dim=1).double().to(DEVICE)
    opts = {"lambda_ce": 0.5, "label_smoothing": 0.1, "scope": "image"}
    assert_matches(entry, x, t, opts, torch.float32, seed)


SOFT_LABEL = [e for e in KERNELS if e.takes("soft_label")]


@pytest.mark.parametrize("C", [3, 300])
@pytest.mark.parametrize("entry", SOFT_LABEL, ids=lambda e: e.name)
def test_soft_label_on_soft_targets(entry, C, seed, gen):
    """``soft_label=True`` (``I = sum min(p, g)``) on class probabilities and on soft
    multilabel masks, per image; C = 300 streams the classes."""
    x = (2 * torch.randn(2, C, 5, 7, generator=gen)).to(DEVICE)
    probs = torch.softmax(2 * torch.randn(2, C, 5, 7, generator=gen, dtype=torch.float64), 1)
    masks = torch.rand(2, C, 5, 7, generator=gen, dtype=torch.float64)
    opts = {"soft_label": True, "scope": "image"}
    if entry.takes("gamma"):
        opts["gamma"] = 1.5
    assert_matches(entry, x, probs.to(DEVICE), opts, torch.float32, seed)
    assert_matches(entry, x, masks.to(DEVICE), {**opts, "mode": "multilabel"}, torch.float32, seed)


@pytest.mark.parametrize("name", ["ce_dice", "bce_dice"])
def test_soft_label_in_compounds(name, seed, gen):
    """CE + Dice on class probabilities and BCE + Dice on soft masks (fused: the pixel
    term rides in the soft-label passes) with ``soft_label=True``."""
    entry = get(name)
    x = (2 * torch.randn(2, 3, 5, 7, generator=gen)).to(DEVICE)
    t = torch.rand(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    if name == "ce_dice":
        t = t / t.sum(1, keepdim=True)
    opts = {"soft_label": True, "scope": "image", "lambda_dice": 2.0}
    assert_matches(entry, x, t.to(DEVICE), opts, torch.float32, seed)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_soft_label_dice_is_zero_where_the_prediction_is_the_target(mode, gen):
    """A target equal to the prediction's probabilities: the soft-label Dice is 0 (the
    product form's is not), and so is the reference's gradient (``dI/dp = 1/2`` where
    ``p = g``: the two halves of ``dL/dI`` and ``dL/dP`` cancel)."""
    x = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        t = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    loss = ref.dice_loss(x, t, mode=mode, soft_label=True)
    (grad,) = torch.autograd.grad(loss, x)
    assert abs(loss.item()) < 1e-12 and grad.abs().max().item() < 1e-12
    xk, tk = x.detach().float().to(DEVICE), t.to(DEVICE)
    assert abs(ker.dice_loss(xk, tk, mode=mode, soft_label=True).item()) < 1e-5
    assert ker.dice_loss(xk, tk, mode=mode).item() > 0.1


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_soft_label_exact_ties_take_half_the_gradient(mode, seed, gen):
    """Where ``p = g`` exactly, ``dI/dp`` is 1/2 in the kernel as in the reference (torch's
    ``minimum`` splits its gradient): zero logits at about 40% of the pixels give
    ``p = 1/4`` (softmax, 4 classes) or 1/2 (sigmoid) exactly in float32 and float64, and
    the target equals p there; elsewhere it is random."""
    shape = (2, 4, 5, 7)
    tie = torch.rand(2, 1, 5, 7, generator=gen) < 0.4
    x = (2 * torch.randn(shape, generator=gen)).masked_fill(tie, 0.0)
    if mode == "multiclass":
        t = torch.softmax(2 * torch.randn(shape, generator=gen, dtype=torch.float64), 1)
        t = torch.where(tie, 0.25, t)
    else:
        t = torch.where(tie, 0.5, torch.rand(shape, generator=gen, dtype=torch.float64))
    opts = {"mode": mode, "soft_label": True, "scope": "image", "reduction": "none"}
    loss, grad = run_with_grad(ker.dice_loss, x.to(DEVICE), t.to(DEVICE), opts, seed)
    want_loss, want_grad = run_with_grad(ref.dice_loss, x.double(), t, opts, seed)
    torch.testing.assert_close(loss.cpu(), want_loss, rtol=2e-5, atol=1e-6)
    scale = want_grad.abs().max().item()
    torch.testing.assert_close(grad.cpu(), want_grad, rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("confident", [False, True])
def test_log_cosh_dice_is_log_cosh_of_dice(confident, seed, gen):
    """Jadon's log-cosh Dice: for one unit and one class, ``log(cosh(L))`` of the Dice loss
    ``L``, with the gradient ``tanh(L)`` times Dice's, in the reference and the kernel.
    Confident logits make L small, where the kernel takes the Taylor series of both."""
    t = (torch.rand(2, 1, 6, 7, generator=gen) < 0.4).double()
    x = torch.randn(2, 1, 6, 7, generator=gen) + (24 * t - 12 if confident else 0)
    x, t = x.float().to(DEVICE), t.to(DEVICE)
    opts = {"mode": "binary"}
    for fn in (ref.dice_loss, ker.dice_loss):
        xx = x.double() if fn is ref.dice_loss else x
        plain, grad = run_with_grad(fn, xx, t, opts)
        loss, grad_lc = run_with_grad(fn, xx, t, {**opts, "log_cosh": True})
        assert (plain < 0.05) == confident
        torch.testing.assert_close(loss, torch.log(torch.cosh(plain)), rtol=1e-5, atol=0)
        torch.testing.assert_close(grad_lc, torch.tanh(plain) * grad, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="choose one"):
        ker.dice_loss(x, t, **opts, log_cosh=True, log_loss=True)


@triton.jit
def _log_cosh_tanh_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + offs, _log_cosh(x), mask=offs < n)
    tl.store(out_ptr + n + offs, _tanh(x), mask=offs < n)


def test_log_cosh_and_tanh_helpers_match_float64(gen):
    """The finalize's ``log(cosh(x))`` and ``tanh(x)`` on both sides of 1/4, where they
    switch from the Taylor series to the closed form (a grid and fresh random points):
    within 1e-6 relative of float64 below it (a wrong sign on either series' last term
    errs by 7e-6 or 3e-5 near 1/4); above it within 5 float32 steps of log 2 absolute,
    where ``log(1 + e) - log 2`` cancels (3e-6 relative at 0.255), plus a few steps of
    the value (log cosh 7.5)."""
    grid = torch.linspace(-0.3, 0.3, 241)
    drawn = 0.6 * torch.rand(200, generator=gen) - 0.3
    x = torch.cat([grid, drawn, torch.tensor([1e-4, 2.0, -7.5])])
    n = x.numel()
    out = torch.empty(2 * n, device=DEVICE)
    _log_cosh_tanh_kernel[(1,)](x.to(DEVICE), out, n, BLOCK=512)
    got = out.cpu().double().view(2, n)
    xd = x.double()
    # log(cosh x) = log1p(2 sinh(x/2)^2): no cancellation at small x in float64
    want = torch.stack([torch.log1p(2 * torch.sinh(xd / 2) ** 2), xd.tanh()])
    series = x.abs() < 0.25
    torch.testing.assert_close(got[:, series], want[:, series], rtol=1e-6, atol=0.0)
    torch.testing.assert_close(got[:, ~series], want[:, ~series], rtol=4e-7, atol=3e-7)


@pytest.mark.parametrize("absent", ["include", "exclude"])
def test_log_cosh_of_a_large_class_loss(absent, gen):
    """All pixels ignored with smooth_nr 1 and smooth_dr 1e-5: the class loss ``1 - D`` is
    about -1e5, where ``cosh`` overflows. Its log-cosh is ``1e5 - 1 - log 2`` in both
    (the reference once gave inf, and NaN once the absent class was excluded); excluded,
    no class is left and the loss is 0."""
    x = torch.randn(2, 1, 5, 7, generator=gen).to(DEVICE)
    t = torch.full((2, 1, 5, 7), 255.0, device=DEVICE)
    opts = {"mode": "binary", "ignore_index": 255, "smooth_nr": 1.0, "smooth_dr": 1e-5}
    opts.update(scope="image", absent=absent, log_cosh=True)
    expected = 0.0 if absent == "exclude" else 1e5 - 1 - math.log(2.0)
    for fn in (ref.dice_loss, ker.dice_loss):
        xx = x.double() if fn is ref.dice_loss else x
        loss, grad = run_with_grad(fn, xx, t, opts)
        torch.testing.assert_close(loss.item(), expected, rtol=1e-6, atol=0.0)
        assert not grad.any()


def test_probability_targets_refuse_ignore_index_and_label_compounds(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    t = torch.softmax(torch.randn(2, 3, 4, 5, generator=gen), dim=1).to(DEVICE)
    for fn in (ref.dice_loss, ker.dice_loss):
        with pytest.raises(ValueError, match="takes none"):
            fn(x, t, ignore_index=255)
    for fn in (ker.focal_dice_loss, ker.topk_dice_loss):
        with pytest.raises((TypeError, ValueError), match="integer (class )?labels"):
            fn(x, t)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ker.dice_loss(x, t * 2, validate=True)


@pytest.mark.parametrize("absent", ["include", "exclude", "zero"])
@pytest.mark.parametrize(
    "entry", [e for e in KERNELS if e.name != "generalized_dice"], ids=lambda e: e.name
)
def test_absent_classes(entry, absent, seed, gen):
    opts = {"absent": absent, "scope": "image", "smooth_nr": 1e-3, "smooth_dr": 1e-3}
    opts = {k: v for k, v in opts.items() if entry.takes(k)}  # the MCC has no smoothing
    x, _ = _inputs(entry, (3, 19, 5, 6), opts, torch.float32, gen)
    t = torch.randint(0, 3, (3, 5, 6), generator=gen).to(DEVICE)  # 16 of 19 classes absent
    t[2] = 1  # and an image holding one class
    assert_matches(entry, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("dice", {"log_loss": True}),
        ("jaccard", {"log_loss": True, "squared": True}),
        ("dice", {"smooth_nr": 1e-5}),
        ("tversky", {"smooth_nr": 1e-5}),
        ("focal_tversky", {"smooth_nr": 1e-5, "gamma": 2.0}),
        ("generalized_dice", {"smooth_nr": 1e-5, "weight_type": "uniform"}),
    ],
)
def test_clamped_ratios(name, options, seed, gen):
    """Classes whose sums fall below eps: class 1 is present with logits near -30 (its
    ratio underflows eps, where log_loss's clamp cuts the gradient), class 2 is absent
    with logits near -30 (P + T below eps: the denominator's clamp cuts it)."""
    entry = get(name)
    opts = {**options, "scope": "image"}
    x = torch.randn(2, 4, 5, 6, generator=gen)
    x[:, 1:3] -= 30.0
    t = torch.randint(0, 4, (2, 5, 6), generator=gen)
    t[t == 2] = 0
    assert_matches(entry, x.to(DEVICE), t.to(DEVICE), opts, torch.float32, seed)


@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "focal_tversky"])
def test_clamped_denominator_with_a_soft_target(name, seed, gen):
    """``P + T < eps`` with ``T > 0`` (faint soft masks, confident negative logits, eps
    0.5): the ratio is ``(a I + smooth_nr) / eps``, so the gradient still flows through
    ``I`` (and only there). With hard labels a clamped class has ``T = 0`` and ``g = 0``
    at every pixel, where the ``I`` term vanishes. Logits in [-7, -5] and masks below
    0.01 keep ``P + T`` under 0.3 for each 30-pixel image."""
    x = (2 * torch.rand(2, 1, 5, 6, generator=gen) - 7.0).to(DEVICE)
    t = (0.01 * torch.rand(2, 1, 5, 6, generator=gen, dtype=torch.float64)).to(DEVICE)
    opts = {"mode": "binary", "soft_label": True, "eps": 0.5, "scope": "image"}
    p = torch.sigmoid(x.double())
    assert ((p + t).sum((1, 2, 3)) < 0.5).all()
    assert_matches(get(name), x, t, opts, torch.float32, seed)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("dice", {}),
        ("jaccard", {}),
        ("tversky", {"alpha": 0.7, "beta": 0.3}),
        ("focal_tversky", {"gamma": 0.5}),
        ("generalized_dice", {"weight_type": "uniform"}),
    ],
)
def test_near_one_ratios_keep_their_digits(name, options, seed, gen):
    """One class under softmax: p = 1 at every valid pixel, so I = P = T and the loss is
    smooth_dr / den (or its root), near 1e-6. Computed as ``1 - r`` in fp32 it kept a digit or
    none (a focal Tversky with gamma 0.5 came out 13% off in a random-option draw); the
    finalize forms ``den - num`` from ``P - I`` and ``T - I`` instead."""
    entry = get(name)
    opts = {**options, "smooth_dr": 1e-4, "ignore_index": 255, "scope": "image"}
    x = torch.randn(2, 1, 5, 7, generator=gen).to(DEVICE).requires_grad_(True)
    t = torch.zeros(2, 5, 7, dtype=torch.long, device=DEVICE)
    t[0, 0] = 255
    loss = entry.kernel(x, t, **opts)
    want = entry.reference(x.detach().double(), t, **opts)
    assert float(want) < 1e-2  # r is within 1e-2 of 1 (gamma 0.5: within 1e-4)
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=0)


# (loss, options, C, form): labels in column tiles (C = 4; whole-class tiles in the
# interpreter), streamed class rows (C = 300, labels on 4 classes, absent classes left out),
# binary and multilabel masks, class-probability targets, probabilities as the input,
# channels_last, and the compounds' pixel terms beside the sums
_CONFIDENT = [
    ("dice", {}, 4, "labels"),
    ("dice", {"log_loss": True}, 4, "labels"),
    ("jaccard", {"soft_label": True}, 4, "labels"),
    ("tversky", {"alpha": 0.3, "beta": 0.7}, 4, "labels"),
    ("focal_tversky", {}, 4, "labels"),
    ("generalized_dice", {}, 4, "labels"),
    ("mcc", {}, 4, "labels"),
    ("mcc", {"mode": "multilabel"}, 4, "labels"),
    ("dice", {}, 4, "channels_last"),
    ("dice", {}, 4, "probabilities"),
    ("dice", {"from_logits": False}, 4, "labels"),
    ("dice", {"mode": "multilabel"}, 4, "labels"),
    ("tversky", {"mode": "binary"}, 1, "labels"),
    ("ce_dice", {}, 4, "labels"),
    ("bce_dice", {}, 4, "labels"),
    ("dice", {"absent": "exclude"}, 300, "labels"),
    ("jaccard", {"absent": "exclude", "log_loss": True}, 300, "labels"),
    ("dice", {"absent": "exclude"}, 300, "probabilities"),
    ("ce_dice", {"absent": "exclude"}, 300, "labels"),
    ("focal_dice", {"absent": "exclude"}, 300, "labels"),
    ("dice", {"squared": True}, 4, "labels"),
    ("dice", {"mode": "multilabel", "squared": True}, 300, "labels"),
]


@pytest.mark.parametrize(
    ("name", "options", "C", "form"),
    _CONFIDENT,
    ids=[f"{n}-{'-'.join(o) or 'default'}-C{c}-{f}" for n, o, c, f in _CONFIDENT],
)
def test_confident_predictions_keep_the_loss_digits(name, options, C, form, seed, gen):
    """Right predictions, ``1 - p`` near 1e-6 (the label's logit 14 ahead; masks at
    logits of +-9): the loss is near 1e-4 (1e-2 at C = 300) and ``F = P - I``, ``M = T -
    I`` are small beside I, P and T. Pass 1 sums F and M as terms of their own, so the
    loss is within 1e-5 of float64, what float32 leaves of ``p = exp(x - m) / s`` at
    logits 14 to 17 apart (their difference's rounding, 1e-6 relative in each p; typically
    2e-7 here). Taken as differences of the float32 sums (as the float32 reference does,
    and pass 1 did) it was 3e-5 to 1e-2 off at C = 4 (the MCC's ``1 - MCC``, 1e-3: the
    finalize forms it without cancelling too). The squared forms are held to 1e-3: ``F +
    M = sum (p - g)^2`` is near ``sum q^2`` where F and M are each near ``sum q`` (``q =
    1 - p``), so they cancel to about eps / q of it."""
    entry = get(name)
    x, t = _inputs(entry, (2, C, 5, 6), options, torch.float32, gen, ignore_frac=0.0, soft=False)
    if entry.target_kind(options) == "labels":
        t = t % 4
    x = confident(entry, options, x, t)
    if form == "probabilities":
        t = torch.nn.functional.one_hot(t, C).movedim(-1, 1).to(torch.float32)
    if options.get("from_logits") is False:
        x = torch.softmax(x, 1)
    if form == "channels_last":
        x = to_channels_last(x)
    loss = entry.kernel(x, t, **options)
    want = entry.reference(x.double(), t, **options)
    assert float(want) < 0.1
    rtol = 1e-3 if options.get("squared") else 1e-5
    torch.testing.assert_close(loss.double(), want, rtol=rtol, atol=0)


def test_focal_tversky_index_above_one(seed, gen):
    """smooth_nr > smooth_dr and confident right logits: TI > 1, so the base 1 - TI is
    clamped to 0, and its power has a zero gradient there."""
    t = torch.randint(0, 3, (2, 5, 6), generator=gen)
    x = 20.0 * torch.nn.functional.one_hot(t, 3).movedim(-1, 1).float()
    x += 0.1 * torch.randn(x.shape, generator=gen)
    entry, x, t = get("focal_tversky"), x.to(DEVICE), t.to(DEVICE)
    opts = {"smooth_nr": 1.0, "gamma": [0.5, 2.0, 1.0], "scope": "image"}
    assert_matches(entry, x, t, opts, torch.float32, seed)
    opts = {"smooth_nr": 1.0, "gamma": 0.75, "gamma_after_mean": True}
    assert_matches(entry, x, t, opts, torch.float32, seed)  # every class clamped: mean 0
    # classes 0, 1 right (TI > 1, clamped), class 2 predicted as class 3: a positive mean
    x4 = 4.0 * torch.nn.functional.one_hot(torch.where(t == 2, 3, t), 4).movedim(-1, 1)
    x4 = x4.float() + 0.1 * torch.randn(x4.shape, generator=gen).to(DEVICE)
    assert_matches(entry, x4, t, {**opts, "smooth_nr": 5.0}, torch.float32, seed)


def test_generalized_dice_absent_weights(seed, gen):
    """Classes 3..18 absent; class 0 rare (the heaviest weight), so leaving it out with a
    class weight of 0 changes the weight the absent classes get under 'max'."""
    entry = get("generalized_dice")
    x = torch.randn(3, 19, 5, 6, generator=gen).to(DEVICE)
    t = torch.randint(1, 3, (3, 5, 6), generator=gen)
    t[:, 0, :2] = 0
    t = t.to(DEVICE)
    no_background = [0.0] + [1.0] * 18
    for absent_weight, scope, weight in itertools.product(
        ["max", "zero"], ["batch", "image"], [None, no_background]
    ):
        opts = {"absent_weight": absent_weight, "scope": scope, "weight": weight}
        assert_matches(entry, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_mcc_degenerate_units(mode, eps, seed, gen):
    """Per image, each MCC corner: a class that fills its image (its denominator is tiny,
    and the gradient is a small difference of large terms), one absent from it (with
    eps = 0 the denominator is 0: MCC 0, zero gradient) and a perfect prediction
    (saturated logits: MCC 1, zero gradient), of a present or an absent class; then the
    same pooled over the batch."""
    entry = get("mcc")
    C = 1 if mode == "binary" else 3
    x = torch.randn(5, C, 5, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, max(C, 2), (5, 5, 7), generator=gen)
    y[1], y[2], y[4] = 1, 0, 0
    onehot = torch.nn.functional.one_hot(y, max(C, 2)).movedim(-1, 1)[:, -C:]
    x[3:] = torch.where(onehot[3:] > 0, 1000.0, -1000.0)
    t = onehot.double() if mode == "binary" else y
    for scope in ("image", "batch"):
        opts = {"mode": mode, "eps": eps, "scope": scope, "reduction": "none"}
        x32, t = x.float().to(DEVICE), t.to(DEVICE)
        loss, _ = assert_matches(entry, x32, t, opts, torch.float32, seed)
        if scope == "image" and mode == "binary":
            assert loss[3].item() == loss[4].item() == 0.0
            assert eps > 0 or loss[2].item() == 1.0


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("margin", [14.0, 21.0, 34.0, 50.0, 90.0, 120.0, 800.0])
def test_mcc_perfect_predictions_of_an_empty_image(margin, eps, mode, seed, gen):
    """Image 0 is all class 0 (class 1 absent), predicted right at every pixel, each
    false probability near ``exp(-margin)``; image 1 holds both classes. Where the
    prediction counts as perfect, the loss of a filling or absent class drops from about
    0.5 (1 with eps = 0) to 0, and kernel and reference must draw that line alike: by 0
    false positives and negatives alone, a float64 reference called image 0's class 0
    perfect from margins near 37 (``T - I`` rounds to 0) and the kernel its class 1 from
    near 87 (the GPU flushes ``p``): losses 0 and 0.5 at 50 and 90, the other way round.
    Both call it perfect from about 28 now (``reference.region.PERFECT_SHARE``), not at
    14 or 21, where only eps > 0 leaves a gradient (with eps = 0 both classes'
    denominators are 0)."""
    entry = get("mcc")
    t = torch.zeros(2, 5, 6, dtype=torch.int64)
    t[1, :2] = 1
    onehot = torch.nn.functional.one_hot(t, 2).movedim(-1, 1).float()
    half = 0.5 if mode == "multiclass" else 1.0  # a softmax of two: the gap counts
    x = half * margin * (2.0 * onehot - 1.0) + 0.5 * torch.rand(onehot.shape, generator=gen)
    target = onehot if mode == "multilabel" else t
    opts = {"mode": mode, "eps": eps, "scope": "image", "reduction": "none"}
    loss, grad = assert_matches(entry, x.to(DEVICE), target.to(DEVICE), opts, torch.float32, seed)
    perfect = math.exp(-margin) < ref.region.PERFECT_SHARE  # from margins near 28
    assert (loss[0] == 0.0).all() == perfect, loss
    assert (grad[0] == 0.0).all() == (perfect or eps == 0.0)


@pytest.mark.parametrize("below, ahead", [(95.0, 0.0), (87.0, 1.0)])
def test_mcc_of_a_class_predicted_below_the_normal_range(below, ahead, seed, gen):
    """eps = 0 and a present class whose logits are ``below`` the others (``ahead`` more
    at its own pixels). At 95 below, its predicted mass ``TP + FP`` is subnormal in
    float32 (near 1e-40), ``1 / (TP + FP)`` overflows, and the gradient came out NaN (a
    random-option draw at fp16 logits times 16 found it). At 87 below (``p`` near 1.6e-38,
    normal) MCC is positive and ``(TP + FP) (TP + FN)`` on counts scaled to sum 1 is
    subnormal, and the GPU's square root (``sqrt.approx.ftz``) flushes it to 0: in the
    interpreter, which now flushes alike, the loss came out inf. The finalize gives such
    a class MCC 0 and no gradient; float64's MCC there is below 1e-18 and its share of
    the gradient far below float32's resolution."""
    entry = get("mcc")
    x = torch.randn(2, 3, 5, 7, generator=gen)
    t = torch.randint(0, 3, (2, 5, 7), generator=gen)
    t[:, 0, 0] = 1
    x[:, 1] += torch.where(t == 1, ahead, 0.0) - below
    opts = {"eps": 0.0, "scope": "image"}
    assert_matches(entry, x.to(DEVICE), t.to(DEVICE), opts, torch.float32, seed)


@pytest.mark.parametrize("eps", [0.0, 1e-40])
@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_mcc_of_an_image_with_nothing_counted(mode, eps, seed, gen):
    """Image 0 all ignored: no false positive or negative, so a perfect prediction (loss
    0, no gradient) for every class, also where its four counts (eps each) sum to 0 or to
    a subnormal 4e-40, whose reciprocal (the counts' scale) is inf in float32."""
    entry = get("mcc")
    x = torch.randn(2, 3, 5, 6, generator=gen)
    t = torch.randint(0, 3, (2, 5, 6), generator=gen)
    if mode == "multilabel":
        t = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).float()
    t[0] = 255
    opts = {"mode": mode, "eps": eps, "scope": "image", "reduction": "none",
            "ignore_index": 255}  # fmt: skip
    loss, grad = assert_matches(entry, x.to(DEVICE), t.to(DEVICE), opts, torch.float32, seed)
    assert loss[0].tolist() == [0.0] * 3
    assert (grad[0] == 0.0).all()


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_ignore_heavy_and_all_ignored(entry, seed, gen):
    for options in ({}, {"mode": "multilabel"}):
        opts = {**options, "ignore_index": 255, "scope": "image"}
        x, t = _inputs(entry, (2, 3, 6, 7), opts, torch.float32, gen, ignore_frac=0.95)
        assert_matches(entry, x, t, opts, torch.float32, seed)
        t_all = torch.full_like(t, 255)
        assert_matches(entry, x, t_all, opts, torch.float32, seed)
        _, grad = run_with_grad(entry.kernel, x, t_all, opts)
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_fp16_sums_over_a_large_image(mode, gen):
    """Sums of 2.6e5 fp16 probabilities stay exact enough in fp32 (peers give NaN or 1)."""
    entry = get("dice")
    C = 2 if mode == "multiclass" else 1
    x, t = _inputs(entry, (1, C, 512, 512), {"mode": mode}, torch.float16, gen, 0.0, False)
    loss = ker.dice_loss(x, t, mode=mode)
    expected = ref.dice_loss(x.double(), t, mode=mode)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_bad_targets_give_nan_or_a_clear_error(mode, gen):
    entry = get("dice")
    x, t = _inputs(entry, (2, 3, 4, 5), {"mode": mode}, torch.float32, gen, 0.0, False)
    if mode == "multiclass":
        t[1, 2, 3] = 7
        message = r"label 7 outside \[0, 3\)"
    else:
        t[1, 2, 3, 4] = 3.0
        message = r"outside \[0, 1\]"
    for entry in KERNELS:
        assert torch.isnan(entry.kernel(x, t, mode=mode))
        with pytest.raises(ValueError, match=message):
            entry.kernel(x, t, mode=mode, validate=True)


@pytest.mark.parametrize(
    "label_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64], ids=str
)
def test_any_integer_label_dtype(label_dtype, gen):
    x = torch.randn(2, 5, 6, 7, generator=gen).to(DEVICE)
    y = torch.randint(0, 5, (2, 6, 7), generator=gen).to(DEVICE)
    y = y.masked_fill(torch.rand(2, 6, 7, generator=gen).to(DEVICE) < 0.3, 255)
    expected = ker.dice_loss(x, y, ignore_index=255)
    assert torch.equal(ker.dice_loss(x, y.to(label_dtype), ignore_index=255), expected)


def test_region_stats_match_the_reference(gen):
    """Labels, then soft masks with and without ``soft_label`` (whose I differs)."""
    x = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    y = torch.randint(0, 4, (2, 5, 6), generator=gen).to(DEVICE)
    masks = torch.rand(2, 4, 5, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    for scope, squared in itertools.product(["batch", "image"], [False, True]):
        got = ker.region_stats(x.float(), y, "multiclass", None, scope, squared)
        want = ref.region_stats(x, y, "multiclass", None, scope, squared)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-6)
    for soft_label in (False, True):
        got = ker.region_stats(x.float(), masks, "multilabel", None, "image", soft_label=soft_label)
        want = ref.region_stats(x, masks, "multilabel", None, "image", soft_label=soft_label)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-6)
    p = torch.softmax(x, dim=1)  # probabilities as the input: P sums them as they are
    got = ker.region_stats(p.float(), y, "multiclass", None, "image", from_logits=False)
    for a, b in zip(got, ref.region_stats(x, y, "multiclass", None, "image"), strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_probabilities_in_equal_logits_in(entry, mode, gen):
    """``from_logits=False`` on torch's ``softmax(x)`` (``sigmoid(x)``) gives the loss of
    ``x``, and its gradient taken back through torch's activation gives the gradient of
    ``x`` (C = 300 streams the classes)."""
    for C in (3, 300):
        opts = {"mode": mode, "ignore_index": 255, "scope": "image", "reduction": "none"}
        x, t = _inputs(entry, (2, C, 5, 6), opts, torch.float32, gen)
        x = x.requires_grad_(True)
        p = torch.softmax(x, dim=1) if mode == "multiclass" else torch.sigmoid(x)
        loss_x = entry.kernel(x, t, **opts)
        loss_p = entry.kernel(p, t, from_logits=False, **opts)
        torch.testing.assert_close(loss_p, loss_x, rtol=1e-5, atol=1e-6)
        w = torch.rand(loss_x.shape, generator=gen).to(DEVICE)
        (want,) = torch.autograd.grad((loss_x * w).sum(), x)
        (got,) = torch.autograd.grad((loss_p * w).sum(), x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_torch_compile_fullgraph(gen):
    x = torch.randn(2, 5, 6, 7, generator=gen).to(DEVICE).requires_grad_(True)
    y = torch.randint(0, 5, (2, 6, 7), generator=gen).to(DEVICE)

    @torch.compile(fullgraph=True)
    def step(x, y):
        return ker.dice_loss(x, y, scope="image") + ker.generalized_dice_loss(x, y)

    loss = step(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    expected = ref.dice_loss(x, y, scope="image") + ref.generalized_dice_loss(x, y)
    (ref_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_process_group_needs_batch_scope(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen)
    for fn in (ref.dice_loss, ker.dice_loss, ker.generalized_dice_loss):
        with pytest.raises(ValueError, match="process_group needs scope='batch'"):
            fn(x.to(DEVICE), y.to(DEVICE), scope="image", process_group=object())


def _global_dice_worker(rank: int, world: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    sizes = [1 + 2 * r for r in range(world)]  # unequal local batches: sums are reduced
    x = torch.randn(sum(sizes), 3, 5, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (sum(sizes), 5, 6), generator=gen)
    y[-1] = 255
    mine = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    _compiled_global_dice(x, y, mine)
    names = ("dice", "generalized_dice", "mcc")
    for name, reduction in itertools.product(names, ("mean", "sum", "none")):
        entry = get(name)  # the MCC's pixel counts are reduced too
        opts = {"ignore_index": 255, "smooth_nr": 1e-3, "smooth_dr": 1e-3, "reduction": reduction}
        opts = {k: v for k, v in opts.items() if entry.takes(k)}
        whole, whole_grad = run_with_grad(entry.reference, x, y, opts)
        kernel_x = x[mine].float().to(DEVICE)
        for fn, xs, ys in (
            (entry.reference, x[mine], y[mine]),
            (entry.kernel, kernel_x, y[mine].to(DEVICE)),
        ):
            loss, _ = run_with_grad(fn, xs, ys, {**opts, "process_group": None})
            assert not torch.allclose(loss.cpu(), whole)  # the local loss differs
            group = dist.group.WORLD
            loss, grad = run_with_grad(fn, xs, ys, {**opts, "process_group": group})
            torch.testing.assert_close(loss.cpu(), whole, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad.cpu(), whole_grad[mine], rtol=1e-4, atol=1e-7)


def _compiled_global_dice(x, y, mine):
    """Under torch.compile the collective sits behind a graph break (kernels/region.py,
    made at the first call: here, before any eager call with a process group): fullgraph
    refuses it, a plain compile gives the eager loss and gradient. The break is Dynamo's
    doing, so the graphs around it run on the aot_eager backend (no Inductor build)."""
    opts = {"ignore_index": 255, "process_group": dist.group.WORLD}

    def loss(a, b):
        return ker.dice_loss(a, b, **opts)

    xs, ys = x[mine].float().to(DEVICE), y[mine].to(DEVICE)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(loss, fullgraph=True, backend="aot_eager")(xs, ys)
    got = run_with_grad(torch.compile(loss, backend="aot_eager"), xs, ys, {})
    whole, whole_grad = run_with_grad(ref.dice_loss, x, y, {"ignore_index": 255})
    torch.testing.assert_close(got[0].cpu(), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1].cpu(), whole_grad[mine], rtol=1e-4, atol=1e-7)


def test_global_sums_across_two_gloo_processes(seed):
    """Batch-scope Dice / GDL / MCC with process_group equals the single-process loss on
    the whole batch, loss and each rank's gradient slice (reference path and kernel path),
    for every reduction and with ranks holding 1 and 3 images; Dice under torch.compile
    too."""
    on_two_gloo_ranks(_global_dice_worker, seed)
