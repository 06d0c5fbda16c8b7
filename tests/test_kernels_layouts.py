"""Logits in layouts the kernels cannot walk with one pixel stride (spatial dims transposed,
classes stored between two spatial dims) or only through a slice (of pixels, or of
channels_last classes), and a target broadcast over the batch (image stride 0): the
kernel copies or strides them and still gives the reference's loss and gradient, for
every loss, with a scalar and a per-pixel grad_output. A gradient buffer laid out like
such logits once took no writes: the kernel wrote into a contiguous copy of it, and the
returned gradient was uninitialised memory. A per-unit grad_output (reduction='none')
may come broadcast, transposed or sliced too."""

from __future__ import annotations

import re

import pytest
import torch
from kernel_checks import DEVICE, KERNELS, assert_matches, light_case, to_channels_last

from segtriton.kernels._tiles import flat_layout, pixel_view
from segtriton.registry import make_inputs


def _transposed(x: torch.Tensor) -> torch.Tensor:
    """The last two dims swapped in storage (a dense tensor whose spatial dims do not merge)."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def _classes_inside(x: torch.Tensor) -> torch.Tensor:
    """Stored as ``[B, H, C, ...]``: the class stride lies between two spatial strides."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def _classes_sliced(x: torch.Tensor) -> torch.Tensor:
    """channels_last logits of twice the classes, the first half taken: classes are
    contiguous (stride 1) but pixels lie 2C apart, not C (the column tiles read such
    logits as channels_last)."""
    return to_channels_last(torch.cat([x, torch.zeros_like(x)], 1))[:, : x.shape[1]]


LAYOUTS = {
    "transposed": lambda x, t: (_transposed(x), _transposed(t)),
    "classes-inside": lambda x, t: (_classes_inside(x), t),
    "classes-sliced": lambda x, t: (_classes_sliced(x), t),
    "strided": lambda x, t: (x[..., ::2], t[..., ::2]),
    # a last spatial dim sliced to size 1: the other spatial dims still merge, read in place
    "one-column": lambda x, t: (x[..., 2:3], t[..., 2:3]),
    # one target broadcast over the batch (image stride 0), as for a fixed mask
    "broadcast-target": lambda x, t: (x, t[:1].expand_as(t)),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_layouts(entry, layout, seed, gen):
    options = {**entry.variants[0], **entry.light}
    for spatial in ((5, 6), (3, 4, 6)):
        shape = entry.fit_shape((2, 3, *spatial), options)
        x, t = make_inputs(entry, shape, options, torch.float32, gen, device=DEVICE)
        x, t = LAYOUTS[layout](x, t)
        for reduction in ("mean", "none"):
            if reduction in entry.reductions:
                assert_matches(
                    entry, x, t, {**options, "reduction": reduction}, torch.float32, seed
                )


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_degenerate_images(entry, seed, gen):
    """Images of one pixel (2-D and 3-D), one row, and 1-D signals ``[B, C, L]``: every
    size-1 dim takes any stride, the pixel tiles are mostly tail, and the erosion and
    distance losses find no neighbour along such dims. The kernel gives the reference's
    loss and gradient there, or both refuse the shape alike."""
    options = {**entry.variants[0], **entry.light}
    for spatial in ((1, 1), (1, 1, 1), (1, 7), (1,), (5,)):
        shape = entry.fit_shape((2, 3, *spatial), options)
        x, t = make_inputs(entry, shape, options, torch.float32, gen, device=DEVICE)
        try:
            entry.reference(x.double(), t, **options)
        except ValueError as refused:
            with pytest.raises(ValueError, match=re.escape(str(refused)[:40])):
                entry.kernel(x, t, **options)
            continue
        assert_matches(entry, x, t, options, torch.float32, seed)


def test_pixel_view_copies_only_what_one_stride_cannot_walk():
    """``pixel_view`` walks contiguous, channels_last and sliced logits in place, and size-1
    spatial dims whatever their stride (one row of a strided slice, one column, one slice
    of a volume); it copies only when
    the spatial dims do not merge (stored transposed)."""
    x, v = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 5, 6, 4)
    in_place = {
        "contiguous": (x, (90, 30, 1)),
        "channels_last": (x.contiguous(memory_format=torch.channels_last), (90, 1, 3)),
        "strided": (x[..., ::2], (90, 30, 2)),
        "one-row": (x[:, :, ::2][:, :, :1], (90, 30, 1)),  # the row's stride is 12
        "one-column": (x[..., 2:3], (90, 30, 6)),  # the column's stride is 1
        "one-slice-of-a-volume": (v[..., 1:2], (360, 120, 4)),  # the slice's stride is 1
    }
    for name, (view, strides) in in_place.items():
        walked, *got = pixel_view(view)
        assert walked is view and tuple(got) == strides, name
    stored_transposed = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    walked, *got = pixel_view(stored_transposed)
    assert walked.is_contiguous() and torch.equal(walked, x) and tuple(got) == (90, 30, 1)


def _grad_output_layouts(shape: tuple[int, ...], gen) -> dict[str, torch.Tensor]:
    """A per-unit grad_output of ``shape`` in the layouts autograd can hand a backward:
    broadcast (``loss.sum()`` or ``.mean()`` after reduction='none': stride 0), stored
    transposed, and a strided slice."""
    g = torch.rand(*shape[:-1], 2 * shape[-1], generator=gen, dtype=torch.float64) + 0.5
    g = g.to(DEVICE)
    layouts = {"broadcast": g[..., :1].flatten()[:1].expand(shape), "strided": g[..., ::2]}
    if len(shape) >= 2:
        layouts["transposed"] = g[..., ::2].transpose(-1, -2).contiguous().transpose(-1, -2)
    return layouts


@pytest.mark.parametrize(
    "entry", [e for e in KERNELS if "none" in e.reductions], ids=lambda e: e.name
)
def test_grad_output_layouts(entry, gen):
    """With reduction='none', a non-contiguous grad_output gives bitwise the gradient of
    its contiguous copy."""
    options, x, t = light_case(entry, (2, 3, 5, 6), gen)
    options["reduction"] = "none"
    x.requires_grad_(True)
    loss = entry.kernel(x, t, **options)
    for name, gout in _grad_output_layouts(tuple(loss.shape), gen).items():
        gout = gout.to(loss.dtype)
        (got,) = torch.autograd.grad(loss, x, gout, retain_graph=True)
        (want,) = torch.autograd.grad(loss, x, gout.contiguous(), retain_graph=True)
        assert torch.equal(got, want), name


def test_flat_layout_needs_dense_storage_with_classes_fastest():
    """An elementwise kernel reads logits and masks as flat ranges only when the logits
    are dense with their classes fastest and the others share their strides."""
    x, v = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 4, 5, 6)
    cl, cl3 = to_channels_last(x), to_channels_last(v)
    spatial_swapped = x.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)
    assert flat_layout(cl, cl.clone(), None) and flat_layout(cl3, torch.empty_like(cl3))
    assert flat_layout(spatial_swapped, spatial_swapped.clone())
    assert not flat_layout(x, x.clone())  # NCHW: pixels fastest
    assert not flat_layout(cl, x)  # masks NCHW beside channels_last logits
    assert not flat_layout(_classes_sliced(x), _classes_sliced(x))  # gaps between pixels
    assert not flat_layout(to_channels_last(x[:, :1]), to_channels_last(x[:, :1]))  # one class


@pytest.mark.parametrize("transposed", [False, True], ids=["straight", "transposed"])
@pytest.mark.parametrize("name", ["cross_entropy", "softmax_focal", "dice", "ce_dice"])
def test_channels_last_column_tiles_in_both_read_orders(name, transposed, monkeypatch, seed, gen):
    """channels_last logits of 3 and 19 classes go through column tiles (a pixel's
    classes in one thread), which read them as ``[pixels, classes]`` and transpose under
    Triton < 3.7, and straight from 3.7 on (``_runtime.COLUMN_READ_TRANSPOSED``): both
    orders give the reference's loss and gradient. Compiled, only the installed Triton's
    order runs: a kernel built with one value of a global refuses the other."""
    import triton.language as tl

    from segtriton.kernels import _runtime, _tiles
    from segtriton.registry import get

    if DEVICE != "cpu" and transposed != _runtime.COLUMN_READ_TRANSPOSED:
        pytest.skip("the other read order is for another Triton")
    monkeypatch.setattr(_tiles, "_READ_TRANSPOSED", tl.constexpr(transposed))
    entry = get(name)
    options = {**entry.variants[0], **entry.light}
    for C in (3, 19):
        x, t = make_inputs(entry, (2, C, 5, 7), options, torch.float32, gen, device=DEVICE)
        assert _tiles.column_tiles(x, False, 1, C) is not None
        assert_matches(entry, to_channels_last(x), t, options, torch.float32, seed)
