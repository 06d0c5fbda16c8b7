"""The GPU exact Euclidean distance transform, signed distance maps, boundary and Hausdorff
losses against scipy and the reference, in the interpreter on CPU and compiled on a GPU."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from kernel_checks import (
    CASE_ARGS,
    DEVICE,
    DISTANCE_TOL,
    assert_matches,
    force_walk_label_bug,
    kernel_cases,
    record_calls,
    to_channels_last,
)
from scipy.ndimage import distance_transform_edt

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.registry import get, make_inputs

# The axis passes stop searching once the nearest unread candidate is too far; the fine
# spacing (< 1) of a searched axis checks that the spacing is in that bound.
SHAPES = [
    ((3, 37, 53), None),
    ((2, 9, 11, 13), (2.0, 1.0, 0.5)),
    ((2, 70, 41), (1.5, 1.0)),
    ((2, 40, 23), (0.3, 1.7)),
    ((2, 3, 5000), (1.0, 0.7)),  # rows past 4096 pixels: one line per program
]


@pytest.mark.parametrize(
    ("shape", "spacing"),
    SHAPES,
    ids=["2d", "3d-spacing", "2d-spacing", "2d-fine-rows", "2d-long-rows"],
)
@pytest.mark.parametrize("density", [0.002, 0.05, 0.6])
def test_squared_edt_equals_scipy(shape, spacing, density, gen):
    sites = torch.rand(shape, generator=gen) < density
    sites[0].view(-1)[0] = True  # every map but possibly the others has a site
    got = ker.squared_edt(sites.to(DEVICE), spacing).sqrt().cpu().double()
    for m, d in zip(sites.numpy(), got, strict=True):
        if not m.any():
            assert torch.isinf(d).all()
            continue
        want = torch.from_numpy(distance_transform_edt(~m, sampling=spacing))
        torch.testing.assert_close(d, want, **DISTANCE_TOL)


def test_squared_edt_is_exact_in_integers(gen):
    sites = torch.rand(4, 64, 64, generator=gen) < 0.01
    sites[:, 0, 0] = True
    got = ker.squared_edt(sites.to(DEVICE)).cpu().double()
    for m, d in zip(sites.numpy(), got, strict=True):
        want = torch.from_numpy(distance_transform_edt(~m) ** 2).round()
        assert torch.equal(d, want)


def test_interpreter_scan_shortcut_changes_nothing(gen, monkeypatch):
    """tests/conftest.py runs the distance transform's max / min scans as numpy
    ``accumulate`` in Triton's interpreter; the interpreter's own scan gives the same maps."""
    import conftest

    if not conftest.VECTORIZED_SCANS:
        pytest.skip("the kernels are compiled here: no interpreter scan to shortcut")
    from triton.runtime.interpreter import ScanOps

    t = torch.randint(0, 3, (2, 6, 7, 9), generator=gen)
    t = t.masked_fill(torch.rand(t.shape, generator=gen) < 0.1, 255)
    before = ScanOps.generic_scan.shortcuts
    fast = ker.signed_distance_map(t, 3, ignore_index=255)
    assert ScanOps.generic_scan.shortcuts > before
    monkeypatch.setattr(ScanOps, "generic_scan", ScanOps.generic_scan.slow)
    assert torch.equal(ker.signed_distance_map(t, 3, ignore_index=255), fast)


@pytest.mark.parametrize(("C", "spatial"), list(itertools.product([2, 5], [(23, 31), (6, 7, 8)])))
def test_signed_map_matches_reference(C, spatial, gen):
    t = torch.randint(0, C, (2, *spatial), generator=gen)
    t = t.masked_fill(torch.rand(t.shape, generator=gen) < 0.1, 255)
    t[1] = 0  # an image where class 0 fills everything but ignored pixels
    for ignore in (255, 0):
        got = ker.signed_distance_map(t.to(DEVICE), C, ignore_index=ignore)
        want = ref.signed_distance_map(t, C, ignore_index=ignore)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.cpu().double(), want, **DISTANCE_TOL)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16])
def test_signed_map_sparse_classes_and_empty_slabs(label_dtype, gen):
    """Most classes absent, objects in a few slices of a volume: the slabs the axis
    passes skip (no site) must still come out right, as must the lines they do search."""
    t = torch.zeros(2, 5, 9, 12, dtype=label_dtype)
    t[0, 1:3, 2:5, 3:9] = 7
    t[0, 4, 8, 11] = 18
    t[1, :, :, 6:] = 3
    t[1, 2] = torch.randint(0, 19, (9, 12), generator=gen).to(label_dtype)
    got = ker.signed_distance_map(t.to(DEVICE), 19, spacing=(3.0, 1.0, 0.5))
    want = ref.signed_distance_map(t, 19, spacing=(3.0, 1.0, 0.5))
    torch.testing.assert_close(got.cpu().double(), want, **DISTANCE_TOL)


def test_signed_map_of_channels_last_masks(gen):
    m = (torch.rand(2, 3, 11, 14, generator=gen) < 0.2).half()
    m[1, 2] = 1.0  # a full mask: 0 everywhere
    got = ker.signed_distance_map(to_channels_last(m.to(DEVICE)), mode="multilabel")
    want = ref.signed_distance_map(m, mode="multilabel")
    torch.testing.assert_close(got.cpu().double(), want, **DISTANCE_TOL)


def test_signed_map_worked_examples_guards_and_spacing():
    row = torch.tensor([[[0, 0, 1, 1, 1, 0]]], device=DEVICE)
    expected = torch.tensor([2.0, 1, 0, -1, 0, 1])
    torch.testing.assert_close(
        ker.signed_distance_map(row, mode="binary").flatten().cpu(), expected
    )
    spaced = ker.signed_distance_map(row.unsqueeze(2), mode="binary", spacing=(2.0, 1.0))
    torch.testing.assert_close(spaced.flatten().cpu(), expected)
    sq = torch.zeros(1, 5, 5, dtype=torch.long, device=DEVICE)
    sq[0, 1:4, 1:4] = 1
    r2 = math.sqrt(2)
    want = [[r2, 1, 1, 1, r2], [1, 0, 0, 0, 1], [1, 0, -1, 0, 1], [1, 0, 0, 0, 1]]
    want = torch.tensor([*want, [r2, 1, 1, 1, r2]])
    torch.testing.assert_close(ker.signed_distance_map(sq, 2)[0, 1].cpu(), want)
    for fill in (0.0, 1.0):
        flat = torch.full((1, 1, 3, 4), fill, device=DEVICE)
        assert ker.signed_distance_map(flat, mode="binary").abs().max() == 0


def test_multilabel_masks_with_spacing_and_ignore(gen):
    t = (torch.rand(2, 3, 9, 12, generator=gen) < 0.3).double()
    t[torch.rand(t.shape, generator=gen) < 0.1] = 255
    got = ker.signed_distance_map(
        t.to(DEVICE), mode="multilabel", spacing=(1.0, 2.5), ignore_index=255, validate=True
    )  # validate: 255 is ignored, not a soft mask value
    want = ref.signed_distance_map(t, mode="multilabel", spacing=(1.0, 2.5), ignore_index=255)
    torch.testing.assert_close(got.cpu().double(), want, **DISTANCE_TOL)
    with pytest.raises(ValueError, match="hard"):
        ker.signed_distance_map(t.to(DEVICE) * 0.5, mode="multilabel", validate=True)


BOUNDARY = get("boundary")
HAUSDORFF = get("hausdorff_dt")


@pytest.mark.parametrize(
    CASE_ARGS,
    kernel_cases([BOUNDARY], ["mean", "sum", "none"], classes=[2, 3, 19])
    # transforms are slow in the interpreter (5-10 s a case at C = 150): C = 150 takes the
    # single-tile path of C = 19 with a wider tile, so one case of it runs; the streamed
    # tests run C = 300
    + kernel_cases([BOUNDARY], ["sum"], classes=[150])[:1]
    + kernel_cases([HAUSDORFF], ["mean", "sum", "none"], classes=[2, 3, 19]),
)
def test_distance_losses_match_reference(
    entry, options, C, dtype, spatial, channels_last, reduction, seed, gen
):
    opts = {**options, "reduction": reduction, "ignore_index": 255}
    x, t = make_inputs(entry, (2, C, *spatial), opts, dtype, gen, ignore_frac=0.2, device=DEVICE)
    if channels_last:
        x = to_channels_last(x)
        if t.dim() == x.dim():
            t = to_channels_last(t)
    assert_matches(entry, x, t, opts, dtype, seed)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_boundary_streams_classes_counts_repeats_and_reads_a_given_map(mode, seed, gen):
    opts = {"mode": mode, "ignore_index": 255, "classes": [0, 5, 5, 299]}
    x, t = make_inputs(BOUNDARY, (2, 300, 3, 5), opts, torch.float32, gen, 0.3, device=DEVICE)
    assert_matches(BOUNDARY, x, t, opts, torch.float32, seed)  # C > 256: streamed chunks
    phi = to_channels_last(torch.randn(x.shape, generator=gen).half().to(DEVICE))
    given = {**opts, "dist_map": phi, "reduction": "sum"}
    assert_matches(BOUNDARY, to_channels_last(x), t, given, torch.float32, seed)


@pytest.mark.parametrize("entry", [BOUNDARY, HAUSDORFF], ids=lambda e: e.name)
def test_a_given_map_is_read_only_in_the_selected_channels(entry, seed, gen):
    """Channels the loss does not select may hold anything (here inf and NaN): the
    reference never reads them, nor may the kernel (a weight of 0 times inf is NaN)."""
    opts = {"ignore_index": 255, "classes": [2, 0, 2], "reduction": "sum"}
    x, t = make_inputs(entry, (2, 4, 6, 7), opts, torch.float32, gen, 0.2, device=DEVICE)
    d = torch.rand(x.shape, generator=gen)
    d[:, 1], d[:, 3] = math.inf, math.nan
    assert_matches(entry, x, t, {**opts, "dist_map": d.to(DEVICE)}, torch.float32, seed)


@pytest.mark.parametrize("entry", [BOUNDARY, HAUSDORFF], ids=lambda e: e.name)
@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_all_ignored_and_ignore_heavy(entry, mode, seed, gen):
    opts = {"mode": mode, "ignore_index": 255}
    x, t = make_inputs(entry, (2, 3, 6, 7), opts, torch.float32, gen, 0.9, device=DEVICE)
    assert_matches(entry, x, t, opts, torch.float32, seed)
    x = x.detach().requires_grad_(True)
    loss = entry.kernel(x, torch.full_like(t, 255), **opts)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isnan(loss) and torch.equal(grad, torch.zeros_like(grad))  # as the reference
    if mode == "multilabel":  # the one selected class all ignored, the others not
        t = t.masked_fill(torch.arange(3, device=DEVICE).view(1, 3, 1, 1) == 1, 255)
        loss = entry.kernel(x, t, **opts, classes=[1])
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isnan(loss) and torch.equal(grad, torch.zeros_like(grad))


def test_boundary_rejects_a_map_that_does_not_fit(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE)
    with pytest.raises(ValueError, match="dist_map shape"):
        ker.boundary_loss(x, y, dist_map=torch.zeros(2, 3, 5, 4, device=DEVICE))
    if DEVICE == "cuda":
        with pytest.raises(ValueError, match="dist_map is on cpu"):
            ker.boundary_loss(x, y, dist_map=torch.zeros(2, 3, 4, 5))


@pytest.mark.parametrize("options", BOUNDARY.variants[:2], ids=["multiclass", "multilabel"])
def test_boundary_mean_without_ignore_index(options, seed, gen):
    """With no ``ignore_index``, 'mean' divides by the number of (selected class, pixel)
    entries, taken from the shapes without a counting pass, for labels and masks alike."""
    opts = {**options, "reduction": "mean"}
    x, t = make_inputs(BOUNDARY, (2, 3, 5, 6), opts, torch.float32, gen, device=DEVICE)
    assert_matches(BOUNDARY, x, t, opts, torch.float32, seed)


def test_a_line_past_the_tile_is_refused():
    """The 1-D pass holds a whole line in one tile: a longer axis is named, not run."""
    with pytest.raises(ValueError, match="axes up to 16384"):
        ker.squared_edt(torch.zeros(1, 2, 16385, dtype=torch.bool, device=DEVICE))


@pytest.mark.parametrize("spacing", [(1.0, 0.0), (1.0, -2.0), (float("nan"), 1.0), (1.0,)])
def test_bad_spacing_is_named(spacing):
    y = torch.randint(0, 3, (1, 5, 6), device=DEVICE)
    for impl in (ker, ref):
        with pytest.raises(ValueError, match="spacing"):
            impl.signed_distance_map(y, 3, spacing=spacing)
    with pytest.raises(ValueError, match="spacing"):
        ker.squared_edt(y == 1, spacing)


def test_boundary_bad_values_make_nan_without_validate(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE)
    y[1, 2, 3] = 7
    assert torch.isnan(ker.boundary_loss(x, y))
    m = (torch.rand(2, 3, 4, 5, generator=gen) < 0.5).float().to(DEVICE)
    m[0, 1, 0, 0] = 2.0
    assert torch.isnan(ker.boundary_loss(x, m, mode="multilabel", reduction="sum"))


@pytest.mark.parametrize("given_map", [False, True])
def test_boundary_torch_compile_fullgraph(given_map, seed, gen):
    x, t = make_inputs(BOUNDARY, (2, 4, 5, 6), {}, torch.float32, gen, 0.2, device=DEVICE)
    opts = {"ignore_index": 255, "classes": [3, 1, 3], "spacing": (1.0, 2.0)}
    if given_map:
        opts["dist_map"] = ker.signed_distance_map(t, 4, spacing=(1.0, 2.0), ignore_index=255)
    step = torch.compile(lambda x, t: ker.boundary_loss(x, t, **opts), fullgraph=True)
    assert_matches(BOUNDARY, x, t, opts, torch.float32, seed, kernel=lambda x, t, **_: step(x, t))


def test_boundary_loss_bad_labels(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE)
    y[0, 0, 0] = 9
    with pytest.raises(ValueError, match="label 9 outside"):
        ker.boundary_loss(x, y, validate=True)


def test_one_dimensional_maps(gen):
    m = (torch.rand(3, 1, 40, generator=gen) < 0.2).long()
    got = ker.signed_distance_map(m.to(DEVICE), mode="binary").cpu().double()
    torch.testing.assert_close(got, ref.signed_distance_map(m, mode="binary"))
    assert np.isfinite(got.numpy()).all()


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_hausdorff_streams_classes_with_spacing_and_repeats(mode, seed, gen):
    opts = {"mode": mode, "ignore_index": 255, "classes": [0, 5, 5, 299], "alpha": 0.7}
    x, t = make_inputs(HAUSDORFF, (2, 300, 2, 3, 4), opts, torch.float32, gen, 0.3, device=DEVICE)
    x[:, 5] += 4.0  # class 5 is confident somewhere: its predicted mask has a boundary
    x[:, 299, 1, :2] += 12.0  # and class 299, in the last chunk (the argmax adds its start)
    opts["spacing"] = (2.0, 1.0, 0.5)
    assert_matches(HAUSDORFF, x, t, opts, torch.float32, seed)  # C > 256: streamed chunks


def test_hausdorff_a_probability_of_one_half_predicts_no_class(seed, gen):
    """Equal logits of two classes (a zero-initialised head) give each a probability of
    exactly 1/2, which does not exceed 1/2: no class is predicted there, in the kernel as in
    the reference, so only the rows where class 1 leads have a predicted mask. Likewise a
    sigmoid channel at logit 0 (multilabel) is not predicted. Per class ('none'): with two
    classes the summed loss is the same either way (the field of a mask is the field of its
    complement, and the two classes' errors are equal)."""
    x = torch.zeros(2, 2, 7, 9)
    x[:, 1, :3] = 3.0
    t = torch.randint(0, 2, (2, 7, 9), generator=gen)
    opts = {"classes": [0, 1], "reduction": "none"}
    assert_matches(HAUSDORFF, x.to(DEVICE), t.to(DEVICE), opts, torch.float32, seed)
    masks = torch.randint(0, 2, (2, 2, 7, 9), generator=gen).double()
    opts = {"mode": "multilabel", "reduction": "none"}
    assert_matches(HAUSDORFF, x.to(DEVICE), masks.to(DEVICE), opts, torch.float32, seed)


def test_hausdorff_maps_are_scipy_fields(gen):
    """The target's map (``distance_field``) is scipy's ``edt(m) + edt(~m)``, the distance
    to the other side of each class's boundary, 0 for a class with no boundary; the
    prediction's is its square for the class whose softmax probability exceeds 1/2,
    never at an ignored pixel; the maps of chosen classes are theirs in these."""
    from segtriton.kernels.boundary import _pred_field_op

    x = 3 * torch.randn(2, 4, 9, 10, generator=gen)
    x[1, 3] = 50.0  # image 1 predicts class 3 everywhere: no boundary, zero maps
    y = torch.randint(0, 4, (2, 9, 10), generator=gen)
    y[0, :2] = 255
    spacing = (1.0, 1.5)
    true = ker.distance_field(y.to(DEVICE), 4, spacing=spacing, ignore_index=255)
    torch.testing.assert_close(
        true.cpu().double(), ref.distance_field(y, 4, "multiclass", spacing, 255)
    )
    args = (x.to(DEVICE), y.to(DEVICE))
    pred = _pred_field_op(*args, [0, 1, 2, 3], True, list(spacing), 255).sqrt()
    some = _pred_field_op(*args, [1, 3], True, list(spacing), 255).sqrt()
    torch.testing.assert_close(some, pred[:, [1, 3]], rtol=0, atol=0)  # a map per class given
    valid = (y != 255).unsqueeze(1).numpy()
    for got, masks in ((true, y.unsqueeze(1).numpy() == np.arange(4)[:, None, None]),
                       (pred, torch.softmax(x.double(), dim=1).numpy() > 0.5)):  # fmt: skip
        masks = masks & valid
        for b, c in itertools.product(range(2), range(4)):
            m = masks[b, c]
            want = np.zeros(m.shape)
            if m.any() and not m.all():
                want = distance_transform_edt(m, sampling=spacing) + distance_transform_edt(
                    ~m, sampling=spacing
                )
            torch.testing.assert_close(got[b, c].cpu().double(), torch.from_numpy(want))
    assert not pred[1].any()


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_hausdorff_reads_a_given_target_map(mode, seed, gen):
    """``dist_map`` (the target's ``distance_field``, any dtype and layout) gives the loss
    computed without it; the reference takes the same map."""
    opts = {"mode": mode, "ignore_index": 255, "alpha": 1.5, "reduction": "sum"}
    x, t = make_inputs(HAUSDORFF, (2, 3, 6, 7), opts, torch.float32, gen, 0.2, device=DEVICE)
    C = x.shape[1]
    d = ker.distance_field(t, C, mode, ignore_index=255)
    torch.testing.assert_close(d.cpu().double(), ref.distance_field(t.cpu(), C, mode, None, 255))
    assert_matches(HAUSDORFF, x, t, {**opts, "dist_map": d.half()}, torch.float32, seed)
    given = ker.hausdorff_dt_loss(x, t, **opts, dist_map=to_channels_last(d))
    torch.testing.assert_close(given, ker.hausdorff_dt_loss(x, t, **opts), rtol=1e-5, atol=0)


def test_hausdorff_bad_values_nan_or_raise(gen):
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE)
    y[1, 2, 3] = 7
    assert torch.isnan(ker.hausdorff_dt_loss(x, y))
    with pytest.raises(ValueError, match="label 7 outside"):
        ker.hausdorff_dt_loss(x, y, validate=True)
    m = (torch.rand(2, 3, 4, 5, generator=gen) < 0.5).float().to(DEVICE)
    m[0, 1, 0, 0] = 0.5  # soft: the maps need hard masks
    assert torch.isnan(ker.hausdorff_dt_loss(x, m.masked_fill(m == 0.5, 2.0), mode="multilabel"))
    for impl in (ker.hausdorff_dt_loss, ref.hausdorff_dt_loss):
        kwargs = {"validate": True} if impl is ker.hausdorff_dt_loss else {}
        with pytest.raises(ValueError, match="hard"):
            impl(x, m, mode="multilabel", **kwargs)


def test_hausdorff_torch_compile_fullgraph(seed, gen):
    x, t = make_inputs(HAUSDORFF, (2, 4, 5, 6), {}, torch.float32, gen, 0.2, device=DEVICE)
    opts = {"ignore_index": 255, "classes": [3, 1, 3], "spacing": (1.0, 2.0), "alpha": 1.5}
    step = torch.compile(lambda x, t: ker.hausdorff_dt_loss(x, t, **opts), fullgraph=True)
    assert_matches(HAUSDORFF, x, t, opts, torch.float32, seed, kernel=lambda x, t, **_: step(x, t))


def test_hausdorff_worked_example():
    from test_worked_examples import hausdorff_example

    z, g, loss, grad = hausdorff_example()
    x = z.float().to(DEVICE).requires_grad_()
    out = ker.hausdorff_dt_loss(x, g.float().to(DEVICE), mode="binary")
    (got,) = torch.autograd.grad(out, x)
    assert out.item() == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(got.flatten().cpu().double(), grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("C", [3, 300])
def test_hausdorff_on_probabilities_that_do_not_sum_to_one(C, seed, gen):
    """``from_logits=False`` in multiclass mode uses the input as given: where it does not
    sum to 1 over the classes, two classes can exceed 1/2 at a pixel, and each class's
    prediction mask is its own ``p_c > 1/2`` in the kernel as in the reference (not the
    one label a softmax would give). C = 300 streams the classes."""
    entry = get("hausdorff_dt")
    p = torch.sigmoid(2 * torch.randn(2, C, 6, 7, generator=gen)).to(DEVICE)
    t = torch.randint(0, C, (2, 6, 7), generator=gen).to(DEVICE)
    assert ((p > 0.5).sum(1) >= 2).any()
    opts = {"from_logits": False, "ignore_index": 255, "classes": [0, 1, 2]}
    for reduction in ("mean", "none"):
        assert_matches(entry, p, t, {**opts, "reduction": reduction}, torch.float32, seed)


@pytest.mark.parametrize("walk_bug", [False, True])
def test_hd_dt_labels_under_the_triton_3_6_layout_bug(walk_bug, monkeypatch, seed, gen):
    """Under Triton < 3.7 the HD-DT kernel, walking class rows, reads 8- or 16-bit labels
    widened to int32 (that Triton cannot build the walk on them); the boundary loss's
    kernel, and every case under a newer Triton, reads the labels as given. The losses
    are right either way (walks forced here, whatever tests/conftest.py chose)."""
    from segtriton.kernels import _tiles, boundary

    force_walk_label_bug(monkeypatch, walk_bug)
    monkeypatch.setattr(_tiles, "MAX_SINGLE_C", 1)
    monkeypatch.setattr(_tiles, "CHUNK", (1, 512))
    calls = record_calls(monkeypatch, "walk_labels", [boundary])
    x = torch.randn(2, 3, 6, 7, generator=gen).to(DEVICE)
    for dtype in (torch.uint8, torch.int16, torch.int64):
        t = torch.randint(0, 3, (2, 6, 7), generator=gen).to(DEVICE, dtype)
        for name in ("hausdorff_dt", "boundary"):
            calls.clear()
            assert_matches(get(name), x, t, {"reduction": "mean"}, torch.float32, seed)
            want = torch.int32 if walk_bug and dtype.itemsize < 4 else dtype
            asked = [r[0].dtype for _, r in calls]
            assert asked == ([want] if name == "hausdorff_dt" else []), (name, dtype)
