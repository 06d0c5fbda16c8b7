"""The erosion Hausdorff loss's reference (``reference/hausdorff_er.py``): a worked example,
its options and errors, and its gradient against finite differences (kornia's is
``tests/test_peers.py::test_kornia_hausdorff_er``)."""

from __future__ import annotations

import pytest
import torch

from segtriton import reference as ref

D = torch.float64


def _wrong_row(mask: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 x 5 binary image whose prediction is the opposite of ``mask`` (logits of -30
    where the mask is 1): every valid pixel has an error of about 1."""
    t = torch.tensor(mask, dtype=D).view(1, 1, 1, 5)
    return torch.full_like(t, -30.0), t


def test_worked_example_row_of_five():
    """Errors ``b_0 = [1, 1, 1, 1, 1]`` on a 1 x 5 image (a row: the cross has no vertical
    neighbours in it). ``d_1 = [2, 3, 3, 3, 2] / 5``, so ``e_1 = [0, .1, .1, .1, 0]`` and
    ``b_1 = [0, 1, 1, 1, 0]``; ``d_2 = [1, 2, 3, 2, 1] / 5``, ``b_2 = [0, 0, 1, 0, 0]``;
    ``d_3 = [0, 1, 1, 1, 0] / 5`` stays under 1/2, so ``b_3 = 0`` (max = min: no
    scaling). With ``alpha = 2``: ``L = 1 b_1 + 4 b_2 = [0, 1, 5, 1, 0]``."""
    x, t = _wrong_row([1, 1, 1, 1, 1])
    kw = {"mode": "binary", "iterations": 3}
    loss = ref.hausdorff_er_loss(x, t, reduction="none", **kw)
    want = torch.tensor([0.0, 1.0, 5.0, 1.0, 0.0], dtype=D).view(1, 1, 1, 5)
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-9)
    torch.testing.assert_close(ref.hausdorff_er_loss(x, t, **kw), torch.tensor(1.4, dtype=D))
    # alpha weighs the second erosion: the sum is 3 b_1 entries of 1, then 2^alpha
    half = ref.hausdorff_er_loss(x, t, alpha=0.5, reduction="sum", **kw)
    torch.testing.assert_close(half, torch.tensor(3 + 2**0.5, dtype=D))


def test_ignored_pixel_has_no_error_and_is_not_counted():
    """A 3 x 3 image predicted wrong everywhere but at its ignored centre: ``b_0`` is 1
    around a 0, ``d_1`` is 4/5 at the centre and 3/5 elsewhere, so ``b_1`` is 1 at the
    centre only, and that entry is left out: the sum is 0. On the row ``[1, 1, 1, 1,
    ignored]`` the loss is ``b_1 = [0, 1, 1, 0, 0]`` and the mean divides by the 4 valid
    pixels."""
    t = torch.ones(1, 1, 3, 3, dtype=D)
    t[..., 1, 1] = 255
    kw = {"mode": "binary", "ignore_index": 255}
    none = ref.hausdorff_er_loss(torch.full_like(t, -30.0), t, iterations=1, reduction="none", **kw)
    torch.testing.assert_close(none, torch.zeros_like(t), rtol=0, atol=1e-9)
    x, t = _wrong_row([1, 1, 1, 1, 255])
    none = ref.hausdorff_er_loss(x, t, reduction="none", iterations=3, **kw)
    want = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0], dtype=D).view(1, 1, 1, 5)
    torch.testing.assert_close(none, want, rtol=0, atol=1e-9)
    mean = ref.hausdorff_er_loss(x, t, iterations=3, **kw)
    torch.testing.assert_close(mean, torch.tensor(0.5, dtype=D))


def test_include_background_drops_class_zero(gen):
    x = torch.randn(2, 3, 8, 9, generator=gen, dtype=D)
    y = torch.randint(0, 3, (2, 8, 9), generator=gen)
    every = ref.hausdorff_er_loss(x, y, reduction="none")
    kept = ref.hausdorff_er_loss(x, y, include_background=False, reduction="none")
    assert kept.shape == (2, 2, 8, 9)
    torch.testing.assert_close(kept, every[:, 1:])
    single = torch.randn(2, 1, 8, 9, generator=gen, dtype=D)
    mask = (torch.rand(single.shape, generator=gen) < 0.5).to(D)
    assert ref.hausdorff_er_loss(single, mask, mode="binary", include_background=False).isfinite()


@pytest.mark.parametrize(
    ("mode", "spatial"), [("multiclass", (7, 8)), ("multilabel", (7, 8)), ("multiclass", (4, 5, 6))]
)
def test_gradient_against_finite_differences(mode, spatial, gen):
    C = 3
    x = (2 * torch.randn(2, C, *spatial, generator=gen, dtype=D)).requires_grad_(True)
    if mode == "multiclass":
        t = torch.randint(0, C, (2, *spatial), generator=gen)
        t = t.masked_fill(torch.rand(t.shape, generator=gen) < 0.2, 255)
    else:
        t = torch.rand(x.shape, generator=gen, dtype=D)  # soft masks
    kw = {"mode": mode, "iterations": 4, "ignore_index": 255 if mode == "multiclass" else None}
    assert torch.autograd.gradcheck(lambda z: ref.hausdorff_er_loss(z, t, **kw), (x,))


@pytest.mark.parametrize(
    ("options", "shape", "error", "words"),
    [
        ({}, (2, 3, 8), ValueError, "2-D or 3-D"),
        ({"iterations": 0}, (2, 3, 5, 6), ValueError, "iterations must be >= 1"),
        ({"iterations": 2.0}, (2, 3, 5, 6), TypeError, "iterations must be an int"),
        ({"alpha": float("nan")}, (2, 3, 5, 6), ValueError, "alpha"),
        ({"reduction": "max"}, (2, 3, 5, 6), ValueError, "reduction"),
        ({"include_background": "no"}, (2, 3, 5, 6), TypeError, "include_background"),
    ],
)
def test_bad_options_are_named(options, shape, error, words):
    x = torch.zeros(shape, dtype=D)
    y = torch.zeros((shape[0], *shape[2:]), dtype=torch.long)
    with pytest.raises(error, match=words):
        ref.hausdorff_er_loss(x, y, **options)


def test_label_out_of_range_is_named():
    x = torch.zeros(1, 3, 4, 5, dtype=D)
    y = torch.full((1, 4, 5), 3)
    with pytest.raises(ValueError, match="label"):
        ref.hausdorff_er_loss(x, y)
