"""Multilabel segmentation metrics (one mask per channel, overlapping as BraTS's regions):
the Triton counting pass against the reference and torchmetrics, in the interpreter on CPU
and compiled on a GPU: preds as logits of every dtype, bool or 0/1 integers, targets of
every mask dtype, ignore_index, 2-D and 3-D, channels_last, C from 1 to 300 (the class-block
grid), bad mask values, the streaming accumulator and its gloo synchronisation."""

from __future__ import annotations

import itertools

import pytest
import torch
from kernel_checks import (
    DEVICE,
    METRIC_ULPS,
    assert_runs_split,
    chunked_runs,
    nested_masks,
    on_two_gloo_ranks,
    to_channels_last,
)

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.reference.metrics import mask_values

PREDS = ["float32", "float16", "bfloat16", "bool", "uint8", "int64"]
TARGETS = [torch.bool, torch.uint8, torch.int64, torch.float32, torch.float16, torch.bfloat16]


def _inputs(gen, B, C, spatial, preds="float32", target_dtype=torch.uint8, ignore=None):
    """Logits or 0/1 preds and 0/1 targets ``[B, C, *S]``; ``ignore`` marks a fifth of the
    target entries (not for bool targets)."""
    shape = (B, C, *spatial)
    target = (torch.rand(shape, generator=gen) < 0.4).to(target_dtype)
    if ignore is not None:
        target[torch.rand(shape, generator=gen) < 0.2] = ignore
    logits = torch.randn(shape, generator=gen) * 2
    pred = logits.to(getattr(torch, preds)) if preds.startswith(("float", "bf")) else logits > 0
    if preds in ("uint8", "int64"):
        pred = pred.to(getattr(torch, preds))
    return pred.to(DEVICE), target.to(DEVICE)


def _assert_counts_equal(preds, target, C, ignore):
    for per_image in (False, True):
        got = ker.confusion_matrix(preds, target, C, ignore, per_image, mode="multilabel")
        want = ref.confusion_matrix(preds, target, C, ignore, per_image, mode="multilabel")
        assert got.dtype == torch.int64 and torch.equal(got, want), per_image


def _cases():
    """C x spatial, with the pred kind, target dtype and layout taking turns."""
    rows = []
    for k, (C, spatial) in enumerate(itertools.product([1, 3, 19, 150, 300], [(7, 9), (3, 5, 6)])):
        preds, target, cl = PREDS[k % len(PREDS)], TARGETS[k % len(TARGETS)], k % 3 == 1
        name = f"C{C}-{len(spatial)}d-{preds}-{str(target)[6:]}{'-cl' if cl else ''}"
        rows.append(pytest.param(C, spatial, preds, target, cl, id=name))
    return rows


@pytest.mark.parametrize("preds", ["bfloat16", "uint8"])
@pytest.mark.parametrize("C", [3, 19])
def test_counts_over_runs_of_tiles(C, preds, gen, monkeypatch):
    """Several pixel tiles per program, the last run past the image
    (``kernel_checks.chunked_runs``), at 2050 = 2^11 + 2 pixels."""
    runs = chunked_runs(monkeypatch)
    p, t = _inputs(gen, 2, C, (41, 50), preds, torch.uint8, 255)
    _assert_counts_equal(p, t, C, 255)
    assert_runs_split(runs)


@pytest.mark.parametrize(("C", "spatial", "preds", "target_dtype", "channels_last"), _cases())
def test_matrix_matches_reference(C, spatial, preds, target_dtype, channels_last, gen):
    ignore = None if target_dtype == torch.bool else 255
    p, t = _inputs(gen, 2, C, spatial, preds, target_dtype, ignore)
    if channels_last:
        p, t = to_channels_last(p), to_channels_last(t)
    _assert_counts_equal(p, t, C, ignore)


@pytest.mark.parametrize("preds", PREDS)
@pytest.mark.parametrize("target_dtype", TARGETS, ids=str)
def test_every_pred_and_target_dtype(preds, target_dtype, gen):
    """Targets compared as numbers in their own dtype: -1 in a float or int64 mask, 255 in
    a uint8 one (where -1 cannot be stored)."""
    ignore = None if target_dtype == torch.bool else (255 if target_dtype == torch.uint8 else -1)
    p, t = _inputs(gen, 2, 3, (6, 11), preds, target_dtype, ignore)
    _assert_counts_equal(p, t, 3, ignore)


@pytest.mark.parametrize("average", ["dataset", "image"])
def test_metrics_match_reference_and_torchmetrics(average, gen):
    from torchmetrics import classification as tm  # a dev dependency: missing fails

    preds, target = _inputs(gen, 3, 4, (9, 10), "int64", torch.int64, ignore=-1)
    got = ker.segmentation_metrics(preds, target, 4, -1, average, mode="multilabel")
    want = ref.segmentation_metrics(preds, target, 4, -1, average, mode="multilabel")
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], equal_nan=True, rtol=0, atol=0)
    if average == "image":
        return
    p, t = preds.cpu(), target.cpu()
    cm = tm.MultilabelConfusionMatrix(4, ignore_index=-1)(p, t)
    assert torch.equal(got["confusion_matrix"].cpu(), cm)
    theirs = {
        "iou": tm.MultilabelJaccardIndex(4, average="none", ignore_index=-1),
        "dice": tm.MultilabelF1Score(4, average="none", ignore_index=-1),
        "precision": tm.MultilabelPrecision(4, average="none", ignore_index=-1),
        "class_accuracy": tm.MultilabelRecall(4, average="none", ignore_index=-1),
        "specificity": tm.MultilabelSpecificity(4, average="none", ignore_index=-1),
        "pixel_accuracy": tm.MultilabelAccuracy(4, average="micro", ignore_index=-1),
    }
    for key, metric in theirs.items():  # every class is present: no NaN against their 0
        torch.testing.assert_close(got[key].cpu().float(), metric(p, t), rtol=1e-6, atol=1e-6)
    for c in range(4):  # their multilabel MCC pools the channels: per channel it is binary
        mcc = tm.BinaryMatthewsCorrCoef(ignore_index=-1)(p[:, c], t[:, c])
        torch.testing.assert_close(got["mcc"][c].cpu().float(), mcc, rtol=1e-5, atol=1e-6)
    pooled = tm.MultilabelMatthewsCorrCoef(4, ignore_index=-1)(p, t)
    torch.testing.assert_close(got["overall_mcc"].cpu().float(), pooled, rtol=1e-5, atol=1e-6)


def test_selected_channels(gen):
    preds, target = _inputs(gen, 3, 4, (6, 7), "bfloat16", torch.uint8, 255)
    for average in ("dataset", "image"):
        got = ker.segmentation_metrics(preds, target, 4, 255, average, "multilabel", [3, 1])
        want = ref.segmentation_metrics(preds, target, 4, 255, average, "multilabel", [3, 1])
        full = ref.segmentation_metrics(preds, target, 4, 255, average, "multilabel")
        for key in want:
            torch.testing.assert_close(got[key], want[key], equal_nan=True, rtol=0, atol=0)
        torch.testing.assert_close(want["specificity"], full["specificity"][[3, 1]])
        assert want["pixel_accuracy"] == full["pixel_accuracy"]


def test_nested_regions_and_absent_channels(gen):
    """BraTS-like nested masks; a channel in neither mask of an image gives NaN there and
    drops out of that image's means, one in the target only gives IoU 0."""
    target = nested_masks(gen, (2, 12, 13)).to(DEVICE)
    preds = nested_masks(gen, (2, 12, 13)).to(torch.bool).to(DEVICE)
    target[0, 2], preds[0, 2] = 0, False  # channel 2 absent from image 0
    preds[1, 1] = False  # missed in image 1
    got = ker.segmentation_metrics(preds, target, 3, average="image", mode="multilabel")
    want = ref.segmentation_metrics(preds, target, 3, average="image", mode="multilabel")
    for key in want:
        torch.testing.assert_close(got[key], want[key], equal_nan=True, rtol=0, atol=0)
    cm = ker.confusion_matrix(preds, target, 3, per_image=True, mode="multilabel")
    assert cm[0, 2, 1].sum() == 0 and cm[0, 2, :, 1].sum() == 0  # no target, no prediction
    if target[1, 1].any():
        assert cm[1, 1, 1, 1] == 0 and cm[1, 1, 1, 0] == target[1, 1].sum()


def test_logits_at_zero_nan_and_all_ignored(gen):
    """A logit of 0 or NaN is outside the mask (``x > 0``); a channel whose every entry is
    ignored counts nothing."""
    preds = torch.tensor([0.0, -0.0, float("nan"), 1e-30, -1e-30, float("inf")])
    preds = preds.view(1, 1, 2, 3).expand(1, 2, 2, 3).contiguous().to(DEVICE)
    target = torch.ones(1, 2, 2, 3, device=DEVICE)
    target[0, 1] = -100
    cm = ker.confusion_matrix(preds, target, 2, -100, mode="multilabel")
    assert cm[0].tolist() == [[0, 0], [4, 2]] and cm[1].sum() == 0
    _assert_counts_equal(preds, target, 2, -100)
    with pytest.raises(TypeError, match="float64"):  # the kernels compute in float32
        ker.confusion_matrix(preds.double(), target, 2, -100, mode="multilabel")


def test_bad_mask_values_raise_or_follow_mask_values(gen):
    preds, target = _inputs(gen, 2, 3, (5, 6), "uint8", torch.float32)
    soft = target.clone()
    soft[1, 2, 3, 4] = 0.5
    for fn in (ker.confusion_matrix, ref.confusion_matrix):
        with pytest.raises(ValueError, match=r"hard \{0, 1\} masks"):
            fn(preds, soft, 3, mode="multilabel")
    wide = preds.clone()
    wide[0, 1, 2, 3] = 2
    with pytest.raises(ValueError, match=r"other than 0 / 1"):
        ker.confusion_matrix(wide, target, 3, mode="multilabel")
    with pytest.raises(ValueError, match=r"must be \{0, 1\} masks, got 2"):
        ref.confusion_matrix(wide, target, 3, mode="multilabel")
    got = ker.confusion_matrix(wide, soft, 3, mode="multilabel", validate=False)
    pred, true = mask_values(wide, soft, None)
    assert got[:, 1, 1].tolist() == (pred & true).sum((0, 2, 3)).tolist()
    assert got[:, :, 1].sum(-1).tolist() == pred.sum((0, 2, 3)).tolist()
    assert got.sum().item() == soft.numel()


def test_probabilities_for_logits_are_refused(gen):
    """Sigmoid outputs read as logits would all be in the mask: refused (reference,
    kernels, streaming at compute, and the multilabel surface metrics), unless the kernel
    is told not to validate; binarised float masks are not probabilities."""
    logits, target = _inputs(gen, 2, 3, (5, 6), "float32", torch.uint8)
    probs = logits.sigmoid()
    for fn in (ker.confusion_matrix, ref.confusion_matrix, ker.segmentation_metrics):
        with pytest.raises(ValueError, match="as probabilities do"):
            fn(probs, target, 3, mode="multilabel")
    with pytest.raises(ValueError, match="as probabilities do"):
        ker.hausdorff_distance(probs, target, 3, mode="multilabel")
    acc = ker.StreamingMetrics(3, mode="multilabel")
    acc.update(logits, target)
    acc.update(probs, target)  # no sync, no error yet; logits in other updates no excuse
    with pytest.raises(ValueError, match="as probabilities do"):
        acc.compute()
    unchecked = ker.confusion_matrix(probs, target, 3, mode="multilabel", validate=False)
    assert unchecked[:, :, 1].sum() == probs.numel()  # every entry predicted
    hard = (probs > 0.5).float()
    want = ref.confusion_matrix(probs > 0.5, target, 3, mode="multilabel")
    assert torch.equal(ker.confusion_matrix(hard, target, 3, mode="multilabel"), want)
    assert torch.equal(ref.confusion_matrix(hard, target, 3, mode="multilabel"), want)


def test_shape_and_mode_errors(gen):
    preds, target = _inputs(gen, 2, 3, (5, 6))
    with pytest.raises(ValueError, match="multilabel target shape"):
        ker.confusion_matrix(preds, target[:, :2], 3, mode="multilabel")
    with pytest.raises(ValueError, match=r"multilabel preds must be \[B, 4"):
        ker.segmentation_metrics(preds, target, 4, mode="multilabel")
    with pytest.raises(ValueError, match="empty"):
        ker.confusion_matrix(preds[:0], target[:0], 3, mode="multilabel")
    with pytest.raises(ValueError, match="mode"):
        ker.StreamingMetrics(3, mode="binary")


@pytest.mark.parametrize("average", ["dataset", "image"])
def test_streaming_equals_one_shot(average, gen):
    batches = [_inputs(gen, 2, 3, (7, 8), "float32", torch.uint8, 255) for _ in range(3)]
    acc = ker.StreamingMetrics(3, ignore_index=255, average=average, mode="multilabel")
    for preds, target in batches:
        acc.update(preds, target)
    preds = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    want = ref.segmentation_metrics(preds, target, 3, 255, average, mode="multilabel")
    want["confusion_matrix"] = ref.confusion_matrix(preds, target, 3, 255, mode="multilabel")
    got = acc.compute()
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], equal_nan=True, rtol=0, atol=0)
    assert acc.confusion_matrix.shape == (3, 2, 2)
    bad = batches[0][1].clone()
    bad[0, 0, 0, 0] = 7
    acc.update(batches[0][0], bad)  # no sync, no error yet
    with pytest.raises(ValueError, match="hard"):
        acc.compute()


def _sync_worker(rank: int, world: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    preds = torch.randn(4, 3, 6, 7, generator=gen)
    target = (torch.rand(4, 3, 6, 7, generator=gen) < 0.5).to(torch.uint8)
    mine = slice(0, 1) if rank == 0 else slice(1, 4)  # uneven: 1 and 3 images
    for average in ("dataset", "image"):
        acc = ker.StreamingMetrics(3, average=average, device=DEVICE, mode="multilabel")
        acc.update(preds[mine].to(DEVICE), target[mine].to(DEVICE))
        acc.sync()
        want = ref.segmentation_metrics(preds, target, 3, average=average, mode="multilabel")
        got = acc.compute()
        assert torch.equal(got["confusion_matrix"].cpu(), want["confusion_matrix"].sum(0)
                           if average == "image" else want["confusion_matrix"])  # fmt: skip
        for key in ("iou", "mdice", "pixel_accuracy"):
            torch.testing.assert_close(got[key].cpu(), want[key], **METRIC_ULPS, equal_nan=True)


def test_sync_across_two_gloo_processes(seed):
    on_two_gloo_ranks(_sync_worker, seed)
