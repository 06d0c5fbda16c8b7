"""Triton confusion matrix and metrics against the reference and torchmetrics, in the
interpreter on CPU and compiled on a GPU: labels and fused-argmax logits, 2-D and 3-D,
C in {1, 2, 19, 150, 1000} (private histograms and integer atomics; past 4096 classes,
atomics alone) and either side of the histogram's limit, per image, several pixel tiles
per program, ties, bad labels, the streaming accumulator and its gloo synchronisation."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from kernel_checks import (
    DEVICE,
    LABELS_WITH_255,
    METRIC_ULPS,
    assert_runs_split,
    chunked_runs,
    on_two_gloo_ranks,
)

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.kernels import metrics as metrics_mod


def _inputs(B, C, spatial, gen, ignore_frac=0.2, label_dtype=torch.int64):
    logits = torch.randn(B, C, *spatial, generator=gen)
    target = torch.randint(0, C, (B, *spatial), generator=gen)
    target = target.masked_fill(torch.rand(target.shape, generator=gen) < ignore_frac, 255)
    return logits.to(DEVICE), target.to(label_dtype).to(DEVICE)


@pytest.mark.parametrize(
    ("C", "spatial", "per_image"),
    list(itertools.product([1, 2, 19, 150, 1000], [(5, 7), (3, 4, 5)], [False, True])),
)
def test_confusion_matrix_matches_reference(C, spatial, per_image, gen):
    logits, target = _inputs(3, C, spatial, gen)
    for preds in (logits, logits.argmax(1).to(torch.int32)):
        got = ker.confusion_matrix(preds, target, C, ignore_index=255, per_image=per_image)
        want = ref.confusion_matrix(preds, target, C, ignore_index=255, per_image=per_image)
        assert got.dtype == torch.int64 and torch.equal(got, want)


@pytest.mark.parametrize(
    ("C", "hist_bins", "diag_bins"),
    [(19, None, None), (150, None, None), (1000, None, None), (19, 16, 16), (150, 16, 16),
     (2, 0, None), (19, 0, None)],
)  # fmt: skip
def test_mostly_right_predictions(C, hist_bins, diag_bins, gen, monkeypatch):
    """A good model's matrix is nearly diagonal: the path that counts the diagonal apart
    (C > 31) must agree with the reference, per image too, from labels and from logits.
    From C = 4096 no private histogram fits, not even the diagonal's: every counted pixel
    is one integer atomic; bin limits lowered to 16 take that path at C = 19 and 150.
    ``SEGTRITON_HIST_BINS=0`` (patched here as the module read it) sends C = 2 and 19 to
    the atomics with the diagonal's histogram."""
    if diag_bins is not None:
        monkeypatch.setattr(metrics_mod, "_DIAG_BINS", diag_bins)
    if hist_bins is not None:
        monkeypatch.setattr(metrics_mod, "HIST_BINS", hist_bins)
        assert metrics_mod._histogram_bins(C)[0] == 0
        assert (metrics_mod._histogram_bins(C)[1] > 0) == (diag_bins is None)
    _, target = _inputs(3, C, (6, 9), gen, ignore_frac=0.3)
    wrong = torch.rand(target.shape, generator=gen).to(DEVICE) < 0.15
    guess = torch.randint(0, C, target.shape, generator=gen).to(DEVICE)
    preds = torch.where(wrong | (target == 255), guess, target)
    logits = torch.randn(3, C, 6, 9, generator=gen).to(DEVICE).scatter(1, preds[:, None], 9.0)
    for p, per_image in itertools.product((preds.to(torch.int16), logits), (False, True)):
        got = ker.confusion_matrix(p, target, C, ignore_index=255, per_image=per_image)
        want = ref.confusion_matrix(p, target, C, ignore_index=255, per_image=per_image)
        assert torch.equal(got, want)
    assert torch.diagonal(want, dim1=-2, dim2=-1).sum() > want.sum() // 2


@pytest.mark.parametrize(("C", "bins"), [(31, (1024, 0)), (32, (0, 64)), (63, (0, 64))])
def test_histogram_limit(C, bins, gen):
    """Up to 31 classes (963 cells and two more bins) each program counts every cell in a
    private histogram; from 32 the cells take integer atomics and the diagonal a
    histogram of its own. Triton's histogram costs each pixel work in proportion to its
    bins (``metrics.py``), so the 2048- and 4096-bin histograms that C = 32..63 took
    before are not used. Both sides match the reference, from labels and logits, with a
    diagonal dense enough to take the diagonal's histogram."""
    assert metrics_mod._histogram_bins(C) == bins
    _, target = _inputs(2, C, (11, 13), gen, ignore_frac=0.2)
    guess = torch.randint(0, C, target.shape, generator=gen).to(DEVICE)
    right = torch.rand(target.shape, generator=gen).to(DEVICE) < 0.5
    preds = torch.where(right & (target != 255), target, guess)
    logits = torch.randn(2, C, 11, 13, generator=gen).to(DEVICE).scatter(1, preds[:, None], 9.0)
    for p, per_image in itertools.product((preds, logits), (False, True)):
        got = ker.confusion_matrix(p, target, C, ignore_index=255, per_image=per_image)
        want = ref.confusion_matrix(p, target, C, ignore_index=255, per_image=per_image)
        assert torch.equal(got, want)


def test_hist_bins_knob():
    """``SEGTRITON_HIST_BINS`` sets the histogram's limit when the kernels are imported:
    0 sends every class count to the atomics, 4096 takes the 4096-bin histograms back
    (C up to 63), and a value out of range is refused by name."""
    code = (
        "from segtriton.kernels import metrics as m; "
        "print(m._histogram_bins(19), m._histogram_bins(40))"
    )
    runs = {None: "(512, 0) (0, 64)", "0": "(0, 32) (0, 64)", "4096": "(512, 0) (2048, 0)"}
    for value, want in runs.items():
        env = {k: v for k, v in os.environ.items() if k != "SEGTRITON_HIST_BINS"}
        env.update({} if value is None else {"SEGTRITON_HIST_BINS": value})
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == want, out.stdout + out.stderr
    env["SEGTRITON_HIST_BINS"] = "5000"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "SEGTRITON_HIST_BINS must be 0 to 4096" in bad.stderr


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(
    ("C", "from_logits"), [(3, False), (150, False), (3, True), (19, True), (150, True)]
)
def test_confusion_matrix_over_runs_of_tiles(C, from_logits, per_image, gen, monkeypatch):
    """Several pixel tiles per program, the last run past the image
    (``kernel_checks.chunked_runs``): labels and small-C logits take the private
    histograms; C = 150 the atomic adds and the diagonal histogram."""
    runs = chunked_runs(monkeypatch)
    logits, target = _inputs(2, C, (41, 50), gen)  # 2050 = 2^11 + 2 pixels
    preds = logits if from_logits else logits.argmax(1).to(torch.int32)
    got = ker.confusion_matrix(preds, target, C, ignore_index=255, per_image=per_image)
    want = ref.confusion_matrix(preds, target, C, ignore_index=255, per_image=per_image)
    assert torch.equal(got, want)
    assert_runs_split(runs)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("from_logits", [False, True])
def test_dense_and_sparse_diagonal_tiles_in_one_run(from_logits, per_image, gen, monkeypatch):
    """C = 150: a tile whose diagonal holds an eighth of its pixels or more counts it in
    the program's private histogram, a sparser one sends its hits through the atomics.
    Right predictions on the first 1100 pixels of each image and random ones after put
    both kinds of tile, and one that changes inside it, into the same run."""
    runs = chunked_runs(monkeypatch)
    C = 150
    logits, target = _inputs(2, C, (41, 50), gen, ignore_frac=0.1)
    right = (torch.arange(41 * 50, device=DEVICE) < 1100).view(1, 41, 50)
    preds = torch.where(right & (target != 255), target, logits.argmax(1))
    if from_logits:
        preds = logits.scatter(1, preds[:, None], 9.0)
    got = ker.confusion_matrix(preds, target, C, ignore_index=255, per_image=per_image)
    want = ref.confusion_matrix(preds, target, C, ignore_index=255, per_image=per_image)
    assert torch.equal(got, want)
    hits = torch.diagonal(want, dim1=-2, dim2=-1).sum()
    assert 2 * 1100 * 0.8 < hits < 2 * 1100, hits
    assert_runs_split(runs)


@pytest.mark.parametrize("label_dtype", LABELS_WITH_255, ids=str)
def test_label_dtypes_and_channels_last(label_dtype, gen):
    logits, target = _inputs(2, 5, (6, 7), gen, label_dtype=label_dtype)
    want = ref.confusion_matrix(logits, target.long(), 5, ignore_index=255)
    assert torch.equal(ref.confusion_matrix(logits, target, 5, ignore_index=255), want)
    cl = logits.contiguous(memory_format=torch.channels_last)
    assert torch.equal(ker.confusion_matrix(cl, target, 5, ignore_index=255), want)
    assert torch.equal(ker.confusion_matrix(logits.argmax(1), target, 5, ignore_index=255), want)


@pytest.mark.parametrize("C", [4, 300])
def test_argmax_ties_go_to_the_lowest_class(C):
    logits = torch.zeros(1, C, 2, 3, device=DEVICE)
    logits[0, [1, C - 2], 0, 0] = 5.0  # a tie between an early and a late class
    target = torch.ones(1, 2, 3, dtype=torch.long, device=DEVICE)
    cm = ker.confusion_matrix(logits, target, C)
    assert cm[1, 1] == 1 and cm[1, 0] == 5 and cm.sum() == 6


@pytest.mark.parametrize("C", [4, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_argmax_of_special_values_is_torchs(C, dtype):
    """NaN beats +inf (the first NaN wins), -0.0 ties 0.0, an all -inf pixel is class 0,
    as in torch.argmax; at C = 300 the pair sits in different class chunks."""
    nan, inf, late = float("nan"), float("inf"), C - 2
    logits = torch.full((1, C, 1, 6), -1.0)
    logits[0, :, 0, 0] = -inf
    logits[0, [1, late], 0, 1] = torch.tensor([inf, nan])
    logits[0, [1, late], 0, 2] = torch.tensor([nan, nan])
    logits[0, [1, late], 0, 3] = torch.tensor([-0.0, 0.0])
    logits[0, [1, late], 0, 4] = torch.tensor([0.0, -0.0])
    logits[0, :, 0, 5] = nan
    logits = logits.to(dtype).to(DEVICE)
    assert logits.argmax(1).flatten().tolist() == [0, late, 1, 1, 1, 0]
    target = torch.zeros(1, 1, 6, dtype=torch.long, device=DEVICE)
    assert torch.equal(
        ker.confusion_matrix(logits, target, C), ref.confusion_matrix(logits, target, C)
    )


@pytest.mark.parametrize("average", ["dataset", "image"])
def test_metrics_match_reference_and_torchmetrics(average, gen):
    from torchmetrics import classification as tm  # a dev dependency: missing fails

    logits, target = _inputs(2, 19, (9, 10), gen)
    got = ker.segmentation_metrics(logits, target, 19, ignore_index=255, average=average)
    want = ref.segmentation_metrics(logits, target, 19, ignore_index=255, average=average)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], equal_nan=True, rtol=0, atol=0)
    if average == "dataset":
        pred, t = logits.argmax(1).cpu(), target.cpu()
        cm = tm.MulticlassConfusionMatrix(19, ignore_index=255)(pred, t)
        assert torch.equal(got["confusion_matrix"].cpu(), cm)
        miou = tm.MulticlassJaccardIndex(19, average="macro", ignore_index=255)(pred, t)
        present = ~torch.isnan(got["iou"].cpu())  # torchmetrics drops absent classes too
        torch.testing.assert_close(got["miou"].cpu().float(), miou, rtol=1e-6, atol=1e-6)
        per_class = tm.MulticlassJaccardIndex(19, average="none", ignore_index=255)(pred, t)
        torch.testing.assert_close(
            got["iou"].cpu()[present].float(), per_class[present], rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("average", ["dataset", "image"])
def test_selected_classes(average, gen):
    """``classes`` reports and averages those columns (in order, repeats allowed); the
    matrix and pixel accuracy still count every pixel."""
    logits, target = _inputs(3, 6, (7, 8), gen)
    classes = [5, 1, 2, 1]
    got = ker.segmentation_metrics(logits, target, 6, 255, average, classes=classes)
    want = ref.segmentation_metrics(logits, target, 6, 255, average, classes=classes)
    full = ref.segmentation_metrics(logits, target, 6, 255, average)
    for key in want:
        torch.testing.assert_close(got[key], want[key], equal_nan=True, rtol=0, atol=0)
    for key in ("iou", "dice", "precision", "class_accuracy", "specificity", "mcc"):
        torch.testing.assert_close(want[key], full[key][classes], equal_nan=True, rtol=0, atol=0)
    assert torch.equal(want["confusion_matrix"], full["confusion_matrix"])
    assert want["pixel_accuracy"] == full["pixel_accuracy"]
    if average == "dataset":
        torch.testing.assert_close(want["miou"], full["iou"][classes].nanmean())
    acc = ker.StreamingMetrics(6, 255, average, classes=classes)
    acc.update(logits, target)
    streamed = acc.compute()
    assert torch.equal(
        streamed.pop("confusion_matrix"), ref.confusion_matrix(logits, target, 6, 255)
    )
    for key, value in streamed.items():
        torch.testing.assert_close(value, want[key], equal_nan=True, rtol=0, atol=0)
    with pytest.raises(ValueError, match="classes"):
        ker.segmentation_metrics(logits, target, 6, classes=[6])
    with pytest.raises(ValueError, match="classes"):
        ker.StreamingMetrics(6, classes=[-1])


def test_bad_labels_raise_or_are_left_out(gen):
    logits, target = _inputs(2, 4, (5, 6), gen, ignore_frac=0.0)
    target[1, 2, 3] = 9
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        ker.confusion_matrix(logits, target, 4)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        ker.confusion_matrix(logits.argmax(1) + 1, target.clamp_max(3), 4)
    cm = ker.confusion_matrix(logits, target, 4, validate=False)
    clean = target.clone()
    clean[1, 2, 3] = 255
    assert torch.equal(cm, ref.confusion_matrix(logits, clean, 4, ignore_index=255))


def test_shape_and_dtype_errors(gen):
    logits, target = _inputs(2, 4, (5, 6), gen)
    with pytest.raises(ValueError, match="logits of shape"):
        ker.confusion_matrix(logits[:, :3], target, 4)
    with pytest.raises(TypeError, match="integer class labels"):
        ker.confusion_matrix(logits, target.float(), 4)
    with pytest.raises(ValueError, match="num_classes"):
        ker.confusion_matrix(logits, target, 0)


@pytest.mark.parametrize("average", ["dataset", "image"])
def test_streaming_equals_one_shot(average, gen):
    batches = [_inputs(2, 6, (7, 8), gen) for _ in range(3)]
    acc = ker.StreamingMetrics(6, ignore_index=255, average=average)
    for k, (logits, target) in enumerate(batches):
        acc.update(logits, target)
        if k == 1:
            acc.compute()  # a read between updates leaves the counts as they were
    logits = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    want = ref.segmentation_metrics(logits, target, 6, ignore_index=255, average=average)
    want["confusion_matrix"] = ref.confusion_matrix(logits, target, 6, ignore_index=255)
    acc.sync()  # one process, torch.distributed not initialised: nothing to combine
    got = acc.compute()
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], equal_nan=True, rtol=0, atol=0)
    acc.reset()
    acc.update(*batches[0])
    assert acc.confusion_matrix.shape == (6, 6)  # 'image' keeps [3, C] per image, not C x C
    assert acc.confusion_matrix.sum() == (batches[0][1] != 255).sum()
    bad = batches[1][1].clone()
    bad[1, 0, 0] = 7  # in the batch's second image: 'image' counts per image
    acc.update(batches[1][0], bad)  # no sync, no error yet
    with pytest.raises(ValueError, match="outside"):
        acc.compute()


def _assert_metrics_of(acc, logits, target, average):
    want = ref.segmentation_metrics(logits, target, 5, average=average)
    got = acc.compute()
    assert torch.equal(got["confusion_matrix"].cpu(), ref.confusion_matrix(logits, target, 5))
    for key in ("miou", "dice", "pixel_accuracy"):
        torch.testing.assert_close(got[key].cpu(), want[key], **METRIC_ULPS, equal_nan=True)


def _sync_worker(rank: int, world: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 5, 6, 7, generator=gen)
    target = torch.randint(0, 5, (6, 6, 7), generator=gen)
    mine = slice(0, 1) if rank == 0 else slice(1, 4)  # uneven: 1 and 3 images
    more = slice(4, 5) if rank == 0 else slice(5, 6)  # a second update on each rank
    seen = [0, 4] if rank == 0 else [1, 2, 3, 5]
    for average in ("dataset", "image"):
        acc = ker.StreamingMetrics(5, average=average, device=DEVICE)
        acc.update(logits[mine].to(DEVICE), target[mine].to(DEVICE))
        acc.sync()
        acc.sync()  # a second sync must not count a rank's pixels twice
        _assert_metrics_of(acc, logits[:4], target[:4], average)
        acc.update(logits[more].to(DEVICE), target[more].to(DEVICE))
        _assert_metrics_of(acc, logits[seen], target[seen], average)  # local until sync
        acc.sync()
        order = [0, 4, 1, 2, 3, 5]  # 'image' gathers rank 0's images, then rank 1's
        _assert_metrics_of(acc, logits[order], target[order], average)
    acc = ker.StreamingMetrics(5, device=DEVICE)
    bad = target[mine].clone()
    if rank == 1:
        bad[0, 0, 0] = 9
    acc.update(logits[mine].to(DEVICE), bad.to(DEVICE))
    acc.sync()
    with pytest.raises(ValueError, match="outside"):  # on rank 0 too, once synced
        acc.compute()


def test_sync_across_two_gloo_processes(seed):
    on_two_gloo_ranks(_sync_worker, seed)
