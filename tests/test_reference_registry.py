"""Properties every reference loss must have, checked over the registry.

Gradients (float64 gradcheck), ignore_index (ignored pixels change nothing and get no
gradient), low-precision inputs (accumulated in float32), 3-D volumes, channels_last,
reductions and the nn.Module wrappers.
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import lovasz_errors, separated

from segtriton import reference as ref
from segtriton.registry import LOSSES, LossEntry, fit_variant, get, make_inputs

C = 3
CASES = [
    pytest.param(entry, options, id=f"{entry.name}-{i}")
    for entry in LOSSES
    for i, options in enumerate(entry.variants)
]
MODULES = {
    "cross_entropy": ref.CrossEntropyLoss,
    "bce": ref.BCEWithLogitsLoss,
    "sigmoid_focal": ref.SigmoidFocalLoss,
    "sigmoid_focal_ovr": ref.SigmoidFocalLoss,
    "cross_entropy_probs": ref.CrossEntropyProbsLoss,
    "softmax_focal": ref.SoftmaxFocalLoss,
    "dice": ref.DiceLoss,
    "jaccard": ref.JaccardLoss,
    "tversky": ref.TverskyLoss,
    "focal_tversky": ref.FocalTverskyLoss,
    "generalized_dice": ref.GeneralizedDiceLoss,
    "mcc": ref.MCCLoss,
    "ce_dice": ref.CEDiceLoss,
    "bce_dice": ref.BCEDiceLoss,
    "focal_dice": ref.FocalDiceLoss,
    "combo": ref.ComboLoss,
    "lovasz_hinge": ref.LovaszHingeLoss,
    "lovasz_softmax": ref.LovaszSoftmaxLoss,
    "generalized_dice_focal": ref.GeneralizedDiceFocalLoss,
    "boundary": ref.BoundaryLoss,
    "hausdorff_dt": ref.HausdorffDTLoss,
    "ohem_cross_entropy": ref.OhemCrossEntropyLoss,
    "topk_cross_entropy": ref.TopKCrossEntropyLoss,
    "recall_cross_entropy": ref.RecallCrossEntropyLoss,
    "topk_dice": ref.TopKDiceLoss,
    "wasserstein_dice": ref.GeneralizedWassersteinDiceLoss,
    "cldice": ref.ClDiceLoss,
    "hausdorff_er": ref.HausdorffERLoss,
}


def _shape(entry: LossEntry, options: dict, spatial=(3, 5)) -> tuple[int, ...]:
    return (2, entry.fit_classes(C, options), *spatial)


def _options(entry: LossEntry, variant: dict, ignore: bool) -> dict:
    options = fit_variant(variant, entry.fit_classes(C, variant))
    if options is None:
        pytest.skip("variant needs another class count")
    if ignore and not entry.takes("ignore_index"):
        pytest.skip(f"{entry.name} has no ignore_index")
    return {**options, "ignore_index": 255} if ignore else dict(options)


def test_registry_covers_every_module():
    assert set(MODULES) == {e.name for e in LOSSES}


@pytest.mark.parametrize("ignore", [False, True], ids=["all-valid", "ignore"])
@pytest.mark.parametrize(("entry", "options"), CASES)
def test_gradcheck_float64(entry, options, ignore, gen):
    """Finite differences against the autograd gradient. A Lovasz loss (a subgradient
    that depends on the sort order of its errors) is drawn again until no two errors of
    a row lie within 1e-5 of each other: a difference step across a swap measures the
    kink, not the gradient (a pooled row with a gap of 7.8e-7 failed CI once)."""
    opts = _options(entry, options, ignore)
    for _ in range(20):
        x, t = make_inputs(
            entry,
            _shape(entry, opts),
            opts,
            torch.float64,
            gen,
            ignore_frac=0.3 if ignore else 0.0,
            soft=entry.soft,
        )
        if entry.grad_weights is None:
            break
        rows = lovasz_errors(entry, x, t, opts.get("per_image", False))
        if all(separated(row.sort().values) for row in rows):
            break
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: entry.reference(z, t, **opts), (x,), eps=1e-6, atol=1e-6, rtol=1e-4
    )


@pytest.mark.parametrize(("entry", "options"), CASES)
def test_ignored_pixels_change_nothing(entry, options, gen):
    opts = _options(entry, options, ignore=True)
    x, t = make_inputs(
        entry, _shape(entry, opts, (4, 6)), opts, torch.float64, gen, ignore_frac=0.4
    )
    x.requires_grad_(True)
    loss = entry.reference(x, t, **opts)
    (grad,) = torch.autograd.grad(loss, x)
    ignored = (t == 255) if t.dim() == x.dim() else (t == 255).unsqueeze(1).expand_as(x)
    assert torch.isfinite(loss) and ignored.any()
    assert grad[ignored].abs().max() == 0
    moved = x.detach() + 5.0 * torch.randn(x.shape, generator=gen, dtype=x.dtype) * ignored
    torch.testing.assert_close(
        entry.reference(moved, t, **opts), loss.detach(), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("entry", "options"), CASES)
def test_low_precision_accumulates_in_float32(entry, options, dtype, gen):
    opts = _options(entry, options, ignore=False)
    x, t = make_inputs(entry, _shape(entry, opts, (16, 17)), opts, dtype, gen)
    out = entry.reference(x, t, **opts)
    assert out.dtype == torch.float32
    expected = entry.reference(x.to(torch.float64), t, **opts)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("entry", "options"), CASES)
def test_volumes_and_channels_last(entry, options, gen):
    opts = _options(entry, options, ignore=False)
    x, t = make_inputs(entry, (2, entry.fit_classes(C, opts), 3, 4, 5), opts, torch.float64, gen)
    flat_opts = dict(opts)
    if entry.name == "boundary":  # the map depends on the layout: give both the 3-D map
        opts["dist_map"] = ref.signed_distance_map(t, x.shape[1], opts.get("mode", "multiclass"))
        flat_opts["dist_map"] = opts["dist_map"].reshape(2, -1, 3, 20)
    # the distance maps, skeletons and erosions come from the layout (maps cannot be given)
    if entry.name not in ("hausdorff_dt", "cldice", "hausdorff_er"):
        flat = entry.reference(x.reshape(2, -1, 3, 20), t.reshape(*t.shape[:-2], 20), **flat_opts)
        torch.testing.assert_close(entry.reference(x, t, **opts), flat, rtol=1e-12, atol=1e-12)
    opts.pop("dist_map", None)
    x2, t2 = make_inputs(entry, _shape(entry, opts, (4, 6)), opts, torch.float64, gen)
    cl = x2.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        entry.reference(cl, t2, **opts), entry.reference(x2, t2, **opts), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(("entry", "options"), CASES)
def test_module_equals_function(entry, options, gen):
    opts = _options(entry, options, ignore=False)
    x, t = make_inputs(entry, _shape(entry, opts), opts, torch.float64, gen)
    tensor_opts = {
        k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) and k != "classes" else v
        for k, v in opts.items()
    }
    module = MODULES[entry.name](**tensor_opts)
    torch.testing.assert_close(module(x, t), entry.reference(x, t, **opts), rtol=0, atol=0)


def test_module_rejects_unknown_option():
    with pytest.raises(TypeError, match="unknown option"):
        ref.DiceLoss(smoothing=1.0)


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_sum_and_mean_agree_with_none(entry, gen):
    opts = dict(entry.variants[0])
    x, t = make_inputs(entry, _shape(entry, opts), opts, torch.float64, gen)
    if "none" not in entry.reductions:
        with pytest.raises(ValueError, match="reduction"):
            entry.reference(x, t, reduction="none", **opts)
        return
    none = entry.reference(x, t, reduction="none", **opts)
    total = entry.reference(x, t, reduction="sum", **opts)
    torch.testing.assert_close(none.sum(), total, rtol=1e-12, atol=1e-12)
    mean = entry.reference(x, t, reduction="mean", **opts)
    assert torch.isfinite(mean)


def test_fit_variant_repeats_class_vectors_and_checks_class_lists():
    assert fit_variant({"classes": [0, 2]}, 3) == {"classes": [0, 2]}
    assert fit_variant({"classes": [0, 2]}, 2) is None
    got = fit_variant({"weight": [1.0, 2.0], "alpha": 0.25, "mode": "multiclass"}, 5)
    assert got == {"weight": [1.0, 2.0, 1.0, 2.0, 1.0], "alpha": 0.25, "mode": "multiclass"}
    assert fit_variant({"pos_weight": [1.0, 2.0, 3.0]}, 1) == {"pos_weight": [1.0]}
    assert fit_variant({"dist_matrix": [[0, 1], [1, 0]]}, 2) == {"dist_matrix": [[0, 1], [1, 0]]}
    assert fit_variant({"dist_matrix": [[0, 1], [1, 0]]}, 3) is None
    assert fit_variant({"mode": "multilabel", "reduction": "sum"}, 1) == {
        "mode": "multilabel",
        "reduction": "sum",
    }


def test_inputs_ignore_and_soften_only_as_asked(gen):
    shape = (2, 3, 8, 8)
    _, t = make_inputs(get("dice"), shape, {}, generator=gen, ignore_frac=0.5)
    assert (t == 255).any()
    # no ignore_index: its masks stay 0 / 1
    _, t = make_inputs(get("cross_entropy_probs"), shape, {}, generator=gen, ignore_frac=0.5)
    assert ((t == 0) | (t == 1)).all()
    _, t = make_inputs(get("cross_entropy_probs"), shape, {}, generator=gen, soft=True)
    assert ((t > 0) & (t < 1)).all()
