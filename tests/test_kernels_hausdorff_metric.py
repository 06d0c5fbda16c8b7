"""The Hausdorff distance metric (HD, HD95) on the GPU EDT against the scipy reference, in
the interpreter on CPU and compiled on a GPU."""

from __future__ import annotations

import math
import re

import pytest
import torch
from kernel_checks import DEVICE, smooth_labels

from segtriton import kernels as ker
from segtriton import reference as ref


def check(preds, target, C, **opts):
    got = ker.hausdorff_distance(preds.to(DEVICE), target.to(DEVICE), C, **opts)
    want = ref.hausdorff_distance(preds, target, C, **opts)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-6, atol=1e-5, equal_nan=True)
    return got.cpu()


CASES = [
    (2, (2, 23, 31), None),
    (3, (2, 30, 17), (0.7, 1.3)),
    (19, (1, 21, 19), None),
    (4, (2, 7, 9, 11), (2.0, 1.0, 0.5)),
]


@pytest.mark.parametrize(("C", "shape", "spacing"), CASES, ids=["c2", "c3-spacing", "c19", "3d"])
@pytest.mark.parametrize("percentile", [None, 95, 0, 50.5])
def test_matches_reference(C, shape, spacing, percentile, gen):
    target = smooth_labels(gen, C, shape)
    preds = smooth_labels(gen, C, shape)
    target = target.masked_fill(torch.rand(shape, generator=gen) < 0.05, 255)
    for directed in (False, True):
        opts = {"percentile": percentile, "directed": directed, "spacing": spacing}
        check(preds, target, C, ignore_index=255, **opts)


def test_logits_noise_and_label_dtypes(gen):
    """Logits (argmax as in ``confusion_matrix``), salt-and-pepper labels (surfaces nearly
    everywhere), uint8 and int16 labels, a single class; the same result twice."""
    target = torch.randint(0, 3, (2, 13, 17), generator=gen)
    logits = torch.randn(2, 3, 13, 17, generator=gen)
    hd95 = check(logits, target.to(torch.uint8), 3, percentile=95)
    again = ker.hausdorff_distance(logits.to(DEVICE), target.to(DEVICE), 3, 95).cpu()
    torch.testing.assert_close(again, hd95, rtol=0, atol=0, equal_nan=True)  # deterministic
    check(logits.argmax(1).to(torch.int16), target, 3)
    one = torch.zeros(1, 5, 6, dtype=torch.int64)
    assert torch.equal(check(one, one, 1), torch.zeros(1, 1))


@pytest.mark.parametrize("classes", [[2], [4, 0, 3], [1, 1, 0]], ids=["one", "unordered", "repeat"])
def test_classes_are_the_columns_of_all(classes, gen):
    """``classes`` gives column k for class ``classes[k]``: the reference's, and the same
    numbers as those columns of the full result (bitwise: the same transform per class)."""
    target = smooth_labels(gen, 5, (2, 19, 22)).masked_fill(
        torch.rand(2, 19, 22, generator=gen) < 0.05, 255
    )
    logits = torch.randn(2, 5, 19, 22, generator=gen)
    for directed in (False, True):
        opts = {"percentile": 95, "directed": directed, "ignore_index": 255}
        some = check(logits, target, 5, classes=classes, **opts)
        full = ker.hausdorff_distance(logits.to(DEVICE), target.to(DEVICE), 5, **opts).cpu()
        torch.testing.assert_close(some, full[:, classes], rtol=0, atol=0, equal_nan=True)


def test_absent_classes_nan_or_inf():
    """Absent from both: NaN; from one side: inf (a missed or spurious class), directed
    or not; an ignored region is in no class's mask."""
    target = torch.zeros(1, 8, 9, dtype=torch.int64)
    target[0, 2:5, 2:6] = 1  # class 1 in the target only
    preds = torch.zeros_like(target)
    preds[0, 6:, 6:] = 2  # class 2 predicted only
    hd = check(preds, target, 4)
    assert math.isnan(hd[0, 3]) and hd[0, 1] == math.inf and hd[0, 2] == math.inf
    directed = check(preds, target, 4, directed=True)
    assert torch.equal(hd.isinf(), directed.isinf()) and math.isnan(directed[0, 3])
    # every pixel of class 1 ignored: present nowhere
    assert math.isnan(check(preds, target.masked_fill(target == 1, 255), 4, ignore_index=255)[0, 1])


def test_worked_example():
    """A 3x3 square against the same square moved one column right: every surface pixel
    of one is at most 1 from the other's; the median is 0 (the shared pixels)."""
    target = torch.zeros(1, 7, 7, dtype=torch.int64)
    target[0, 2:5, 2:5] = 1
    preds = target.roll(1, dims=2)
    hd = check(preds, target, 2)
    assert hd.tolist() == [[1.0, 1.0]]
    assert check(preds, target, 2, percentile=50)[0, 1] == 0.5  # 8 surface pixels, 4 at 0


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [({"percentile": 101}, ValueError, "percentile must be in [0, 100]"),
     ({"spacing": (1.0,)}, ValueError, "spacing needs 2 entries"),
     ({"target": torch.full((1, 4, 5), 3)}, ValueError, "outside [0, 3)"),
     ({"preds": torch.full((1, 4, 5), -1)}, ValueError, "outside [0, 3)"),
     ({"preds": torch.zeros(1, 4, 6, dtype=torch.int64)}, ValueError, "does not match"),
     ({"target": torch.zeros(1, 4, 5)}, TypeError, "integer class labels"),
     ({"classes": [3]}, ValueError, "classes must be a non-empty list of indices in [0, 3)"),
     ({"classes": []}, ValueError, "classes must be a non-empty list"),
     ({"classes": [0.5]}, TypeError, "classes must be a sequence of integer class indices")],
)  # fmt: skip
def test_bad_input_is_named(change, error, message):
    args = {"preds": torch.zeros(1, 4, 5, dtype=torch.int64), "target": torch.ones(1, 4, 5)}
    args["target"] = args["target"].long()
    args.update(change)
    opts = {k: v for k, v in args.items() if k not in ("preds", "target")}
    for fn in (ker.hausdorff_distance, ref.hausdorff_distance):
        with pytest.raises(error, match=re.escape(message)):
            fn(args["preds"].to(DEVICE), args["target"].to(DEVICE), 3, **opts)
