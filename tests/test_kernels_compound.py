"""Triton fused compound losses (CE + Dice, BCE + Dice, focal + Dice, Combo) against the
float64 reference, loss and gradient, in the interpreter on CPU and compiled on a GPU:
every variant over class counts, dtypes, 2-D/3-D, memory formats and both reductions,
then streamed classes (C > 256), ignore-heavy and all-ignored batches, bad labels,
torch.compile, and both terms over the global batch (process_group) with two gloo
processes.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from kernel_checks import (
    CASE_ARGS,
    DEVICE,
    assert_matches,
    force_walk_label_bug,
    kernel_cases,
    kernels_of,
    on_two_gloo_ranks,
    record_calls,
    run_with_grad,
    to_channels_last,
    variants_at,
)

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.registry import get, make_inputs

KERNELS = kernels_of("compound")


def _inputs(entry, shape, options, dtype, gen, ignore_frac=0.2):
    soft = entry.target_kind(options) == "masks"
    return make_inputs(
        entry, shape, options, dtype, gen, ignore_frac=ignore_frac, soft=soft, device=DEVICE
    )


@pytest.mark.parametrize(CASE_ARGS, kernel_cases(KERNELS, ["mean", "sum"]))
def test_kernel_matches_reference(
    entry, options, C, dtype, spatial, channels_last, reduction, seed, gen
):
    opts = {**options, "reduction": reduction, "ignore_index": 255}
    x, t = _inputs(entry, (2, C, *spatial), opts, dtype, gen)
    if channels_last:
        x = to_channels_last(x)
    assert_matches(entry, x, t, opts, dtype, seed)


@pytest.mark.parametrize(("entry", "options"), variants_at(KERNELS, 300))
def test_large_class_count(entry, options, seed, gen):
    """C > 256, every variant with its per-class vectors repeated to C: classes streamed,
    the softmax terms' per-pixel sums taken in the walk that finds the softmax."""
    opts = {**options, "ignore_index": 255}
    x, t = _inputs(entry, (2, 300, 3, 5), opts, torch.float32, gen)
    assert_matches(entry, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize("bug", [False, True])
def test_pass2_labels_under_the_triton_3_6_layout_bug(bug, monkeypatch, seed, gen):
    """Under Triton < 3.7, pass 2 of a softmax pixel term walked over class rows with
    squared (or soft-min) sums reads 8- or 16-bit labels widened to int32 where the
    logits' pixels are strided (that Triton cannot build its three walks there); every
    other case (the product sums walk twice, one tile does not walk), and every case under
    a newer Triton, reads the labels as given. The loss is right either way (walks forced
    here, column tiles too, which channels_last logits now take)."""
    from segtriton.kernels import _tiles, region

    force_walk_label_bug(monkeypatch, bug)
    monkeypatch.setattr(region, "REGION_COLUMN", 0)
    monkeypatch.setattr(_tiles, "MAX_SINGLE_C", 1)
    monkeypatch.setattr(_tiles, "CHUNK", (1, 16))
    calls = record_calls(monkeypatch, "walk_labels", [region])
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        t = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE, dtype)
        for logits, squared, asks in (
            (to_channels_last(x), True, True),
            (to_channels_last(x), False, False),
            (x, True, False),
            (to_channels_last(x[:, :1]), True, False),  # one class tile
        ):
            calls.clear()
            opts = {"label_smoothing": 0.1, "squared": squared, "reduction": "sum"}
            assert_matches(get("ce_dice"), logits, t.clamp_max(logits.shape[1] - 1), opts,
                           torch.float32, seed)  # fmt: skip
            want = torch.int32 if bug and dtype.itemsize < 4 else dtype
            assert [r[0].dtype for _, r in calls] == ([want] if asks else []), (dtype, opts)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_sigmoid_focal_dice(mode, seed, gen):
    entry = next(e for e in KERNELS if e.name == "focal_dice")
    C = 1 if mode == "binary" else 4
    for alpha in (None, 0.25):
        opts = {"mode": mode, "alpha": alpha, "ignore_index": 255}
        x, t = _inputs(entry, (2, C, 6, 7), opts, torch.float32, gen)
        assert_matches(entry, x, t, opts, torch.float32, seed)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_ignore_heavy_and_all_ignored(entry, seed, gen):
    opts = {"ignore_index": 255}
    x, t = _inputs(entry, (2, 3, 6, 7), opts, torch.float32, gen, ignore_frac=0.95)
    t.view(-1)[0] = 0
    assert_matches(entry, x, t, opts, torch.float32, seed)
    t_all = torch.full_like(t, 255)
    loss, grad = run_with_grad(entry.kernel, x, t_all, opts)
    # NaN: the pixel term's mean over no valid entry, as F.cross_entropy; top-k divides by
    # its own count
    want = entry.reference(x.detach().double(), t_all, **opts).item()
    assert (loss.item() == want) if want == want else torch.isnan(loss)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(
    ("name", "C", "dtype"),
    [("cross_entropy", 3, dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16)]
    + [("ce_dice", 3, torch.float32), ("ce_dice", 300, torch.float32)],
    ids=["ce-fp32", "ce-fp16", "ce-bf16", "ce_dice-one-launch", "ce_dice-two-pass"],
)
def test_ce_weights_zero_on_every_valid_pixel(name, C, dtype, gen):
    """CE's weighted mean divides by the valid pixels' weights: 0 when every valid label
    has weight 0, so the loss and the valid pixels' gradient are NaN as in F.cross_entropy
    (the kernel once gave the gradient 0 there), alone in every dtype (fp16 defers the
    division to the backward) and in CE + Dice (C = 300 takes the two-pass path)."""
    entry = get(name)
    w = [0.0] + [1.0] * (C - 1)
    x = torch.randn(2, C, 4, 5, generator=gen).to(DEVICE)
    t = torch.zeros(2, 4, 5, dtype=torch.long, device=DEVICE)
    t[0, 0, 0] = 255
    opts = {"weight": w, "ignore_index": 255}
    valid = (t != 255).unsqueeze(1).expand_as(x)
    for fn, xd in ((entry.reference, x.double()), (entry.kernel, x.to(dtype))):
        loss, grad = run_with_grad(fn, xd, t, opts)
        assert torch.isnan(loss)
        assert torch.equal(grad.isnan(), valid) and (grad[~valid] == 0).all()  # as torch


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_bad_targets_give_nan_or_a_clear_error(entry, gen):
    x, t = _inputs(entry, (2, 3, 4, 5), {}, torch.float32, gen, 0.0)
    t.view(-1)[7] = 7
    assert torch.isnan(entry.kernel(x, t))
    with pytest.raises(ValueError, match="outside"):
        entry.kernel(x, t, validate=True)


@pytest.mark.parametrize("name", ["ce_dice", "topk_dice"])
def test_torch_compile_fullgraph(name, seed, gen):
    x = torch.randn(2, 5, 6, 7, generator=gen).to(DEVICE)
    y = torch.randint(0, 5, (2, 6, 7), generator=gen).to(DEVICE)
    entry = get(name)
    opts = {"label_smoothing": 0.1, "scope": "image"}
    step = torch.compile(lambda x, y: entry.kernel(x, y, **opts), fullgraph=True)
    assert_matches(entry, x, y, opts, torch.float32, seed, kernel=lambda x, y, **_: step(x, y))


def test_torch_compile_numbers_as_arguments(gen):
    """Numeric options passed to the compiled function (symbolic floats from the second
    call on) are checked and traced with fullgraph, giving the eager values."""
    x = torch.randn(2, 5, 6, 7, generator=gen).to(DEVICE)
    y = torch.randint(0, 5, (2, 6, 7), generator=gen).to(DEVICE)
    for fn in (ref.ce_dice_loss, ker.ce_dice_loss):

        def loss(x, y, lam, smoothing, smooth, fn=fn):
            opts = {"lambda_ce": lam, "label_smoothing": smoothing, "smooth_nr": smooth}
            return fn(x, y, **opts, smooth_dr=smooth)

        step = torch.compile(loss, fullgraph=True)
        for numbers in ((0.5, 0.1, 1.0), (0.7, 0.2, 0.5), (1.5, 0.0, 2.0)):
            torch.testing.assert_close(step(x, y, *numbers), loss(x, y, *numbers))


GLOBAL_CASES = [
    ("ce_dice", {"weight": [1.0, 2.0, 0.5], "label_smoothing": 0.1}),
    ("bce_dice", {"pos_weight": [2.0, 1.0, 0.5]}),
    ("focal_dice", {"alpha": 0.25}),
    ("focal_dice", {"mode": "multilabel", "reduction": "sum"}),
    ("generalized_dice_focal", {"alpha": [0.2, 1.0, 0.6], "lambda_gdl": 0.5}),
    ("combo", {"alpha": 0.7}),
]


def _global_worker(rank: int, world: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    mine = slice(2 * rank, 2 * rank + 2)
    for name, options in GLOBAL_CASES:
        entry = get(name)
        opts = {**options, "ignore_index": 255, "smooth_nr": 1e-3, "smooth_dr": 1e-3}
        if name == "combo":
            opts = {**options, "ignore_index": 255}
        x, t = _inputs(entry, (2 * world, 3, 5, 6), opts, torch.float64, gen)
        t[0] = 255  # rank 0 holds fewer valid pixels: local means differ from global ones
        if "weight" in options:  # the global divisor indexes the weights with the labels
            t = t.to(torch.uint8)
        whole, whole_grad = run_with_grad(entry.reference, x.cpu(), t.cpu(), opts)
        for fn, xs in ((entry.reference, x[mine].cpu()), (entry.kernel, x[mine].float())):
            ts = t[mine] if fn is entry.kernel else t[mine].cpu()
            alone, _ = run_with_grad(fn, xs, ts, opts)
            assert not torch.allclose(alone.cpu(), whole)
            opts_g = {**opts, "process_group": dist.group.WORLD}
            loss, grad = run_with_grad(fn, xs, ts, opts_g)
            torch.testing.assert_close(loss.cpu(), whole, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad.cpu(), whole_grad[mine], rtol=1e-4, atol=1e-7)


def test_global_batch_across_two_gloo_processes(seed):
    """With process_group, a compound loss on each rank's half of a batch equals the
    single-process loss on the whole batch, and each rank's gradient is its slice
    (reference path and kernel path)."""
    on_two_gloo_ranks(_global_worker, seed)


def test_process_group_needs_integer_labels(gen):
    """CE + Dice against class probabilities runs its two terms apart, which a
    ``process_group`` cannot sum over the global batch: a clear error before any
    collective."""
    x = torch.randn(1, 3, 2, 3, generator=gen).to(DEVICE)
    t = torch.softmax(torch.randn(1, 3, 2, 3, generator=gen), 1).to(DEVICE)
    with pytest.raises(ValueError, match="process_group needs integer labels"):
        get("ce_dice").kernel(x, t, process_group=object())
