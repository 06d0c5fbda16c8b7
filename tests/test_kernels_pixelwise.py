"""Triton pixel-wise kernels against the float64 reference, loss and gradient.

Runs compiled on a GPU and in Triton's interpreter on CPU (small shapes). Every pixel-wise
registry entry is checked over class counts, dtypes, 2-D/3-D, memory formats and
reductions, with a random grad_output; then the edge cases of the issue: ignore-heavy and
all-ignored batches, bad labels, label dtypes (saturated logits: test_kernels_saturated),
determinism, repeated backward, and torch.compile.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl
from kernel_checks import (
    CASE_ARGS,
    DEVICE,
    DTYPES,
    apart_at_topk,
    assert_matches,
    confident,
    force_walk_label_bug,
    kernel_cases,
    kernels_of,
    record_calls,
    run_with_grad,
    to_channels_last,
    variants_at,
)

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.kernels._pixelwise_kernels import _sigmoid_parts
from segtriton.kernels._tiles import column_tiles, fast_log2, log1p_atanh, log1p_pos, pixel_view
from segtriton.registry import get, make_inputs

KERNELS = kernels_of("pixelwise")


@pytest.mark.parametrize(CASE_ARGS, kernel_cases(KERNELS, ["mean", "sum", "none"]))
def test_kernel_matches_reference(
    entry, options, C, dtype, spatial, channels_last, reduction, seed, gen
):
    opts = entry.ignoring({**options, "reduction": reduction})
    x, t = make_inputs(
        entry, (2, C, *spatial), opts, dtype, gen, ignore_frac=0.2, soft=entry.soft, device=DEVICE
    )
    if channels_last:
        x = to_channels_last(x)
    assert_matches(entry, x, t, opts, dtype, seed)


@pytest.mark.parametrize("C", [17, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_column_tiles(C, dtype, seed, gen):
    """channels_last logits up to 32 classes take column tiles (one pixel a thread, read
    as ``[pixels, classes]``), label smoothing included, where NCHW halves that limit;
    CE with smoothing and class weights, and softmax focal with per-class alpha, against
    the reference, on a spatial size that leaves a part-masked last tile."""
    w = torch.linspace(0.5, 2.0, C).tolist()
    for name, opts in (
        ("cross_entropy", {"label_smoothing": 0.1, "weight": w, "ignore_index": 255}),
        ("softmax_focal", {"alpha": w, "gamma": 2.0, "ignore_index": 255}),
    ):
        entry = get(name)
        x, t = make_inputs(entry, (2, C, 5, 29), opts, dtype, gen, ignore_frac=0.2, device=DEVICE)
        x = to_channels_last(x)
        smooth = name == "cross_entropy"
        assert column_tiles(x, smooth, *pixel_view(x)[2:]) is not None
        if smooth:  # on NCHW, the walks
            assert column_tiles(x, smooth, *pixel_view(x.contiguous())[2:]) is None
        assert_matches(entry, x, t, opts, dtype, seed)


@pytest.mark.parametrize("C", [2, 3, 19])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_losses_read_channels_last_masks_flat(C, dtype, monkeypatch, seed, gen):
    """Masks stored like channels_last logits go with them, the gradient and a per-element
    grad_output as one flat range each (``flat_layout``) where no per-class factor
    applies: BCE with smoothing or an ignore value, sigmoid focal with a scalar alpha,
    every reduction ('none' returns the logits' layout, as torch does); with per-class
    factors (BCE's weight and pos_weight, the focal loss's alpha per class) the kernel
    walks the class rows. 2-D and 3-D sizes of several tiles, the last one part-masked,
    against the reference."""
    from segtriton.kernels import pixelwise

    calls = record_calls(monkeypatch, "flat_layout", [pixelwise])
    v = torch.linspace(0.2, 0.9, C).tolist()  # a different value for every class
    cases = (
        ("bce", {"ignore_index": 255}),
        ("bce", {"label_smoothing": 0.1}),
        ("bce", {"pos_weight": [3 * a for a in v], "weight": v[::-1], "ignore_index": 255}),
        ("sigmoid_focal", {"mode": "multilabel", "alpha": 0.25, "gamma": 1.5}),
        ("sigmoid_focal", {"mode": "multilabel", "alpha": v, "gamma": 2.0, "ignore_index": 255}),
    )
    for k, (name, opts) in enumerate(cases):
        entry = get(name)
        spatial = (9, 31) if k % 2 else (3, 5, 23)
        drop = 0.2 if "ignore_index" in opts else 0.0
        x, t = make_inputs(
            entry, (2, C, *spatial), opts, dtype, gen, ignore_frac=drop, soft=True, device=DEVICE
        )
        x, t = to_channels_last(x), to_channels_last(t)
        per_class = any(isinstance(value, list) for value in opts.values())
        for reduction in ("mean", "sum", "none"):
            calls.clear()
            assert_matches(entry, x, t, {**opts, "reduction": reduction}, dtype, seed)
            flats = [result for _, result in calls]
            assert flats == [] if per_class else flats and all(flats), (name, reduction)
        loss = entry.kernel(x, t, **opts, reduction="none")
        assert loss.stride() == (x.contiguous() if per_class else x).stride()


@pytest.mark.parametrize(("entry", "options"), variants_at(KERNELS, 300))
def test_large_class_count_streams_classes(entry, options, seed, gen):
    """Every variant, its per-class vectors repeated to C, where C > 256 takes the
    online-softmax path over chunks of classes (the last chunk part-masked)."""
    opts = entry.ignoring(options)
    shape = entry.fit_shape((2, 300, 3, 5), opts)
    x, t = make_inputs(entry, shape, opts, torch.float32, gen, ignore_frac=0.2, device=DEVICE)
    assert_matches(entry, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("C", [4, 300])
@pytest.mark.parametrize("name", ["cross_entropy", "softmax_focal"])
def test_confident_predictions_keep_the_loss_digits(name, C, channels_last, seed, gen):
    """Right predictions, the label's logit 14 ahead of random ones: a pixel's CE is about
    ``r = sum_{c != y} exp(x_c - x_y)`` (near 3e-6 at C = 4, 3e-4 at 300) and the label's
    gradient entry about ``-r``. The kernels keep ``r`` apart from the 1 of the max (at
    C = 300 over streamed class chunks: in the interpreter's tests chunks of 32 classes,
    on a GPU single class rows), so loss and gradient stay within 1e-5 of float64 at every
    entry. From the whole sum ``s = 1 + r`` float32 keeps ``r`` to ulps of 1 only: the
    32-class chunks did so until their ties were counted apart from ``r`` (CE 6e-4 off,
    softmax focal 2e-3, at C = 300). The float32 reference loses those digits too, so no
    float32 slack is granted here."""
    entry = get(name)
    x, t = make_inputs(entry, (2, C, 5, 7), {}, torch.float64, gen, device=DEVICE)
    x = confident(entry, {}, 0.25 * x, t).float()
    if channels_last:
        x = to_channels_last(x)
    opts = {"reduction": "none"}
    loss, grad = run_with_grad(entry.kernel, x, t, opts, seed)
    want, want_grad = run_with_grad(entry.reference, x.double(), t, opts, seed)
    assert float(want.detach().max()) < 1e-2
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "entry", [e for e in KERNELS if e.takes("ignore_index")], ids=lambda e: e.name
)
def test_ignore_heavy_and_all_ignored(entry, seed, gen):
    opts = {**entry.variants[0], "ignore_index": 255}
    x, t = make_inputs(
        entry, (2, 3, 6, 7), opts, torch.float32, gen, ignore_frac=0.95, device=DEVICE
    )
    t.view(-1)[0] = 0  # at least one valid pixel; the all-ignored case follows
    assert_matches(entry, x, t, opts, torch.float32, seed)
    t_all = torch.full_like(t, 255)
    xg = x.detach().requires_grad_(True)
    loss = entry.kernel(xg, t_all, **opts)
    # NaN for a mean over no valid pixel (F.cross_entropy); top-k divides by its own count
    want = entry.reference(x.detach().double(), t_all, **opts).item()
    assert (loss.item() == want) if want == want else torch.isnan(loss)
    (grad,) = torch.autograd.grad(loss, xg)
    assert torch.equal(grad, torch.zeros_like(grad))
    loss = entry.kernel(xg, t_all, **{**opts, "reduction": "sum"})
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    "entry", [e for e in KERNELS if e.target == "labels"], ids=lambda e: e.name
)
@pytest.mark.parametrize("bad", [7, -1, 2**32 + 1, -(2**31)])
def test_bad_labels_give_nan_or_a_clear_error(entry, bad, gen):
    """A label past C or a negative one (not ``ignore_index``; OHEM marks dropped pixels
    -1 inside, so a kept -1 must not read as dropped); an int64 label that int32 would
    truncate into class 1. -2^31 is the kernels' stand-in for ``ignore_index=None``: with
    None, that label is bad too, not ignored."""
    opts = dict(entry.variants[0])
    if bad == -(2**31) and entry.takes("ignore_index"):
        opts["ignore_index"] = None
    x, t = make_inputs(entry, (2, 3, 4, 5), opts, torch.float32, gen, device=DEVICE)
    assert t.dtype == torch.int64
    t[1, 2, 3] = bad
    assert torch.isnan(entry.kernel(x, t, **opts))
    with pytest.raises(ValueError, match=rf"label {bad} outside \[0, 3\)"):
        entry.kernel(x, t, validate=True, **opts)


@pytest.mark.parametrize("entry", [e for e in KERNELS if e.target == "masks"], ids=lambda e: e.name)
def test_bad_mask_values_give_nan_or_a_clear_error(entry, gen):
    opts = dict(entry.variants[0])
    x, t = make_inputs(entry, (2, 3, 4, 5), opts, torch.float32, gen, device=DEVICE)
    t[1, 2, 3, 4] = 3.0
    assert torch.isnan(entry.kernel(x, t, **opts))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        entry.kernel(x, t, validate=True, **opts)


@pytest.mark.parametrize(
    "label_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64], ids=str
)
def test_any_integer_label_dtype(label_dtype, gen):
    x = torch.randn(2, 5, 6, 7, generator=gen).to(DEVICE)
    y = (
        torch.randint(0, 5, (2, 6, 7), generator=gen)
        .masked_fill(torch.rand(2, 6, 7, generator=gen) < 0.3, 255)
        .to(DEVICE)
    )
    expected = ker.cross_entropy(x, y, ignore_index=255)
    assert torch.equal(ker.cross_entropy(x, y.to(label_dtype), ignore_index=255), expected)
    focal = ker.sigmoid_focal_loss(x, y.to(label_dtype), mode="multiclass", ignore_index=255)
    assert torch.equal(focal, ker.sigmoid_focal_loss(x, y, mode="multiclass", ignore_index=255))


def test_cross_entropy_reads_a_float_target_as_probabilities(gen):
    """As F.cross_entropy: a floating target of the logits' shape holds class probabilities
    (ignore_index left at None or -100; another value is refused, as there are no labels to
    ignore); a floating target of the labels' shape is refused."""
    x = torch.randn(2, 5, 6, 7, generator=gen).to(DEVICE)
    probs = torch.softmax(torch.randn(2, 5, 6, 7, generator=gen), dim=1).to(DEVICE)
    want = ker.cross_entropy_probs(x, probs, label_smoothing=0.1)
    for ignore_index in (-100, None):
        got = ker.cross_entropy(x, probs, ignore_index=ignore_index, label_smoothing=0.1)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="ignore_index applies to integer labels"):
        ker.cross_entropy(x, probs, ignore_index=255)
    torch.testing.assert_close(
        want, torch.nn.functional.cross_entropy(x, probs, label_smoothing=0.1)
    )
    with pytest.raises(TypeError, match="integer class labels"):
        ker.cross_entropy(x, probs[:, 0])


def test_repeated_backward_with_other_grad_outputs(gen):
    x = torch.randn(2, 4, 5, 6, generator=gen).to(DEVICE).requires_grad_(True)
    y = torch.randint(0, 4, (2, 5, 6), generator=gen).to(DEVICE)
    loss = ker.cross_entropy(x, y)
    (base,) = torch.autograd.grad(ref.cross_entropy(x, y), x)
    for factor in (1.0, 3.0, 3.0, 0.5, 1.0):
        (g,) = torch.autograd.grad(
            loss, x, grad_outputs=torch.tensor(factor, device=DEVICE), retain_graph=True
        )
        torch.testing.assert_close(g, base * factor, rtol=1e-5, atol=1e-7)


def test_logits_grad_accumulates_like_torch(gen):
    x = torch.randn(2, 4, 5, 6, generator=gen).to(DEVICE).requires_grad_(True)
    y = torch.randint(0, 4, (2, 5, 6), generator=gen).to(DEVICE)
    (ker.cross_entropy(x, y) + 2 * ker.softmax_focal_loss(x, y)).backward()
    xr = x.detach().clone().requires_grad_(True)
    (ref.cross_entropy(xr, y) + 2 * ref.softmax_focal_loss(xr, y)).backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-7)


def test_no_grad_forward_builds_no_graph(gen):
    """The value of a forward under torch.no_grad, and no graph (tests/test_traffic.py checks
    that it writes no gradient buffer either)."""
    x = torch.randn(2, 4, 5, 6, generator=gen).to(DEVICE).requires_grad_(True)
    y = torch.randint(0, 4, (2, 5, 6), generator=gen).to(DEVICE)
    with torch.no_grad():
        loss = ker.cross_entropy(x, y)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, ref.cross_entropy(x.detach(), y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("cross_entropy", {}),
        ("cross_entropy", {"weight": [0.5, 2.0, 0.0, 1.0, 3.0], "label_smoothing": 0.1}),
        ("softmax_focal", {"alpha": [0.25, 0.5, 1.0, 2.0, 1.0]}),
        ("bce", {"pos_weight": [2.0, 1.0, 0.5, 1.0, 3.0]}),
        ("sigmoid_focal", {"mode": "multilabel"}),
        ("sigmoid_focal_ovr", {"mode": "multiclass", "alpha": 0.25}),
    ],
    ids=["ce", "ce-weighted", "softmax-focal", "bce", "sigmoid-focal", "sigmoid-focal-ovr"],
)
def test_mean_counted_in_the_loss_kernel(name, options, dtype, seed, gen):
    """Without a gradient, and for fp16 (whose 'mean' gradient is divided in the backward;
    CE unweighted), the loss kernel sums the 'mean' denominator itself: no pre-pass over
    the target. The loss equals the reference's with 60% and with all of the target
    ignored (NaN), under torch.no_grad and with a gradient, which matches the
    reference's too."""
    entry = get(name)
    opts = {**options, "ignore_index": 255}
    x, t = make_inputs(entry, (2, 5, 7, 9), opts, dtype, gen, 0.6, device=DEVICE)
    for target in (t, torch.full_like(t, 255)):
        want = entry.reference(x.double(), target, **opts)
        with torch.no_grad():
            got = entry.kernel(x.requires_grad_(True), target, **opts)
        x.requires_grad_(False)
        if target is t:
            torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
            assert_matches(entry, x, target, opts, dtype, seed)
        else:
            assert torch.isnan(got) and torch.isnan(want)


def test_torch_compile_fullgraph(gen):
    x = torch.randn(2, 5, 6, 7, generator=gen).to(DEVICE).requires_grad_(True)
    y = torch.randint(0, 5, (2, 6, 7), generator=gen).to(DEVICE)

    @torch.compile(fullgraph=True)
    def step(x, y):
        return (
            0.5 * ker.cross_entropy(x, y, label_smoothing=0.1, weight=[0.5, 1, 2, 0, 1])
            + ker.sigmoid_focal_loss(x, y, mode="multiclass", reduction="none").mean()
            + ker.ohem_cross_entropy(x, y, thresh=0.8, min_kept=10)
            + ker.topk_cross_entropy(x, y, k=20, label_smoothing=0.1)
            + ker.recall_cross_entropy(x, y)
        )

    loss = step(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    expected = (
        0.5 * ref.cross_entropy(x, y, label_smoothing=0.1, weight=[0.5, 1, 2, 0, 1])
        + ref.sigmoid_focal_loss(x, y, mode="multiclass", reduction="none").mean()
        + ref.ohem_cross_entropy(x, y, thresh=0.8, min_kept=10)
        + ref.topk_cross_entropy(x, y, k=20, label_smoothing=0.1)
        + ref.recall_cross_entropy(x, y)
    )
    (ref_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["cross_entropy", "softmax_focal_loss", "sigmoid_focal_loss"])
def test_torch_compile_all_ignored_fp16_mean(name, gen):
    """fp16 logits defer the 'mean' division to the backward; with every pixel ignored the
    divisor is 0: compiled as in eager, the loss is NaN (0 / 0, as torch gives) and the
    gradient zero, not 0 * inf. (Inductor's CPU code may turn 0 * inf into 0: the
    'aot_eager' backend runs the traced backward's arithmetic as written.)"""
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE, torch.float16).requires_grad_(True)
    y = torch.full((2, 4, 5), 255, device=DEVICE)
    options = {"mode": "multiclass"} if name == "sigmoid_focal_loss" else {}
    fn = getattr(ker, name)
    compiled = [
        torch.compile(lambda x, y: fn(x, y, ignore_index=255, **options), fullgraph=True, backend=b)
        for b in ("aot_eager", "inductor")
    ]
    for loss in (fn(x, y, ignore_index=255, **options), *(step(x, y) for step in compiled)):
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isnan(loss) and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
    reason="needs a GPU with 40 GiB: one image of 2.4e9 logits",
)
def test_offsets_past_2_pow_31(gen):
    C, H, W = 1000, 1536, 1536  # C * H * W > 2^31 within one image
    x = torch.randn(1, C, H, W, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, C, (1, H, W), device="cuda")
    x.requires_grad_(True)
    loss = ker.cross_entropy(x, y, reduction="none")
    (grad,) = torch.autograd.grad(loss[:, -2:].sum(), x)
    xs = x.detach()[:, :, -2:].double().requires_grad_(True)
    expected = ref.cross_entropy(xs, y[:, -2:], reduction="none")
    torch.testing.assert_close(loss[:, -2:].double(), expected, rtol=2e-5, atol=1e-5)
    (ref_grad,) = torch.autograd.grad(expected.sum(), xs)
    torch.testing.assert_close(grad[:, :, -2:].double(), ref_grad, rtol=1.6e-2, atol=1e-3)
    assert grad[:, :, :-2].abs().max() == 0


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
    reason="needs a GPU with 40 GiB: one image of 2.4e9 logits and as many probabilities",
)
def test_probability_targets_past_2_pow_31(gen):
    C, H, W = 1000, 1536, 1536  # C * H * W > 2^31 within one image, in logits and target
    x = torch.randn(1, C, H, W, device="cuda", dtype=torch.bfloat16)
    t = torch.rand(1, C, H, W, device="cuda", dtype=torch.bfloat16)
    x.requires_grad_(True)
    loss = ker.cross_entropy_probs(x, t, reduction="none")
    (grad,) = torch.autograd.grad(loss[:, -2:].sum(), x)
    xs = x.detach()[:, :, -2:].double().requires_grad_(True)
    expected = ref.cross_entropy_probs(xs, t[:, :, -2:].double(), reduction="none")
    torch.testing.assert_close(loss[:, -2:].double(), expected, rtol=2e-5, atol=1e-3)
    (ref_grad,) = torch.autograd.grad(expected.sum(), xs)
    torch.testing.assert_close(grad[:, :, -2:].double(), ref_grad, rtol=1.6e-2, atol=1e-3)
    assert grad[:, :, :-2].abs().max() == 0


def test_ohem_worked_example():
    from test_worked_examples import ohem_example

    z, y = ohem_example()
    x = z.float().to(DEVICE).requires_grad_()
    loss = ker.ohem_cross_entropy(x, y.to(DEVICE), 0.7, 3)
    (grad,) = torch.autograd.grad(loss, x)
    want = -torch.tensor([0.6, 0.8, 0.3]).log().mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.equal(grad[0, :, 0].cpu(), torch.zeros(2))  # p = 0.9 is not kept


def test_topk_share_equals_the_reference(gen):
    """The top-k shares from the radix select equal the reference's (a torch.topk) on fp32
    losses with many ties (a coarse grid), zeros, NaN and huge values, for n from 1 to
    N, and they add up to n."""
    from segtriton.kernels.pixelwise import _topk_share

    for trial in range(4):
        losses = torch.randint(0, 9, (2, 5 + trial, 37), generator=gen).float() * 0.25
        odd = torch.rand(losses.shape, generator=gen) < 0.05
        losses[odd] = float("nan") if trial % 2 else 3e38
        N = losses.numel()
        for n in (1, 2, 7, N // 3, N - 1, N):
            share = _topk_share(losses.to(DEVICE), n).cpu()
            torch.testing.assert_close(share, ref.pixelwise.topk_share(losses, n))
            assert share.sum().item() == pytest.approx(n, rel=1e-6), (trial, n)


def test_topk_worked_example_with_ties():
    """Three pixels tied at the cut share its two places (see test_worked_examples)."""
    p = torch.tensor([0.5, 0.5, 0.5, 0.9])
    z = torch.stack([p.log(), (1 - p).log()]).reshape(1, 2, 4).to(DEVICE).requires_grad_()
    loss = ker.topk_cross_entropy(z, torch.zeros(1, 4, dtype=torch.long, device=DEVICE), 50)
    (grad,) = torch.autograd.grad(loss, z)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    want = torch.tensor([-0.5, -0.5, -0.5, 0.0]) / 3
    torch.testing.assert_close(grad[0, 0].cpu(), want, rtol=1e-6, atol=1e-7)


def test_near_tie_at_the_kth_loss_is_moved_apart():
    """Two pixels whose losses differ by float32 rounding at the cut of the top k: the
    kernel tests move one of them (one logit), so float32 and float64 keep the same."""
    x = torch.tensor([[[3.0, 1.0, 1.0 + 2**-23, 4.0], [0.0] * 4, [0.0] * 4]])
    y = torch.tensor([[1, 0, 0, 0]])
    entry = get("topk_cross_entropy")  # the second and third largest losses tie in float32
    ce = ref.cross_entropy(x.double(), y, reduction="none").flatten()
    assert 0 < ce[1] - ce[2] < 1e-6 * ce[1] and ce[0] > ce[1] and ce[2] > ce[3]
    moved = apart_at_topk(entry, x, y, {"k": 50.0})
    assert int((moved != x).sum()) == 1
    top = ref.cross_entropy(moved.double(), y, reduction="none").flatten().sort().values
    assert top[2] - top[1] > 1e-5 * top[2]
    assert apart_at_topk(get("cross_entropy"), x, y, {}) is x


def test_near_tie_at_ohems_min_kept_is_moved_apart(seed):
    """OHEM keeps the valid pixels less sure than its ``min_kept``-th least sure one. Two
    pixels whose -log p differ below float32's resolution there (124 + 5.6e-9 and 124)
    tie in the kernel, which then keeps neither ('mean': NaN) where the reference keeps
    the first (a random draw at bf16 logits x16 did this). The kernel tests move the
    second pixel's label logit, doubling the step while bf16 rounds it away (its spacing
    at 64 is 0.5), and then kernel and reference agree."""
    x = torch.tensor([[[64.0, 64.0, 0.0], [188.0, 188.0, 5.0], [169.0, 64.0, 0.0]]])
    x = x.to(torch.bfloat16)
    y = torch.zeros(1, 3, dtype=torch.int64)
    entry, opts = get("ohem_cross_entropy"), {"thresh": 0.0, "min_kept": 1}
    ce = ref.cross_entropy(x.double(), y, reduction="none").flatten()
    assert 0 < ce[0] - ce[1] < 1e-8 and ce[0].float() == ce[1].float()
    moved = apart_at_topk(entry, x, y, opts)
    assert int((moved != x).sum()) == 1 and moved[0, 0, 1] == 64.5
    assert_matches(entry, moved.to(DEVICE), y.to(DEVICE), opts, torch.bfloat16, seed)


def test_ohem_radix_select_equals_a_sort(gen):
    """OHEM's threshold (the min(min_kept, n - 1)-th largest -log p of the valid pixels)
    from the radix select equals torch.sort's, with ties (values on a coarse grid), zeros,
    NaN, ignored pixels (all of them in the last trial), uint8 and int64 labels, strided
    labels, and min_kept below, at and past the valid count."""
    from segtriton.kernels.pixelwise import _ohem_labels

    for trial in range(6):
        label_dtype = torch.int64 if trial % 3 else torch.uint8
        B, H, W = 2, 5 + trial, 37
        nll = torch.randint(0, 9, (B, H, W), generator=gen).float() * 0.25
        nll[torch.rand(nll.shape, generator=gen) < 0.05] = float("nan") if trial % 2 else 3e38
        y = torch.randint(0, 3, (B, H, W), generator=gen)
        ignore = torch.rand(y.shape, generator=gen) < (0.3 if trial < 5 else 1.0)
        y = y.masked_fill(ignore, 255).to(label_dtype)
        nll = nll.masked_fill(ignore, 0.0)  # the CE kernel's 'none' value for ignored pixels
        given = y
        if trial % 2:  # every other image of a larger batch: strided, not flat
            given = torch.stack([y, torch.zeros_like(y)], dim=1).flatten(0, 1)[::2]
        valid = ~ignore
        n = int(valid.sum())
        order = torch.where(valid, nll, -1.0).flatten().sort(descending=True).values
        for min_kept in (0, 1, 7, n - 1, n, 10**6):
            if min_kept < 0:
                continue
            for max_nll in (0.8, float("inf")):
                k = max(0, min(min_kept, n - 1))
                limit = min(order[k].item(), max_nll) if order[k] == order[k] else order[k]
                kept = valid & ~(nll <= limit)
                want = torch.where(kept, y.long(), -1)
                labels, n_kept = _ohem_labels(
                    nll.to(DEVICE), given.to(DEVICE), 3, 255, min_kept, max_nll
                )
                assert torch.equal(labels.cpu().long(), want), (trial, min_kept, max_nll)
                assert int(n_kept) == int(kept.sum())


@pytest.mark.parametrize("bug", [False, True])
def test_softmax_walks_unroll_where_the_labels_let_them(bug, monkeypatch, seed, gen):
    """The CE / softmax focal class walks unroll ``UNROLL[0]`` times (4 unless
    SEGTRITON_UNROLL says) on contiguous pixels, but walk plainly on channels_last logits
    and on 8- or 16-bit labels under a Triton that cannot build an unrolled walk there
    (``WALK_LABEL_BUG``); the loss is right either way (walks forced here)."""
    from segtriton.kernels import _tiles, pixelwise

    force_walk_label_bug(monkeypatch, bug)
    monkeypatch.setattr(_tiles, "MAX_SINGLE_C", 1)
    monkeypatch.setattr(_tiles, "CHUNK", (1, 16))
    monkeypatch.setattr(_tiles, "UNROLL", (4, 1))
    calls = record_calls(monkeypatch, "softmax_unroll", [pixelwise])
    x = torch.randn(2, 5, 4, 7, generator=gen).to(DEVICE)
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        t = torch.randint(0, 5, (2, 4, 7), generator=gen).to(DEVICE, dtype)
        for logits in (x, to_channels_last(x)):
            calls.clear()
            opts = {"label_smoothing": 0.1}
            assert_matches(get("cross_entropy"), logits, t, opts, torch.float32, seed)
            plain = (bug and dtype.itemsize < 4) or logits is not x
            assert calls and all(r == (None if plain else 4) for _, r in calls), (dtype, calls)
    monkeypatch.setattr(_tiles, "UNROLL", (1, 1))
    assert _tiles.softmax_unroll(torch.zeros(3, dtype=torch.int64), 1) is None


@triton.jit
def _logs_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """``fast_log2(x)``, ``log1p_pos(x)`` and ``log1p_atanh(x / (2 + x))`` in rows 0-2."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=1.0)
    for k, part in enumerate((fast_log2(x), log1p_pos(x), log1p_atanh(x / (2.0 + x)))):
        tl.store(out_ptr + k * n + offs, part, mask=mask)


def _logs(x: torch.Tensor) -> torch.Tensor:
    got = torch.empty(3, x.numel(), device=DEVICE)
    _logs_kernel[(triton.cdiv(x.numel(), 1024),)](x, got, x.numel(), BLOCK=1024)
    return got


def test_log_one_plus_on_the_unit_interval_is_within_four_ulps(gen):
    """``_tiles.log1p_atanh`` of ``r / (2 + r)`` (the atanh series of the sigmoid losses'
    ``log(1 + exp(-|x|))``) against float64 on fresh random values in [0, 1], values
    spread over 35 decades toward 0, and the ends: within 4 float32 ulps of the result (a
    compiled division may be 2 ulps off), 0 at 0."""
    spread = torch.exp(-80 * torch.rand(100_000, generator=gen))
    ends = torch.tensor([0.0, 1.0, 2.0**-126, 6e-8, 0.5, 1 - 2.0**-24])
    r = torch.cat([torch.rand(100_000, generator=gen), spread, ends]).to(DEVICE)
    got = _logs(r)[2]
    want = torch.log1p(r.double())
    ulp = want.float().double() * 2.0**-23
    err = (got.double() - want).abs()
    assert torch.isfinite(got).all() and got[-6] == 0
    assert (err <= 4 * ulp).all(), float((err / ulp)[want > 0].max())


def test_fast_log2_and_log1p_pos(gen):
    """``_tiles.fast_log2`` (MUFU.LG2 when compiled) within 2^-21 of ``log2 x``, relative
    past |log2 x| = 1; ``_tiles.log1p_pos`` within 8 float32 ulps of ``log(1 + r)`` up to
    r = 1 (the series, however small r is) and, above, within 8 ulps plus ``ln 2`` times
    2^-21; on fresh random values over 60 decades, and 0, 1, inf and NaN."""
    spread = torch.exp((torch.rand(100_000, generator=gen) - 0.5) * 140)
    ends = torch.tensor([0.0, 1.0, 1.0 + 2.0**-23, 2.0, 0.5, 1e30, math.inf, math.nan])
    x = torch.cat([torch.rand(100_000, generator=gen), spread, ends]).to(DEVICE)
    xd, got = x.double(), _logs(x)[:2].double()
    ulp = 2.0**-23
    log2 = torch.log2(xd)
    finite = log2.isfinite()
    err = (got[0] - log2).abs()[finite]
    bound = 2.0**-21 * log2.abs().clamp(min=1.0)[finite]
    assert (err <= bound).all(), float((err / bound).max())
    assert got[0, -8] == -math.inf and got[0, -2] == math.inf and got[0, -1].isnan()
    want = torch.log1p(xd)
    bound = 8 * ulp * want.abs() + torch.where(xd > 1, 2.0**-21 * math.log(2), 0.0)
    finite = want.isfinite()
    err = (got[1] - want).abs()[finite]
    assert (err <= bound[finite]).all(), float((err / bound[finite]).max())
    assert got[1, -8] == 0 and got[1, -2] == math.inf and got[1, -1].isnan()


@triton.jit
def _sigmoid_parts_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    logp, logq, p, q = _sigmoid_parts(tl.load(x_ptr + offs, mask=mask, other=0.0))
    for k, part in enumerate((logp, logq, p, q)):
        tl.store(out_ptr + k * n + offs, part, mask=mask)


def test_sigmoid_parts_from_one_exponential_and_one_reciprocal(gen):
    """``_sigmoid_parts`` (``log p``, ``log q``, ``p``, ``q`` of the sigmoid losses, from
    ``e = exp(-|x|)`` and one approximate reciprocal of ``(1 + e)(2 + e)``) against
    float64 on fresh random logits from small to past float32's exp range, and the
    infinities: within ``16 + 2|x|`` float32 ulps of each result (the exponential's
    argument ``|x| log2(e)`` is rounded to float32, an error that grows with |x|), or
    below float32's normal range where the result is."""
    x = torch.cat(
        [
            torch.randn(50_000, generator=gen) * 4,
            torch.randn(50_000, generator=gen) * 40,
            torch.tensor([0.0, -0.0, 1e-8, -1e-8, 88.0, -88.0, 104.0, -104.0]),
        ]
    )
    x = torch.cat([x, torch.tensor([math.inf, -math.inf])]).to(DEVICE)
    got = torch.empty(4, x.numel(), device=DEVICE)
    _sigmoid_parts_kernel[(triton.cdiv(x.numel(), 1024),)](x, got, x.numel(), BLOCK=1024)
    xd = x.double()
    sig = torch.nn.functional.logsigmoid
    want = torch.stack([sig(xd), sig(-xd), torch.sigmoid(xd), torch.sigmoid(-xd)])
    got = got.double()
    assert not got.isnan().any()
    bound = (16 + 2 * xd.abs()) * 2.0**-24 * want.abs() + 2.0**-126
    finite = xd.isfinite()
    err = (got - want).abs()[:, finite]
    assert (err <= bound[:, finite]).all(), float((err / bound[:, finite]).max())
    assert torch.equal(got[:, ~finite], want[:, ~finite])
