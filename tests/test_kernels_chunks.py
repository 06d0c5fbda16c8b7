"""The chunked reductions with several pixel tiles per program.

The region statistics (region and compound losses, recall CE), the Wasserstein sums, the
confusion matrix and the OHEM / top-k radix select cut each image's pixel tiles into
runs, one program per run, so that about ``_tiles.CHUNK_PROGRAMS`` (1024) programs cover
the batch (``tile_chunks``; four times as many one-warp programs in a region pass 1 that
walks class rows). At the
suite's small shapes every run is one tile: a program's second tile, and a last run that
ends past the image, never ran, while on a GPU at a training shape both happen in every
call. Here CHUNK_PROGRAMS is lowered to 4 and the images hold S = 2050 = 2^11 + 2 pixels,
so that every power-of-two tile up to 1024 leaves an odd number of tiles: each launch
takes runs of two or more tiles, the last run ending past the image (checked on every
``tile_chunks`` call a case makes; ``kernel_checks.chunked_runs``, which the confusion
matrix tests use too).

Likewise the finalize kernels of the region statistics (one program) and of the
Wasserstein sums (one program per image) take up to ``FINALIZE_BLOCK`` (1024) classes or
images at a time, so their loops over blocks only turn past 1024 classes or images;
lowered to 2, they turn at the tests' shapes.
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import (
    DEVICE,
    DTYPES,
    KERNELS,
    assert_matches,
    assert_runs_split,
    chunked_runs,
    record_calls,
)

from segtriton.kernels import _tiles, region, wasserstein
from segtriton.registry import fit_variant, make_inputs

SPATIAL = (41, 50)  # S = 2050
CHUNKED = {
    "ohem_cross_entropy", "recall_cross_entropy", "topk_cross_entropy", "dice", "jaccard",
    "tversky", "focal_tversky", "generalized_dice", "mcc", "wasserstein_dice", "ce_dice",
    "topk_dice", "bce_dice", "focal_dice", "generalized_dice_focal", "combo",
}  # fmt: skip
PIXELWISE = {"ohem_cross_entropy", "recall_cross_entropy", "topk_cross_entropy"}  # no finalize


@pytest.fixture
def runs(monkeypatch) -> list:
    return chunked_runs(monkeypatch)


def _variant_cases(names: set[str], classes: tuple[int, int]) -> list:
    """``(entry, options, C, k)`` params over every variant of the ``names`` kernels: 1
    class in binary mode, the length of a class matrix, else ``classes`` in turn; ``k``
    counts the cases (dtype and reduction take turns along it)."""
    rows = []
    for entry in (e for e in KERNELS if e.name in names):
        for v, variant in enumerate(entry.variants):
            k = len(rows)
            C = entry.fit_classes(classes[k % 2], variant)
            options = fit_variant(variant, C)
            if options is None:  # a [C, C] matrix fixes C
                C, options = len(variant["dist_matrix"]), variant
            rows.append(pytest.param(entry, options, C, k, id=f"{entry.name}-{v}-C{C}"))
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


@pytest.mark.parametrize(("entry", "options", "C", "k"), _variant_cases(CHUNKED, (3, 19)))
def test_loss_over_runs_of_tiles(entry, options, C, k, runs, seed, gen):
    dtype = DTYPES[k % len(DTYPES)]
    reduction = entry.reductions[k % len(entry.reductions)]
    if options.get("gamma_after_mean"):
        reduction = "mean"
    opts = {**options, "reduction": reduction}
    ignore_frac = 0.0
    if entry.takes("ignore_index"):
        opts["ignore_index"], ignore_frac = 255, 0.2
    x, t = make_inputs(
        entry, (2, C, *SPATIAL), opts, dtype, gen, ignore_frac=ignore_frac, device=DEVICE
    )
    assert_matches(entry, x, t, opts, dtype, seed)
    assert_runs_split(runs)


@pytest.mark.parametrize(
    ("entry", "options", "C", "k"), _variant_cases(CHUNKED - PIXELWISE, (3, 5))
)
def test_finalize_over_blocks_of_classes_and_images(entry, options, C, k, monkeypatch, seed, gen):
    """Three images and three or five classes take two or three blocks of 2 each, the
    last one partial."""
    monkeypatch.setattr(_tiles, "FINALIZE_BLOCK", 2)
    widths = record_calls(monkeypatch, "finalize_block", (region, wasserstein))
    opts = entry.ignoring(options)
    x, t = make_inputs(entry, (3, C, 5, 7), opts, torch.float32, gen, 0.2, device=DEVICE)
    assert_matches(entry, x, t, opts, torch.float32, seed)
    assert max((n for (n,), _ in widths), default=0) > 2, widths
