"""The surface-distance metrics (Hausdorff distance and HD95, average surface distance,
normalised surface Dice) on the GPU EDT against the scipy reference, in the interpreter
on CPU and compiled on a GPU."""

from __future__ import annotations

import math
import re

import pytest
import torch
from kernel_checks import (
    DEVICE,
    DISTANCE_TOL,
    nested_masks,
    on_two_gloo_ranks,
    smooth_labels,
    to_channels_last,
)

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.kernels import surface as surface_mod

METRICS = ["hausdorff_distance", "average_surface_distance", "surface_dice"]


def check(name, preds, target, C, *args, **opts):
    got = getattr(ker, name)(preds.to(DEVICE), target.to(DEVICE), C, *args, **opts)
    want = getattr(ref, name)(preds, target, C, *args, **opts)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.cpu().double(), want, **DISTANCE_TOL, equal_nan=True)
    return got.cpu()


def option_sets(name, C, gen):
    """The options each metric is compared under: every percentile and direction for HD,
    both directions for ASD, one and per-class tolerances for NSD (none within float32
    rounding of a distance: 1.25 is no distance at unit or the tests' spacings)."""
    if name == "hausdorff_distance":
        return [
            {"percentile": p, "directed": d}
            for p in (None, 95, 0, 100, 50.5)
            for d in (False, True)
        ]
    if name == "average_surface_distance":
        return [{"directed": False}, {"directed": True}]
    per_class = [round(float(v), 2) + 0.005 for v in torch.rand(C, generator=gen) * 4]
    return [{"tolerance": 1.25}, {"tolerance": per_class}, {"tolerance": 0}]


CASES = [
    (2, (2, 23, 31), None),
    (3, (2, 30, 17), (0.7, 1.3)),
    (19, (1, 21, 19), None),
    (4, (2, 7, 9, 11), (2.0, 1.0, 0.5)),
]


@pytest.mark.parametrize(("C", "shape", "spacing"), CASES, ids=["c2", "c3-spacing", "c19", "3d"])
@pytest.mark.parametrize("name", METRICS)
def test_matches_reference(name, C, shape, spacing, gen):
    target = smooth_labels(gen, C, shape)
    preds = smooth_labels(gen, C, shape)
    target = target.masked_fill(torch.rand(shape, generator=gen) < 0.05, 255)
    for opts in option_sets(name, C, gen):
        check(name, preds, target, C, spacing=spacing, ignore_index=255, **opts)


@pytest.mark.parametrize("name", ["average_surface_distance", "surface_dice"])
def test_runs_longer_than_a_block(name, gen, monkeypatch):
    """ASD's sums and NSD's counts of a class's surface distances go ``BLOCK`` (1024) at a
    time, more than a surface at the tests' shapes holds; with 16 the runs here take
    several blocks, the last one partial."""
    monkeypatch.setattr(surface_mod, "_STATS_BLOCK", 16)
    target = smooth_labels(gen, 3, (2, 30, 17))
    preds = smooth_labels(gen, 3, (2, 30, 17))
    for opts in option_sets(name, 3, gen):
        check(name, preds, target, 3, spacing=(0.7, 1.3), **opts)


@pytest.mark.parametrize("shape", [(2, 2, 29), (1, 1, 31), (2, 2, 2, 9)], ids=str)
@pytest.mark.parametrize("name", METRICS)
def test_thin_images_where_every_pixel_is_on_a_surface(name, shape, gen):
    """Images two pixels thick or less: every pixel touches the border, so every pixel is a
    surface pixel and the last slot's run of sorted distances ends at the last entry."""
    target = torch.randint(0, 3, shape, generator=gen)
    preds = torch.randint(0, 3, shape, generator=gen)
    for opts in option_sets(name, 3, gen):
        check(name, preds, target, 3, **opts)


@pytest.mark.parametrize("name", METRICS)
def test_logits_noise_and_label_dtypes(name, gen):
    """Logits (argmax as in ``confusion_matrix``; channels_last read in place), salt-and-
    pepper labels (surfaces nearly everywhere), uint8 and int16 labels, transposed
    labels, a single class; the same result twice."""
    opts = option_sets(name, 3, gen)[0]
    target = torch.randint(0, 3, (2, 13, 17), generator=gen)
    logits = torch.randn(2, 3, 13, 17, generator=gen)
    first = check(name, to_channels_last(logits), target.to(torch.uint8), 3, **opts)
    again = getattr(ker, name)(logits.to(DEVICE), target.to(DEVICE), 3, **opts).cpu()
    torch.testing.assert_close(again, first, rtol=0, atol=0, equal_nan=True)  # deterministic
    check(name, logits.argmax(1).to(torch.int16), target, 3, **opts)
    check(name, logits.argmax(1).mT.contiguous().mT, target, 3, **opts)
    one = torch.zeros(1, 5, 6, dtype=torch.int64)
    perfect = 1.0 if name == "surface_dice" else 0.0
    assert check(name, one, one, 1, **option_sets(name, 1, gen)[0]).tolist() == [[perfect]]


@pytest.mark.parametrize("classes", [[2], [4, 0, 3], [1, 1, 0]], ids=["one", "unordered", "repeat"])
@pytest.mark.parametrize("name", METRICS)
def test_classes_are_the_columns_of_all(name, classes, gen):
    """``classes`` gives column k for class ``classes[k]``: the reference's, and the same
    numbers as those columns of the full result (bitwise: the same transform per class)."""
    shape = (2, 19, 22)
    target = smooth_labels(gen, 5, shape)
    target = target.masked_fill(torch.rand(shape, generator=gen) < 0.05, 255)
    logits = torch.randn(2, 5, *shape[1:], generator=gen)
    for opts in option_sets(name, 5, gen)[:2]:
        some = check(name, logits, target, 5, classes=classes, ignore_index=255, **opts)
        full = getattr(ker, name)(logits.to(DEVICE), target.to(DEVICE), 5, ignore_index=255, **opts)
        torch.testing.assert_close(some, full.cpu()[:, classes], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("shape", "spacing"), [((2, 19, 23), None), ((1, 7, 9, 10), (2.0, 1.0, 0.5))], ids=["2d", "3d"]
)
@pytest.mark.parametrize("name", METRICS)
def test_multilabel_matches_reference(name, shape, spacing, gen):
    """Overlapping masks (nested regions, with ignored entries), predicted as bool masks,
    0/1 integers and logits (in the mask where positive)."""
    target = nested_masks(gen, shape)
    target = target.masked_fill(torch.rand(target.shape, generator=gen) < 0.05, 255)
    pred = nested_masks(gen, shape)
    logits = torch.randn(pred.shape, generator=gen).abs() * (2 * pred - 1)
    opts = {"spacing": spacing, "ignore_index": 255, "mode": "multilabel"}
    for preds, extra in [(pred.bool(), {}), (pred.to(torch.uint8), {"classes": [2, 0]}),
                         (logits, {})]:  # fmt: skip
        for more in option_sets(name, 3, gen)[:2]:
            check(name, preds, target, 3, **opts, **extra, **more)


@pytest.mark.parametrize("name", METRICS)
def test_one_hot_masks_are_the_labels(name, gen):
    """Disjoint masks (the one-hot of a label map) measure what the labels measure."""
    labels = smooth_labels(gen, 4, (2, 15, 18))
    pred = smooth_labels(gen, 4, (2, 15, 18))
    one_hot = [torch.nn.functional.one_hot(x, 4).movedim(-1, 1) for x in (pred, labels)]
    opts = option_sets(name, 4, gen)[0]
    as_masks = getattr(ker, name)(*(x.to(DEVICE) for x in one_hot), 4, mode="multilabel", **opts)
    as_labels = getattr(ker, name)(pred.to(DEVICE), labels.to(DEVICE), 4, **opts)
    torch.testing.assert_close(as_masks, as_labels, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_surface_metrics_are_the_single_metrics(mode, gen):
    """``surface_metrics`` (one transform per side for all four) gives the reference's
    values, and bitwise the single-metric functions' (symmetric HD, HD95, ASSD, NSD);
    without a tolerance, no NSD."""
    shape = (2, 17, 21)
    if mode == "multiclass":
        target, preds = smooth_labels(gen, 4, shape), smooth_labels(gen, 4, shape)
        target = target.masked_fill(torch.rand(shape, generator=gen) < 0.05, 255)
    else:
        target, preds = nested_masks(gen, shape), nested_masks(gen, shape).bool()
        preds[0, 2] = False  # a channel missed in image 0
    C = target.shape[1] if mode == "multilabel" else 4
    opts = {"ignore_index": 255, "mode": mode, "spacing": (1.0, 0.6), "classes": [2, 0, 2]}
    tolerance = [round(float(v), 2) + 0.005 for v in torch.rand(C, generator=gen) * 3]
    got = ker.surface_metrics(preds.to(DEVICE), target.to(DEVICE), C, tolerance, **opts)
    want = ref.surface_metrics(preds, target, C, tolerance, **opts)
    assert list(got) == list(want) == ["hd", "hd95", "assd", "nsd"]
    single = {
        "hd": check("hausdorff_distance", preds, target, C, **opts),
        "hd95": check("hausdorff_distance", preds, target, C, 95, **opts),
        "assd": check("average_surface_distance", preds, target, C, **opts),
        "nsd": check("surface_dice", preds, target, C, tolerance, **opts),
    }
    for key, value in got.items():
        torch.testing.assert_close(value.cpu().double(), want[key], **DISTANCE_TOL, equal_nan=True)
        torch.testing.assert_close(value.cpu(), single[key], rtol=0, atol=0, equal_nan=True)
    assert "nsd" not in ker.surface_metrics(preds.to(DEVICE), target.to(DEVICE), C, **opts)


def test_absent_classes():
    """Absent from both: NaN; from one side: inf for the distances (a missed or spurious
    class), 0 for the surface Dice, directed or not; an ignored region is in no class's
    mask."""
    target = torch.zeros(1, 8, 9, dtype=torch.int64)
    target[0, 2:5, 2:6] = 1  # class 1 in the target only
    preds = torch.zeros_like(target)
    preds[0, 6:, 6:] = 2  # class 2 predicted only
    for name, opts in [
        ("hausdorff_distance", {}),
        ("hausdorff_distance", {"directed": True, "percentile": 95}),
        ("average_surface_distance", {}),
        ("average_surface_distance", {"directed": True}),
    ]:
        got = check(name, preds, target, 4, **opts)[0]
        assert math.isnan(got[3]) and got[1] == math.inf and got[2] == math.inf, name
    nsd = check("surface_dice", preds, target, 4, 1.0)[0]
    assert math.isnan(nsd[3]) and nsd[1] == 0 and nsd[2] == 0
    ignored = target.masked_fill(target == 1, 255)  # every pixel of class 1: present nowhere
    assert math.isnan(check("hausdorff_distance", preds, ignored, 4, ignore_index=255)[0, 1])


def test_worked_example():
    """A 3x3 square against the same square moved one column right: each has 8 surface
    pixels, 4 on the other's surface and 4 at distance 1. HD 1, median 0.5, mean 0.5 either
    way; within 0.5 of the other surface half the pixels, within 1 all."""
    target = torch.zeros(1, 7, 7, dtype=torch.int64)
    target[0, 2:5, 2:5] = 1
    preds = target.roll(1, dims=2)
    one = {"classes": [1]}
    assert check("hausdorff_distance", preds, target, 2).tolist() == [[1.0, 1.0]]
    assert check("hausdorff_distance", preds, target, 2, percentile=50, **one).item() == 0.5
    for directed in (False, True):
        asd = check("average_surface_distance", preds, target, 2, directed=directed, **one)
        assert asd.item() == 0.5
    assert check("surface_dice", preds, target, 2, 0.5, **one).item() == 0.5
    assert check("surface_dice", preds, target, 2, [9.0, 1.0], **one).item() == 1.0


@pytest.mark.parametrize(
    ("name", "change", "error", "message"),
    [("hd", {"percentile": 101}, ValueError, "percentile must be in [0, 100]"),
     ("hd", {"spacing": (1.0,)}, ValueError, "spacing needs 2 entries"),
     ("asd", {"target": torch.full((1, 4, 5), 3)}, ValueError, "outside [0, 3)"),
     ("nsd", {"preds": torch.full((1, 4, 5), -1)}, ValueError, "outside [0, 3)"),
     ("hd", {"preds": torch.zeros(1, 4, 6, dtype=torch.int64)}, ValueError, "does not match"),
     ("asd", {"target": torch.zeros(1, 4, 5)}, TypeError, "integer class labels"),
     ("nsd", {"classes": [3]}, ValueError, "classes must be a non-empty list of indices in [0, 3)"),
     ("hd", {"classes": []}, ValueError, "classes must be a non-empty list"),
     ("asd", {"classes": [0.5]}, TypeError, "classes must be a sequence of integer"),
     ("nsd", {"tolerance": [1.0, 2.0]}, ValueError, "tolerance needs one number or 3"),
     ("nsd", {"tolerance": -1.0}, ValueError, "tolerance must be finite and >= 0"),
     ("nsd", {"tolerance": [1.0, math.nan, 1.0]}, ValueError, "tolerance must be finite"),
     ("nsd", {"tolerance": "1"}, TypeError, "tolerance must be a real number"),
     ("hd", {"mode": "binary"}, ValueError, "mode must be one of"),
     ("asd", {"mode": "multilabel", "preds": torch.zeros(1, 3, 4, 5)}, ValueError,
      "multilabel target shape (1, 4, 5) does not match"),
     ("nsd", {"mode": "multilabel", "preds": torch.zeros(1, 2, 4, 5)}, ValueError,
      "multilabel preds must be [B, 3, *spatial]"),
     ("hd", {"mode": "multilabel", "preds": torch.zeros(1, 3, 4, 5, dtype=torch.int64),
             "target": torch.full((1, 3, 4, 5), 0.5)}, ValueError, "hard {0, 1} masks"),
     ("asd", {"mode": "multilabel", "preds": torch.full((1, 3, 4, 5), 2),
              "target": torch.ones(1, 3, 4, 5)}, ValueError, "{0, 1} masks")],
)  # fmt: skip
def test_bad_input_is_named(name, change, error, message):
    name = {"hd": "hausdorff_distance", "asd": "average_surface_distance"}.get(name, "surface_dice")
    args = {"preds": torch.zeros(1, 4, 5, dtype=torch.int64), "target": torch.ones(1, 4, 5)}
    args["target"] = args["target"].long()
    if name == "surface_dice":
        args["tolerance"] = 1.0
    args.update(change)
    opts = {k: v for k, v in args.items() if k not in ("preds", "target")}
    for fn in (getattr(ker, name), getattr(ref, name)):
        with pytest.raises(error, match=re.escape(message)):
            fn(args["preds"].to(DEVICE), args["target"].to(DEVICE), 3, **opts)


def test_streaming_surface_metrics(gen):
    """Images of several updates, summarised: per-class nanmean over images and its mean
    over classes; ``missing`` replaces inf (a class in one mask only) in the distances."""
    shape = (3, 14, 17)
    target = smooth_labels(gen, 3, shape)
    preds = smooth_labels(gen, 3, shape)
    target[1, :3, :3] = 2
    preds[1][preds[1] == 2] = 0  # class 2 missed in image 1: inf distances there
    acc = ker.StreamingSurfaceMetrics(3, tolerance=1.5, classes=[1, 2], missing=99.0)
    with pytest.raises(RuntimeError, match="call update"):
        acc.compute()
    for part in (slice(0, 1), slice(1, 3)):
        acc.update(preds[part].to(DEVICE), target[part].to(DEVICE))
    whole = ker.surface_metrics(preds.to(DEVICE), target.to(DEVICE), 3, 1.5, classes=[1, 2])
    acc.sync()  # one process, torch.distributed not initialised: nothing to combine
    got = acc.compute()
    assert set(got) == {"hd", "hd95", "assd", "nsd", "mhd", "mhd95", "massd", "mnsd"}
    for key, v in whole.items():
        assert torch.equal(acc.values[key].nan_to_num(-1), v.nan_to_num(-1))
        if key != "nsd":
            assert v[1, 1] == math.inf
            v = torch.where(v == math.inf, 99.0, v)
        torch.testing.assert_close(got[key], v.nanmean(0), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(got["m" + key], v.nanmean(0).nanmean(), rtol=0, atol=0)
    acc.reset()
    acc.update(preds[:1].to(DEVICE), target[:1].to(DEVICE))
    assert acc.values["hd"].shape == (1, 2)
    with pytest.raises(ValueError, match="missing must be finite"):
        ker.StreamingSurfaceMetrics(3, missing=math.inf)
    with pytest.raises(TypeError, match="validate must be a bool"):
        ker.StreamingSurfaceMetrics(3, validate="yes")
    with pytest.raises(ValueError, match="tolerance needs one number or 3"):
        ker.StreamingSurfaceMetrics(3, tolerance=[1.0, 2.0])


def _sync_worker(rank: int, world: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    target = smooth_labels(gen, 3, (4, 12, 13))
    preds = smooth_labels(gen, 3, (4, 12, 13))
    acc = ker.StreamingSurfaceMetrics(3, tolerance=2.0, mode="multiclass")
    mine = slice(0, 1) if rank == 0 else slice(1, 4)  # uneven: 1 and 3 images
    acc.update(preds[mine].to(DEVICE), target[mine].to(DEVICE))
    acc.sync()
    whole = ker.surface_metrics(preds.to(DEVICE), target.to(DEVICE), 3, 2.0)
    for key, v in whole.items():
        assert torch.equal(acc.values[key].nan_to_num(-1), v.nan_to_num(-1)), key
    acc.update(preds[mine].to(DEVICE), target[mine].to(DEVICE))  # local again until a sync
    assert acc.values["hd"].shape[0] == 2 * (mine.stop - mine.start)


def test_streaming_surface_metrics_sync_across_two_gloo_processes(seed):
    on_two_gloo_ranks(_sync_worker, seed)
