"""Every metric under inputs and options drawn at random each run (beside the fixed cases
of test_kernels_metrics.py and test_kernels_surface_metrics.py): mode, class count (up to
1000 for the confusion matrix, either side of its histogram limits), 2-D or 3-D shape,
predictions as logits of each float dtype (rounded, so that classes tie at the argmax) or
as labels or masks of an integer dtype or bool, the target's dtype, ignore_index (255,
-1, -100, class 0 or none) and the ignored fraction, an occasional label out of range or
mask entry of 2, probabilities where logits are read, the layout of
either side (channels_last, spatial dims transposed, a slice, a target broadcast over the
batch), per-image matrices and averages, selected classes, the streaming accumulator over a
random split of the batch, and for the surface metrics the percentile, direction, spacing
and tolerance. The kernel must give the reference's matrix bitwise and its metrics to a
few float64 ulps (surface distances: to float32 rounding), or reject what it rejects."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
import torch
from kernel_checks import (
    DEVICE,
    DISTANCE_TOL,
    LABELS_WITH_255,
    METRIC_ULPS,
    smooth_labels,
    to_channels_last,
)

from segtriton import kernels as ker
from segtriton import reference as ref

DRAWS = int(os.environ.get("SEGTRITON_TEST_DRAWS", "4"))
SURFACE = ("hausdorff_distance", "average_surface_distance", "surface_dice", "surface_metrics")
METRICS = ("confusion_matrix", "segmentation_metrics", "streaming", *SURFACE)
# either side of the confusion matrix's private histograms (C <= 31), its atomics with the
# diagonal counted apart (32 to 63 and beyond), and the streamed argmax (past 256 classes)
MATRIX_CLASSES = [1, 2, 3, 19, 31, 32, 64, 150, 300, 1000]


Place = Callable[[torch.Tensor], torch.Tensor]


def _layout(r: random.Random, dim: int, classes_dim: bool) -> tuple[Place, str]:
    """A drawn layout for a tensor of ``dim`` dims (the same values, stored otherwise), as a
    function applied where the tensor is used, so that it holds on the GPU too (``.to``
    would copy a slice or a broadcast contiguous): ``[B, C, *S]`` maps may be
    channels_last; any map may have its last two dims transposed in storage or be a slice
    of a tensor twice as wide."""
    kind = r.choice(["contiguous", "contiguous", "channels_last", "transposed", "sliced"])
    if kind == "channels_last" and classes_dim and dim in (4, 5):
        return to_channels_last, kind
    if kind == "transposed" and dim >= 3:
        return lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2), kind
    if kind == "sliced":
        return lambda x: torch.cat([x, torch.zeros_like(x)], -1)[..., : x.shape[-1]], kind
    return lambda x: x, "contiguous"


def _label_dtype(r: random.Random, C: int) -> torch.dtype:
    """An integer dtype that holds 255 and every class."""
    return r.choice([d for d in LABELS_WITH_255 if torch.iinfo(d).max >= C - 1])


def _logits(r: random.Random, gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Logits in a drawn float dtype: plain, or rounded to a few values (ties at the max)."""
    x = torch.randn(shape, generator=gen)
    if r.random() < 0.4:
        x = (x * r.choice([1.0, 2.0])).round()
    return x.to(r.choice([torch.float32, torch.float16, torch.bfloat16]))


def _spatial(r: random.Random, surface: bool) -> tuple[int, ...]:
    if surface:
        return r.choice([(11, 13), (1, 17), (9, 16), (4, 5, 6), (1, 7, 9)])
    return r.choice([(5, 7), (1, 13), (3, 4, 5), (9, 11), (16, 16)])


def _holds(dtype: torch.dtype, value: int) -> bool:
    info = torch.iinfo(dtype)
    return info.min <= value <= info.max


def _multiclass(r: random.Random, gen: torch.Generator, C: int, shape: tuple[int, ...]):
    """``(preds, target, (place_preds, place_target), ignore_index, note)``: logits or
    labels against labels, and the drawn layout (or broadcast) of each side. An
    ignore_index a label dtype cannot hold (-100 in uint8) marks no pixel, and must not
    match a label it wraps onto (156)."""
    B, spatial = shape[0], shape[1:]
    smooth = len(spatial) in (2, 3) and min(spatial) >= 5 and r.random() < 0.5
    target = smooth_labels(gen, C, shape) if smooth else torch.randint(0, C, shape, generator=gen)
    ignore_index = r.choice([None, 255, 255, 0, -1, -100])
    label_dtype = _label_dtype(r, C + 1)
    frac = 0.0
    if ignore_index not in (None, 0) and _holds(label_dtype, ignore_index):
        frac = r.choice([0.0, 0.3, 0.9, 1.0])
        target = target.masked_fill(torch.rand(shape, generator=gen) < frac, ignore_index)
    bad = [v for v in (C, 156, 255) if v >= C and v != ignore_index and _holds(label_dtype, v)]
    if bad and r.random() < 0.15:  # a label out of range: both must reject it
        target.view(-1)[r.randrange(target.numel())] = r.choice(bad)
    target = target.to(label_dtype)
    logits = _logits(r, gen, (B, C, *spatial))
    if r.random() < 0.3:
        preds = logits.float().argmax(1).to(_label_dtype(r, C))
        place_p, layout = _layout(r, preds.dim(), classes_dim=False)
    else:
        preds = logits
        place_p, layout = _layout(r, preds.dim(), classes_dim=True)
    if r.random() < 0.2 and B > 1:
        place_t, t_layout = (lambda t: t[:1].expand_as(t)), "broadcast"
    else:
        place_t, t_layout = _layout(r, target.dim(), classes_dim=False)
    note = f"preds {preds.dtype} {layout}, target {target.dtype} {t_layout}, ignored {frac}"
    return preds, target, (place_p, place_t), ignore_index, note


def _multilabel(r: random.Random, gen: torch.Generator, C: int, shape: tuple[int, ...]):
    """``(preds, target, (place_preds, place_target), ignore_index, note)``: masks (bool,
    0/1 integers) or logits against 0/1 masks of an integer, float or bool dtype,
    ignore_index where ignored, and the drawn layout of each side; now and then a target
    entry of 2, or probabilities where logits are read."""
    B, spatial = shape[0], shape[1:]
    full = (B, C, *spatial)
    target = (torch.rand(full, generator=gen) < r.choice([0.1, 0.5, 0.9])).long()
    t_dtype = r.choice([torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32])
    ignore_index = None if t_dtype == torch.bool else r.choice([None, 255, -1])
    frac = 0.0
    if ignore_index is not None and (t_dtype.is_floating_point or _holds(t_dtype, ignore_index)):
        frac = r.choice([0.0, 0.3, 1.0])
        target = target.masked_fill(torch.rand(full, generator=gen) < frac, ignore_index)
    if t_dtype != torch.bool and r.random() < 0.1:  # not a mask value: both reject it
        target.view(-1)[r.randrange(target.numel())] = 2
    target = target.to(t_dtype)
    logits = _logits(r, gen, full)
    kind = r.choice(["logits", "logits", "probabilities", "bool", "int"])
    if kind == "logits":
        preds = logits
    elif kind == "probabilities":  # read as logits, every entry would be in: rejected
        preds = torch.sigmoid(logits.float()).to(logits.dtype)
    else:
        preds = (logits > 0).to(torch.bool if kind == "bool" else r.choice(LABELS_WITH_255))
    place_p, layout = _layout(r, preds.dim(), classes_dim=True)
    place_t, t_layout = _layout(r, target.dim(), classes_dim=True)
    note = f"preds {preds.dtype} {layout}, target {target.dtype} {t_layout}, ignored {frac}"
    return preds, target, (place_p, place_t), ignore_index, note


def _classes(r: random.Random, C: int) -> list[int] | None:
    """None (every class), a few classes in any order, or with a repeat."""
    return r.choice([None, None, r.sample(range(C), min(C, 3)), [C - 1, 0, C - 1]])


def _surface_options(r: random.Random, name: str, C: int, nd: int) -> dict:
    opts: dict = {}
    if r.random() < 0.5:
        opts["spacing"] = [round(r.uniform(0.5, 2.0), 2) for _ in range(nd)]
    # tolerances (k + 0.5) / 100 never equal a distance at spacings of two decimals
    # (squared, one is an odd number of 1/40000ths, the other an even one)
    tolerance = r.choice([0, round(r.uniform(0.0, 3.0), 2) + 0.005,
                          [round(r.uniform(0.0, 3.0), 2) + 0.005 for _ in range(C)]])  # fmt: skip
    if name == "hausdorff_distance":
        opts["percentile"] = r.choice([None, 95, 0, 100, round(r.uniform(0, 100), 1)])
    if name in ("hausdorff_distance", "average_surface_distance"):
        opts["directed"] = r.random() < 0.5
    if name == "surface_dice" or (name == "surface_metrics" and r.random() < 0.7):
        opts["tolerance"] = tolerance
    return opts


def _draw(name: str, r: random.Random, gen: torch.Generator):
    """``(preds, target, (place_preds, place_target), C, options, note)`` of one case of
    metric ``name``."""
    surface = name in SURFACE
    mode = r.choice(["multiclass", "multiclass", "multilabel"])
    C = r.choice([1, 2, 3, 5]) if surface else r.choice(MATRIX_CLASSES)
    if mode == "multilabel":
        C = min(C, 19)
    spatial = _spatial(r, surface)
    shape = (r.choice([1, 2, 3]), *spatial)
    make = _multiclass if mode == "multiclass" else _multilabel
    preds, target, place, ignore_index, note = make(r, gen, C, shape)
    opts: dict = {"mode": mode, "ignore_index": ignore_index}
    if name == "confusion_matrix":
        opts["per_image"] = r.random() < 0.5
    elif name in ("segmentation_metrics", "streaming"):
        opts["average"] = r.choice(["dataset", "image"])
        opts["classes"] = _classes(r, C)
    else:
        opts["classes"] = _classes(r, C)
        opts.update(_surface_options(r, name, C, len(spatial)))
    return preds, target, place, C, opts, f"C={C} {tuple(preds.shape)}: {note}"


def _streamed(preds, target, C, opts, r: random.Random) -> dict[str, torch.Tensor]:
    """``StreamingMetrics`` fed the batch in random pieces, a ``compute`` on the way."""
    acc = ker.StreamingMetrics(C, device=DEVICE, **opts)
    B = target.shape[0]
    cuts = sorted(r.sample(range(1, B), r.randint(0, B - 1))) if B > 1 else []
    for k, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, B], strict=True)):
        acc.update(preds[lo:hi], target[lo:hi])
        if k == 0 and r.random() < 0.5:
            acc.compute()
    return acc.compute()


def _kernel(name: str, preds, target, C: int, opts: dict, r: random.Random):
    if name == "streaming":
        return _streamed(preds, target, C, opts, r)
    return getattr(ker, name)(preds, target, C, **opts)


def _reference(name: str, preds, target, C: int, opts: dict):
    if name == "streaming":
        want = ref.segmentation_metrics(preds, target, C, **opts)
        want["confusion_matrix"] = ref.confusion_matrix(
            preds, target, C, opts["ignore_index"], mode=opts["mode"]
        )
        return want
    return getattr(ref, name)(preds, target, C, **opts)


def _assert_same(name: str, got, want) -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            _assert_same(name, got[key], want[key])
    elif not want.is_floating_point():  # counts: bitwise
        assert got.dtype == want.dtype and torch.equal(got.cpu(), want)
    elif name in SURFACE:  # float32 distances from the GPU transform
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got.cpu().double(), want, **DISTANCE_TOL, equal_nan=True)
    else:
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got.cpu(), want, **METRIC_ULPS, equal_nan=True)


@pytest.mark.parametrize("name", METRICS)
def test_random_inputs_match_reference(name, seed):
    """DRAWS cases the reference accepts are compared; every drawn case it rejects (a label
    out of range, a class count a label dtype cannot hold) the kernel must reject too."""
    r = random.Random(seed)
    compared = 0
    for draw in range(10 * DRAWS):
        gen = torch.Generator().manual_seed(seed + draw)
        preds, target, (place_p, place_t), C, opts, note = _draw(name, r, gen)
        # laid out where each side reads them: a slice or broadcast moved by .to is dense
        kernel_in = (place_p(preds.to(DEVICE)), place_t(target.to(DEVICE)), C, opts, r)
        try:
            want = _reference(name, place_p(preds), place_t(target), C, opts)
        except (TypeError, ValueError) as refused:
            with pytest.raises(type(refused)):
                _kernel(name, *kernel_in)
            continue
        got = _kernel(name, *kernel_in)
        try:
            _assert_same(name, got, want)
        except AssertionError as exc:
            raise AssertionError(f"draw {draw}: {note} {opts}") from exc
        compared += 1
        if compared == DRAWS:
            return
    pytest.fail(f"only {compared} of {10 * DRAWS} drawn cases were valid for {name}")
