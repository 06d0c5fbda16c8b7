"""The chunked reductions with several pixel tiles per program.

The region statistics (region and compound losses, recall CE), the Wasserstein sums, the
confusion matrix (multiclass from labels or logits, multilabel) and the OHEM / top-k
radix select cut each image's pixel tiles into runs, one program per run, so that about
``_tiles.CHUNK_PROGRAMS`` (1024) programs cover the batch (``tile_chunks``). At the
suite's small shapes every run is one tile: a program's second tile, and a last run that
ends past the image, never ran, while on a GPU at a training shape both happen in every
call. Here CHUNK_PROGRAMS is lowered to 4 and the images hold S = 2050 = 2^11 + 2 pixels,
so that every power-of-two tile up to 1024 leaves an odd number of tiles: each launch
takes runs of two or more tiles, the last run ending past the image (checked on every
``tile_chunks`` call a case makes).

Likewise the finalize kernels of the region statistics (one program) and of the
Wasserstein sums (one program per image) take up to ``FINALIZE_BLOCK`` (1024) classes or
images at a time, so their loops over blocks only turn past 1024 classes or images;
lowered to 2, they turn at the tests' shapes.
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, KERNELS, assert_matches

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.kernels import _tiles, metrics, pixelwise, region, wasserstein
from segtriton.registry import fit_variant, make_inputs

SPATIAL = (41, 50)  # S = 2050
CHUNKED = {
    "ohem_cross_entropy", "recall_cross_entropy", "topk_cross_entropy", "dice", "jaccard",
    "tversky", "focal_tversky", "generalized_dice", "mcc", "wasserstein_dice", "ce_dice",
    "topk_dice", "bce_dice", "focal_dice", "generalized_dice_focal", "combo",
}  # fmt: skip
PIXELWISE = {"ohem_cross_entropy", "recall_cross_entropy", "topk_cross_entropy"}  # no finalize


@pytest.fixture
def runs(monkeypatch) -> list[tuple[int, int, int]]:
    """Lowers CHUNK_PROGRAMS to 4; collects ``(tiles, tiles_per_run, runs)`` of every
    ``tile_chunks`` call the kernels make."""
    monkeypatch.setattr(_tiles, "CHUNK_PROGRAMS", 4)
    calls = []

    def recorded(S: int, block_p: int, B: int) -> tuple[int, int]:
        per_run, n_runs = _tiles.tile_chunks(S, block_p, B)
        calls.append((_tiles.cdiv(S, block_p), per_run, n_runs))
        return per_run, n_runs

    for module in (metrics, pixelwise, region, wasserstein):
        monkeypatch.setattr(module, "tile_chunks", recorded)
    return calls


def assert_runs_split(calls: list[tuple[int, int, int]]) -> None:
    assert calls, "no chunked launch ran"
    for tiles, per_run, n_runs in calls:
        assert per_run >= 2 and n_runs >= 2 and per_run * n_runs > tiles, calls


def _loss_cases():
    """Every variant of the chunked losses: 1 class in binary mode, the length of a class
    matrix, else 3 and 19 in turn; dtype and reduction in turn."""
    rows = []
    for entry in (e for e in KERNELS if e.name in CHUNKED):
        for v, variant in enumerate(entry.variants):
            k = len(rows)
            C = entry.fit_classes((3, 19)[k % 2], variant)
            options = fit_variant(variant, C)
            if options is None:  # a [C, C] matrix fixes C
                C = len(variant["dist_matrix"])
                options = variant
            dtype = DTYPES[k % len(DTYPES)]
            reduction = entry.reductions[k % len(entry.reductions)]
            if options.get("gamma_after_mean"):
                reduction = "mean"
            rows.append(
                pytest.param(entry, options, C, dtype, reduction, id=f"{entry.name}-{v}-C{C}")
            )
    return rows


def test_chunked_names_are_registry_kernels():
    assert {e.name for e in KERNELS} >= CHUNKED


@pytest.mark.parametrize(
    "entry", [e for e in KERNELS if e.name not in CHUNKED], ids=lambda e: e.name
)
def test_every_chunking_loss_is_listed(entry, runs, gen):
    """A loss outside CHUNKED makes no ``tile_chunks`` call (else it belongs there)."""
    opts = {**entry.variants[0], **entry.light}
    shape = entry.fit_shape((2, 3, 5, 7), opts)
    x, t = make_inputs(entry, shape, opts, generator=gen, device=DEVICE)
    entry.kernel(x.requires_grad_(), t, **opts).sum().backward()
    assert runs == []


@pytest.mark.parametrize(("entry", "options", "C", "dtype", "reduction"), _loss_cases())
def test_loss_over_runs_of_tiles(entry, options, C, dtype, reduction, runs, seed, gen):
    opts = {**options, "reduction": reduction}
    ignore_frac = 0.0
    if entry.takes("ignore_index"):
        opts["ignore_index"], ignore_frac = 255, 0.2
    x, t = make_inputs(
        entry, (2, C, *SPATIAL), opts, dtype, gen, ignore_frac=ignore_frac, device=DEVICE
    )
    assert_matches(entry, x, t, opts, dtype, seed)
    assert_runs_split(runs)


def _finalize_cases():
    """Every variant of the losses with a finalize kernel (region statistics and the
    Wasserstein sums): 1 class in binary mode, the length of a class matrix, else 3 and 5
    in turn."""
    rows = []
    for entry in (e for e in KERNELS if e.name in CHUNKED - PIXELWISE):
        for v, variant in enumerate(entry.variants):
            C = entry.fit_classes((3, 5)[len(rows) % 2], variant)
            options = fit_variant(variant, C)
            if options is None:
                C, options = len(variant["dist_matrix"]), variant
            rows.append(pytest.param(entry, options, C, id=f"{entry.name}-{v}-C{C}"))
    return rows


@pytest.mark.parametrize(("entry", "options", "C"), _finalize_cases())
def test_finalize_over_blocks_of_classes_and_images(entry, options, C, monkeypatch, seed, gen):
    """Three images and three or five classes take two or three blocks of 2 each, the
    last one partial."""
    monkeypatch.setattr(_tiles, "FINALIZE_BLOCK", 2)
    widths = []

    def recorded(n: int) -> int:
        widths.append(n)
        return _tiles.finalize_block(n)

    for module in (region, wasserstein):
        monkeypatch.setattr(module, "finalize_block", recorded)
    opts = entry.ignoring(options)
    x, t = make_inputs(entry, (3, C, 5, 7), opts, torch.float32, gen, 0.2, device=DEVICE)
    assert_matches(entry, x, t, opts, torch.float32, seed)
    assert max(widths, default=0) > 2, widths


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(
    ("C", "from_logits"), [(3, False), (150, False), (3, True), (19, True), (150, True)]
)
def test_confusion_matrix_over_runs_of_tiles(C, from_logits, per_image, runs, gen):
    """Labels and small-C logits take the private histograms; C = 150 the atomic adds and
    the diagonal histogram."""
    logits = 2 * torch.randn(2, C, *SPATIAL, generator=gen)
    target = torch.randint(0, C, (2, *SPATIAL), generator=gen)
    target = target.masked_fill(torch.rand(target.shape, generator=gen) < 0.2, 255)
    preds = logits if from_logits else logits.argmax(1).to(torch.int32)
    preds, target = preds.to(DEVICE), target.to(DEVICE)
    got = ker.confusion_matrix(preds, target, C, ignore_index=255, per_image=per_image)
    want = ref.confusion_matrix(preds, target, C, ignore_index=255, per_image=per_image)
    assert torch.equal(got, want)
    assert_runs_split(runs)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("preds_dtype", [torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("C", [3, 19])
def test_multilabel_counts_over_runs_of_tiles(C, preds_dtype, per_image, runs, gen):
    logits = 2 * torch.randn(2, C, *SPATIAL, generator=gen)
    target = (torch.rand(logits.shape, generator=gen) < 0.4).to(torch.uint8)
    target = target.masked_fill(torch.rand(logits.shape, generator=gen) < 0.2, 255)
    preds = (
        logits.to(preds_dtype) if preds_dtype.is_floating_point else (logits > 0).to(preds_dtype)
    )
    preds, target = preds.to(DEVICE), target.to(DEVICE)
    args = (preds, target, C, 255, per_image)
    got = ker.confusion_matrix(*args, mode="multilabel")
    assert torch.equal(got, ref.confusion_matrix(*args, mode="multilabel"))
    assert_runs_split(runs)
