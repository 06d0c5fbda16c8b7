"""Bad input gets a clear Python exception that names the argument and the problem."""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import pytest
import torch
from kernel_checks import (
    DEVICE,
    KERNELS,
    LABEL_METRICS,
    assert_matches,
    label_metric,
    light_options,
    reads_probabilities,
    run_with_grad,
)

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.registry import LOSSES, fit_variant, make_inputs

LABELS = [e for e in LOSSES if e.target == "labels"]
MASKS = [e for e in LOSSES if e.target == "masks"]
PROBABILITY_INPUT = [e for e in KERNELS if e.takes("from_logits")]


def _inputs(entry, gen, C=3):
    C = entry.fit_classes(C, entry.variants[0])
    return make_inputs(entry, (2, C, 4, 5), dict(entry.variants[0]), torch.float32, gen)


@pytest.mark.parametrize("entry", LABELS, ids=lambda e: e.name)
@pytest.mark.parametrize("bad", [3, -1, 255])
def test_label_out_of_range(entry, bad, gen):
    x, y = _inputs(entry, gen)
    y[0, 1, 2] = bad
    with pytest.raises(ValueError, match=rf"label {bad} outside \[0, 3\)"):
        entry.reference(x, y, **entry.variants[0])


@pytest.mark.parametrize("entry", LABELS, ids=lambda e: e.name)
def test_float_labels_rejected(entry, gen):
    x, y = _inputs(entry, gen)
    with pytest.raises(TypeError, match="integer class labels"):
        entry.reference(x, y.float(), **entry.variants[0])


@pytest.mark.parametrize(
    "entry", [e for e in LABELS if not reads_probabilities(e)], ids=lambda e: e.name
)
@pytest.mark.parametrize("C", [2, 3])
def test_one_hot_target_gets_a_hint(entry, C, gen):
    """A one-hot target (MONAI's default form) where labels are expected: the error says
    to pass ``argmax(1)``, or that the loss takes integer labels (two classes too)."""
    x, y = _inputs(entry, gen, C)
    one_hot = torch.nn.functional.one_hot(y, x.shape[1]).movedim(-1, 1).float()
    for fn in (entry.reference, entry.kernel):
        with pytest.raises((TypeError, ValueError), match=r"argmax\(1\)|integer labels"):
            fn(x, one_hot, **entry.variants[0])


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_shape_mismatch(entry, gen):
    x, y = _inputs(entry, gen)
    for fn in (entry.reference, entry.kernel):
        with pytest.raises(ValueError, match="target shape"):
            fn(x, y[..., :-1], **entry.variants[0])


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_empty_tensors(entry, gen):
    x, y = _inputs(entry, gen)
    for fn in (entry.reference, entry.kernel):
        with pytest.raises(ValueError, match="empty"):
            fn(x[:, :, :0], y[..., :0, :] if y.dim() == 3 else y[:, :, :0], **entry.variants[0])


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_logits_without_a_spatial_dim(entry, gen):
    """``[B, C]`` or ``[N]`` logits are named, before any per-class vector is sized from
    them (the kernels' region losses read C off a 1-D tensor: IndexError)."""
    x, y = _inputs(entry, gen)
    pixel = (0,) * (x.dim() - 2)
    for xs, ys in ((x[(..., *pixel)], y[(..., *pixel)]), (x[(0, 0, *pixel[:-1])], y.flatten())):
        for fn in (entry.reference, entry.kernel):
            with pytest.raises(ValueError, match="at least one spatial dim"):
                fn(xs, ys, **entry.variants[0])


def _class_vector_options():
    """``(entry, variant, option)`` for each per-class vector among the kernels' variants."""
    for entry in KERNELS:
        for k, variant in enumerate(entry.variants):
            for key, value in variant.items():
                if key != "classes" and isinstance(value, list) and not isinstance(value[0], list):
                    yield pytest.param(entry, variant, key, id=f"{entry.name}-{k}-{key}")


@pytest.mark.parametrize(("entry", "variant", "key"), list(_class_vector_options()))
def test_an_unchecked_nan_in_a_class_vector_makes_the_loss_nan(entry, variant, key, gen):
    """The kernels read a per-class tensor's values only with ``validate=True`` (a host
    sync). Without it a NaN among them gives a NaN loss and gradient, never a number (the
    region losses' 'mean' over units once left out a unit whose weights summed to NaN and
    returned 0)."""
    C = entry.fit_classes(3, variant)
    options = fit_variant(variant, C)
    x, y = make_inputs(entry, (2, C, 4, 5), options, torch.float32, gen)
    vector = torch.tensor(options[key], dtype=torch.float32)
    vector[len(vector) // 2] = float("nan")
    options = {**options, key: vector.to(DEVICE)}
    loss, grad = run_with_grad(entry.kernel, x.to(DEVICE), y.to(DEVICE), options)
    assert loss.isnan().any() and grad.isnan().any(), (loss, grad.isnan().sum())


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_integer_logits_rejected(entry, gen):
    x, y = _inputs(entry, gen)
    for fn in (entry.reference, entry.kernel):
        with pytest.raises(TypeError, match="logits must be a floating tensor"):
            fn(x.long(), y, **entry.variants[0])


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_inputs_that_are_not_tensors_or_lie_on_two_devices(entry, gen):
    """Lists or arrays in place of tensors, and logits and target on different devices
    (the meta device stands in for a GPU here: a tensor there has no values), are named
    before anything reads them."""
    x, y = _inputs(entry, gen)
    opts = entry.variants[0]
    for fn in (entry.reference, entry.kernel):
        for bad in (x.tolist(), x.numpy()):
            with pytest.raises(TypeError, match="logits must be a torch.Tensor, got"):
                fn(bad, y, **opts)
        with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
            fn(x, y.tolist(), **opts)
        with pytest.raises(ValueError, match="target is on cpu but logits on meta"):
            fn(x.to("meta"), y, **opts)
        with pytest.raises(ValueError, match="target is on meta but logits on cpu"):
            fn(x, y.to("meta"), **opts)


@pytest.mark.parametrize("entry", MASKS, ids=lambda e: e.name)
def test_mask_values_out_of_range(entry, gen):
    x, t = _inputs(entry, gen)
    t[0, 0, 0, 0] = 2.0
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        entry.reference(x, t, **entry.variants[0])


def test_binary_mode_needs_one_channel(gen):
    x = torch.randn(2, 3, 4, 4)
    t = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="mode='binary' needs logits with C=1"):
        ref.dice_loss(x, t, mode="binary")
    with pytest.raises(ValueError, match="mode must be one of"):
        ref.dice_loss(x, t, mode="softmax")


def test_bad_options_are_named():
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match="reduction must be one of"):
        ref.cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match="weight must have one entry per class"):
        ref.cross_entropy(x, y, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="scope must be one of"):
        ref.dice_loss(x, y, scope="pixel")
    with pytest.raises(ValueError, match="absent must be one of"):
        ref.dice_loss(x, y, absent="nan")
    with pytest.raises(ValueError, match="label_smoothing"):
        ref.cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="gamma must be finite and >= 0"):
        ref.softmax_focal_loss(x, y, gamma=-1.0)
    for k in (0.0, -0.5, 101, math.nan):  # one range in the message, whichever side
        with pytest.raises(ValueError, match=r"k must be in \(0, 100\], got"):
            ref.topk_cross_entropy(x, y, k=k)
    with pytest.raises(TypeError, match="k must be a real number, got str"):
        ref.topk_cross_entropy(x, y, k="5")
    with pytest.raises(ValueError, match="classes must be"):
        ref.lovasz_softmax_loss(x, y, classes=[0, 7])
    with pytest.raises(ValueError, match="logits must be"):
        ref.cross_entropy(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        ref.cross_entropy([[0.0]], y)


def _number_options(entry) -> list[str]:
    """The options of ``entry`` that take a real number (``float``, maybe or a vector)."""
    params = inspect.signature(entry.reference).parameters
    return [
        name
        for name, p in params.items()
        if str(p.annotation).startswith("float") and name != "ignore_index"
    ]


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_bad_numbers_are_named(entry, gen):
    """A string, a bool, NaN or a negative number given to any numeric option (smoothing,
    eps, alpha, beta, gamma, term weights) raises an error naming the option, in the
    reference and the kernel alike, before anything is computed."""
    names = _number_options(entry)
    assert names or entry.name.startswith(("lovasz", "boundary", "recall")), entry.name
    x, y = _inputs(entry, gen)
    x, y = x.to(DEVICE), y.to(DEVICE)
    for name in names:
        for bad in ("0.5", True, float("nan"), -1.0):
            for fn in (entry.reference, entry.kernel):
                with pytest.raises((TypeError, ValueError), match=name):
                    fn(x, y, **{**entry.variants[0], name: bad})


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_bad_class_lists_and_spacing_are_named(lib):
    """Class index lists must hold integers (0.5 or True is not a class), and spacing must
    be a sequence of numbers; a NumPy array or CPU tensor of indices is read as a list, a
    device tensor is refused (reading it would synchronise)."""
    x, y = torch.randn(2, 3, 4, 5).to(DEVICE), torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    for fn in (lib.boundary_loss, lib.lovasz_softmax_loss):
        for bad in ([0.5], [True], 2):
            with pytest.raises(TypeError, match="classes must be a sequence of integer"):
                fn(x, y, classes=bad)
        with pytest.raises(ValueError, match=r"indices in \[0, 3\)"):
            fn(x, y, classes=[0, 3])
        with pytest.raises(TypeError, match="must be a list or a CPU tensor"):
            fn(x, y, classes=torch.tensor([1, 2], device="meta"))  # no device read in a loss
        expected = fn(x, y, classes=[1, 2])
        for same in (np.array([1, 2]), torch.tensor([1, 2]), (1, 2)):
            torch.testing.assert_close(fn(x, y, classes=same), expected)
    for bad in (2.0, "ab", ["a", 1.0]):
        with pytest.raises(TypeError, match="spacing must be a sequence of numbers"):
            lib.boundary_loss(x, y, spacing=bad)


@pytest.mark.parametrize(
    "entry", [e for e in LOSSES if e.takes("ignore_index")], ids=lambda e: e.name
)
def test_bad_ignore_index_is_named(entry, gen):
    """ignore_index must be an int for integer labels (2.5 would be truncated to class 2 by
    one implementation and rejected by another) and a number for masks; never a bool."""
    x, y = (v.to(DEVICE) for v in _inputs(entry, gen))
    opts = entry.variants[0]
    bads = ("a", True, 2.5) if entry.target_kind(opts) == "labels" else ("a", True)
    for bad in bads:
        for fn in (entry.reference, entry.kernel):
            with pytest.raises(TypeError, match="ignore_index must be None or"):
                fn(x, y, **{**opts, "ignore_index": bad})


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_bad_num_classes_is_named(lib):
    y = torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    for bad in (3.0, "3", True, None):
        with pytest.raises(TypeError, match="num_classes must be an int"):
            lib.confusion_matrix(y, y, bad)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        lib.signed_distance_map(y, 3.0)
    with pytest.raises(TypeError, match="ignore_index must be None or an int"):
        lib.confusion_matrix(y, y, 3, ignore_index=2.5)


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
@pytest.mark.parametrize("name", LABEL_METRICS)
def test_metric_inputs(lib, name):
    y = torch.randint(0, 3, (2, 4, 4), device=DEVICE)
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    fn = label_metric(lib, name, 3)
    with pytest.raises(ValueError, match=r"label (5 )?outside \[0, 3\)"):
        fn(torch.full_like(y, 5), y)
    with pytest.raises(ValueError, match="logits of shape"):
        fn(torch.randn(2, 4, 4, 4), y)
    with pytest.raises(ValueError, match="does not match target"):
        fn(y[:, :2], y)
    with pytest.raises(ValueError, match="empty"):
        fn(y[:, :0], y[:, :0])
    with pytest.raises(ValueError, match="target must be"):
        fn(y[0, 0], y[0, 0])
    with pytest.raises(TypeError, match="preds must be a torch.Tensor, got list"):
        fn(y.tolist(), y)
    with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
        fn(y, y.tolist())
    for preds in (y, x):
        with pytest.raises(ValueError, match=f"preds are on meta but target on {y.device}"):
            fn(preds.to("meta"), y)
        with pytest.raises(ValueError, match=f"preds are on {y.device} but target on meta"):
            fn(preds, y.to("meta"))


def _flag_options(fn) -> list[str]:
    """The options of ``fn`` that take a bool (``squared``, ``per_image``, ``validate``...)."""
    return [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.annotation in (bool, "bool")
    ]


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_bad_flags_are_named(entry, gen):
    """A flag takes True or False (a NumPy bool too): a string, None or a number is
    refused with an error naming the flag, in the reference and the kernel alike (the
    kernel once turned log_loss='yes' into int('yes'))."""
    x, y = (v.to(DEVICE) for v in _inputs(entry, gen))
    opts = entry.variants[0]
    for fn in (entry.reference, entry.kernel):
        for name in _flag_options(fn):
            for bad in ("yes", None, 1):
                with pytest.raises(TypeError, match=f"{name} must be a bool"):
                    fn(x, y, **{**opts, name: bad})
            flag = bool(opts.get(name, inspect.signature(fn).parameters[name].default))
            torch.testing.assert_close(
                fn(x, y, **{**opts, name: np.bool_(flag)}), fn(x, y, **{**opts, name: flag})
            )


def test_bad_flags_of_metrics_are_named():
    y = torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    calls = [
        (ref.confusion_matrix, (y, y, 3)),
        (ker.confusion_matrix, (y, y, 3)),
        (ker.segmentation_metrics, (y, y, 3)),
        (ker.signed_distance_map, (y, 3)),
        (ref.hausdorff_distance, (y, y, 3)),
        (ker.hausdorff_distance, (y, y, 3)),
        (ref.average_surface_distance, (y, y, 3)),
        (ker.average_surface_distance, (y, y, 3)),
    ]
    for fn, args in calls:
        flags = _flag_options(fn)
        assert flags, fn.__qualname__
        for flag in flags:
            with pytest.raises(TypeError, match=f"{flag} must be a bool"):
                fn(*args, **{flag: "yes"})


@pytest.mark.parametrize("bad", [2**32 + 1, 2**31, -(2**32) + 2, -(2**31)])
@pytest.mark.parametrize("entry", LABELS, ids=lambda e: e.name)
def test_labels_past_int32(entry, bad, gen):
    """An int64 label outside int32 is a bad label, never a class it would become when
    truncated to 32 bits (2^32 + 1 is not class 1; 2^31 and -2^31 are not 'no label'): the
    reference and ``validate=True`` name it, the kernel alone gives NaN."""
    x, y = (v.to(DEVICE) for v in _inputs(entry, gen))
    y[0, 1, 2] = bad
    opts = entry.variants[0]
    for fn, extra in ((entry.reference, {}), (entry.kernel, {"validate": True})):
        with pytest.raises(ValueError, match=rf"label {bad} outside \[0, 3\)"):
            fn(x, y, **opts, **extra)
    assert torch.isnan(entry.kernel(x, y, **opts).sum())


MASK_VARIANTS = [
    pytest.param(e, opts, id=f"{e.name}-{i}")
    for e in KERNELS
    for i, opts in enumerate(e.variants)
    if e.target_kind(opts) == "masks"
]


@pytest.mark.parametrize("bad", [2.0, -0.5, float("nan")])
@pytest.mark.parametrize(("entry", "opts"), MASK_VARIANTS)
def test_bad_mask_values_in_every_kernel(entry, opts, bad, gen):
    """A mask value outside [0, 1] (or NaN) makes every kernel's loss NaN, and
    ``validate=True`` names it; the reference names it too."""
    C = entry.fit_classes(3, opts)
    x, t = make_inputs(entry, (2, C, 4, 5), dict(opts), torch.float32, gen, device=DEVICE)
    t.view(-1)[7] = bad
    assert torch.isnan(entry.kernel(x, t, **opts)).any()
    for fn, extra in ((entry.reference, {}), (entry.kernel, {"validate": True})):
        with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
            fn(x, t, **opts, **extra)


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_metric_labels_past_int32(lib):
    y = torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    for bad in (2**32 + 1, 2**31, -(2**31)):
        z = y.clone()
        z[1, 2, 3] = bad
        for preds, target in ((z, y), (y, z)):
            with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
                lib.confusion_matrix(preds, target, 3)


@pytest.mark.parametrize("entry", LABELS, ids=lambda e: e.name)
def test_ignore_index_outside_the_label_dtype_matches_no_label(entry, gen):
    """ignore_index is compared with labels as a number: -100 is no uint8 label (torch's
    ``==`` wraps it to 156, which the reference once ignored), and with 3 classes a uint8
    255 is then a bad label, not an ignored one."""
    C = 160
    x = torch.randn(2, C, 2, 3, generator=gen).to(DEVICE)
    y = torch.randint(0, C, (2, 2, 3), generator=gen).to(DEVICE)
    y[0, 0, 0] = 156
    opts = {**entry.variants[0], "ignore_index": -100}
    for fn in (entry.reference, entry.kernel):
        torch.testing.assert_close(fn(x, y.to(torch.uint8), **opts), fn(x, y, **opts))
    x, y = (v.to(DEVICE) for v in _inputs(entry, gen))
    y[0, 1, 2] = 255
    with pytest.raises(ValueError, match=r"label 255 outside \[0, 3\)"):
        entry.reference(x, y.to(torch.uint8), **{**entry.variants[0], "ignore_index": -1})


@pytest.mark.parametrize("entry", LABELS, ids=lambda e: e.name)
def test_more_classes_than_the_label_dtype_holds(entry, gen):
    """With 300 classes every uint8 label is a class (and with 200 every int8 label from 0):
    the dtype's largest value bounds the range check, where torch's comparison with 300
    wraps it to 44 (the reference refused uint8 labels from 44 up). The last class, which
    no such label can name, is predicted on a row and selected where a loss selects
    classes (HD-DT's reference once matched uint8 label 43 as class 299)."""
    for C, dtype in ((300, torch.uint8), (200, torch.int8)):
        top = torch.iinfo(dtype).max
        x = torch.randn(1, C, 2, 3, generator=gen).to(DEVICE)
        x[0, C - 1, 1] = 20.0
        y = torch.randint(0, top + 1, (1, 2, 3), generator=gen).to(DEVICE)
        y[0, 0] = torch.tensor([top, (C - 1) % 256 if dtype == torch.uint8 else 5, 1])
        opts = dict(entry.variants[0])
        if entry.takes("classes"):
            opts["classes"] = [1, C - 1]
        for fn in (entry.reference, entry.kernel):
            got = fn(x, y.to(dtype), **opts)
            torch.testing.assert_close(got, fn(x, y, **opts), equal_nan=True)


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_metrics_of_more_classes_than_the_label_dtype_holds(lib, gen):
    y = torch.randint(0, 256, (2, 4, 5), generator=gen).to(DEVICE)
    y[0, 0, 0] = 255
    z = y.flip(-1)
    for fn in (lib.confusion_matrix, lib.hausdorff_distance):
        got = fn(z.to(torch.uint8), y.to(torch.uint8), 300)
        torch.testing.assert_close(got, fn(z, y, 300), equal_nan=True)


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_metric_ignore_index_outside_the_label_dtype(lib):
    y = torch.arange(160).reshape(2, 8, 10).to(DEVICE)
    for target in (y, y.to(torch.uint8)):
        assert lib.confusion_matrix(y, target, 160, ignore_index=-100).trace() == 160


UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)  # torch stores and copies them only


@pytest.mark.parametrize("entry", LABELS, ids=lambda e: e.name)
def test_unsigned_labels_torch_only_stores(entry, gen):
    """uint16/32/64 labels (a 16-bit label PNG through ``torch.from_numpy`` gives uint16),
    on which torch has no ``>=``: the reference and the kernels (with ``validate=True``
    too) give the loss and gradient they give on int64 labels, ignored pixels included."""
    x, y = (v.to(DEVICE) for v in _inputs(entry, gen))
    y[0, 1] = 255
    opts = {**entry.variants[0], "ignore_index": 255}
    for fn in (entry.reference, entry.kernel, functools.partial(entry.kernel, validate=True)):
        want = run_with_grad(fn, x, y, opts)
        for dtype in UNSIGNED:
            got = run_with_grad(fn, x, y.to(dtype), opts)
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("entry", LABELS, ids=lambda e: e.name)
def test_unsigned_labels_are_read_as_numbers(entry, gen):
    """A uint32 label 2^32 - 100 is a bad label, not ignore_index=-100 (what it would read
    as in 32 bits): the reference and ``validate=True`` name it, the kernel alone gives
    NaN. uint64 labels are read as int64, by both: 2^64 - 100 reads -100 and is ignored."""
    x, y = (v.to(DEVICE) for v in _inputs(entry, gen))
    opts = {**entry.variants[0], "ignore_index": -100}
    y[0, 1, 2] = 2**32 - 100
    wide = y.to(torch.uint32)
    for fn, extra in ((entry.reference, {}), (entry.kernel, {"validate": True})):
        with pytest.raises(ValueError, match=rf"label {2**32 - 100} outside \[0, 3\)"):
            fn(x, wide, **opts, **extra)
    assert torch.isnan(entry.kernel(x, wide, **opts).sum())
    y[0, 1, 2] = -100
    for fn in (entry.reference, entry.kernel):
        torch.testing.assert_close(fn(x, y.to(torch.uint64), **opts), fn(x, y, **opts))


@pytest.mark.parametrize("entry", LABELS, ids=lambda e: e.name)
def test_unsupported_label_dtypes_and_reserved_ignore_index(entry, gen):
    """Integer dtypes that are no labels (sub-byte, raw bits) are refused by name, and so
    is ignore_index = -2^31, which the kernels use to mean None."""
    x, y = (v.to(DEVICE) for v in _inputs(entry, gen))
    opts = entry.variants[0]
    odd = (
        torch.empty(y.shape, dtype=torch.int4),  # refused before the device is looked at
        y.to(torch.uint8).view(torch.bits8),
    )
    for fn in (entry.reference, entry.kernel):
        for target in odd:
            with pytest.raises(TypeError, match=f"target dtype {target.dtype} is not supported"):
                fn(x, target, **opts)
        for bad, message in ((-(2**31), "is reserved"), (2**63, "must fit in int64")):
            with pytest.raises(ValueError, match=message):
                fn(x, y, **{**opts, "ignore_index": bad})


@pytest.mark.parametrize("entry", MASKS, ids=lambda e: e.name)
def test_target_requiring_grad_is_refused_by_kernels(entry, gen):
    """The reference gives a soft target a gradient, the kernels give it none: rather than
    return None for it silently, a kernel refuses a target that requires grad."""
    x, t = (v.to(DEVICE) for v in _inputs(entry, gen))
    t = t.float().requires_grad_(True)
    opts = entry.variants[0]
    torch.autograd.grad(entry.reference(x, t, **opts).sum(), t)  # raises if t is unused
    with pytest.raises(ValueError, match="target requires grad"):
        entry.kernel(x, t, **opts)
    entry.kernel(x, t.detach(), **opts)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
@pytest.mark.parametrize("fast_eager", [True, False], ids=["function", "custom-op"])
def test_second_derivatives_are_refused_by_kernels(entry, fast_eager, seed, gen, monkeypatch):
    """A kernel's gradient cannot be differentiated again: create_graph=True once gave a
    gradient with no graph, so a penalty built on it added nothing to a later backward.
    It raises, through the eager Function and the custom op alike; the reference gives
    the second derivative, and a plain backward still matches the float64 reference."""
    monkeypatch.setattr(ker._ops, "fast_eager", fast_eager)
    x, t = (v.to(DEVICE) for v in _inputs(entry, gen))
    x.requires_grad_(True)
    opts = entry.variants[0]
    (g,) = torch.autograd.grad(entry.reference(x, t, **opts).sum(), x, create_graph=True)
    assert g.requires_grad
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(entry.kernel(x, t, **opts).sum(), x, create_graph=True)
    assert_matches(entry, x, t, opts, torch.float32, seed)


def test_dist_map_requiring_grad_is_refused_by_the_kernel():
    x, y = torch.randn(2, 3, 4, 5).to(DEVICE), torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    for loss, make_map in (
        (ker.boundary_loss, ker.signed_distance_map),
        (ker.hausdorff_dt_loss, ker.distance_field),
    ):
        phi = make_map(y, 3).requires_grad_(True)
        with pytest.raises(ValueError, match="dist_map requires grad"):
            loss(x, y, dist_map=phi)
        loss(x, y, dist_map=phi.detach())


def test_class_vectors_requiring_grad_are_refused_by_kernels():
    x, y = torch.randn(2, 3, 4, 5).to(DEVICE), torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    w = torch.tensor([0.5, 1.0, 2.0], device=DEVICE, requires_grad=True)
    for fn, name in (
        (ker.cross_entropy, "weight"),
        (ker.dice_loss, "weight"),
        (ker.softmax_focal_loss, "alpha"),
    ):
        with pytest.raises(ValueError, match=f"{name} requires grad"):
            fn(x, y, **{name: w})
        fn(x, y, **{name: w.detach()})


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_float64_logits_are_refused_by_kernels(entry, gen):
    """The kernels compute in float32: float64 logits raise instead of being rounded."""
    x, y = (v.to(DEVICE) for v in _inputs(entry, gen))
    opts = entry.variants[0]
    with pytest.raises(TypeError, match=rf"{entry.kernel.__name__} takes float32.*float64"):
        entry.kernel(x.double(), y, **opts)
    entry.reference(x.double(), y, **opts)


def test_float64_logits_are_refused_by_the_metrics_kernel():
    x, y = torch.randn(2, 3, 4, 5).to(DEVICE), torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    for fn in (ker.confusion_matrix, ker.segmentation_metrics):
        with pytest.raises(TypeError, match="got torch.float64"):
            fn(x.double(), y, 3)
        fn(x, y, 3)
    assert torch.equal(
        ker.confusion_matrix(x.argmax(1).long(), y, 3), ref.confusion_matrix(x, y, 3)
    )


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_bad_min_kept_is_named(lib):
    x, y = torch.randn(2, 3, 4, 5).to(DEVICE), torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    for bad in (-1, 2.0, True, "5"):
        with pytest.raises((TypeError, ValueError), match="min_kept"):
            lib.ohem_cross_entropy(x, y, min_kept=bad)


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_bad_topk_percentage_is_named(lib):
    x, y = torch.randn(2, 3, 4, 5).to(DEVICE), torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    for bad in (0, -1.0, 100.5, float("nan"), True, "10", [10]):
        with pytest.raises((TypeError, ValueError), match="k must"):
            lib.topk_cross_entropy(x, y, k=bad)
    with pytest.raises(ValueError, match="shape"):
        lib.topk_cross_entropy(x, y[:, :3])


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
@pytest.mark.parametrize(
    "name",
    [
        "cross_entropy",
        "softmax_focal_loss",
        "ohem_cross_entropy",
        "topk_cross_entropy",
        "recall_cross_entropy",
    ],
)
def test_label_losses_take_ignore_index_none(lib, name, gen):
    """ignore_index=None ignores nothing (smp's spelling), the same as an index no label
    holds; a label -100 is then a bad label, not an ignored one."""
    x = torch.randn(2, 3, 4, 5, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 4, 5), generator=gen).to(DEVICE)
    fn = getattr(lib, name)
    assert torch.equal(fn(x, y, ignore_index=None), fn(x, y, ignore_index=255))
    y[0, 0, 0] = -100
    if lib is ref:
        with pytest.raises(ValueError, match="label -100"):
            fn(x, y, ignore_index=None)
    else:
        assert torch.isnan(fn(x, y, ignore_index=None))


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_loss_and_metric_specific_inputs_are_named(lib, gen):
    """Checks the shared ones above do not reach: soft targets for the Lovasz hinge, a
    given distance map that is a list or lies on another device, multilabel metric inputs
    that are complex, lists or on two devices, ``gamma_after_mean`` with a reduction that
    is not 'mean', and a 2-D array of class weights."""
    kw = {"validate": True} if lib is ker else {}
    with pytest.raises(ValueError, match=r"needs hard \{0, 1\} targets"):
        lib.lovasz_hinge_loss(
            torch.randn(2, 1, 5, 6, generator=gen).to(DEVICE),
            torch.rand(2, 1, 5, 6, generator=gen).to(DEVICE),
            **kw,
        )
    x = torch.randn(2, 3, 5, 6, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (2, 5, 6), generator=gen).to(DEVICE)
    for fn in (lib.boundary_loss, lib.hausdorff_dt_loss):
        with pytest.raises(TypeError, match="dist_map must be a torch.Tensor, got list"):
            fn(x, y, dist_map=torch.zeros_like(x).tolist())
        with pytest.raises(ValueError, match=f"dist_map is on meta but logits on {x.device}"):
            fn(x, y, dist_map=torch.zeros_like(x, device="meta"))
    masks = (torch.rand(2, 3, 5, 6, generator=gen) > 0.5).float().to(DEVICE)
    cm = functools.partial(lib.confusion_matrix, num_classes=3, mode="multilabel")
    with pytest.raises(TypeError, match="preds must be real"):
        cm(masks.to(torch.complex64), masks)
    with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
        cm(masks, masks.tolist())
    with pytest.raises(ValueError, match=f"preds are on meta but target on {masks.device}"):
        cm(masks.to("meta"), masks)
    with pytest.raises(ValueError, match="gamma_after_mean=True needs reduction='mean'"):
        lib.focal_tversky_loss(x, y, gamma_after_mean=True, reduction="sum")
    with pytest.raises(ValueError, match=r"one entry per class \(C=3\).*got shape \(3, 2\)"):
        lib.dice_loss(x, y, weight=np.ones((3, 2)))


@pytest.mark.parametrize("lib", [ref, ker], ids=["reference", "kernels"])
def test_bad_distance_map_targets_are_named(lib, gen):
    """The standalone maps check their target as the losses do: a tensor, integer labels
    ``[B, *S]`` or masks ``[B, C, *S]`` (one channel for 'binary': a ``[B, H, W]`` mask
    would otherwise be read as H one-pixel-high channels), with a spatial dim, not empty."""
    y = torch.randint(0, 3, (2, 5, 6), generator=gen).to(DEVICE)
    masks = (y == 1).unsqueeze(1).float()
    for fn in (lib.signed_distance_map, lib.distance_field):
        with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
            fn(y.tolist(), 3)
        with pytest.raises(TypeError, match="integer class labels"):
            fn(y.float(), 3)
        with pytest.raises(ValueError, match=r"multiclass labels \[B, \*spatial\].*\(2,\)"):
            fn(y[:, 0, 0], 3)
        with pytest.raises(ValueError, match=r"target is empty \(shape \(0, 5, 6\)\)"):
            fn(y[:0], 3)
        with pytest.raises(ValueError, match=r"binary' takes masks \[B, 1, \*spatial\]"):
            fn(masks[:, 0], mode="binary")
        with pytest.raises(ValueError, match=r"multilabel masks \[B, C, \*spatial\]"):
            fn(masks[:, 0, 0], mode="multilabel")
        with pytest.raises(TypeError, match="target must be real"):
            fn(masks.to(torch.complex64), mode="multilabel")
        with pytest.raises(ValueError, match="target is empty"):
            fn(masks[:, :, :0], mode="binary")
        assert fn(masks, mode="binary").shape == fn(y, 3)[:, 1:2].shape


def test_kernels_refuse_cpu_tensors_without_the_interpreter(gen, monkeypatch):
    """Compiled Triton runs on a GPU only: on a machine without one and with
    TRITON_INTERPRET unset, a CPU tensor is named before any launch (Triton's own error
    says "0 active drivers"), and the message points to the reference where there is one."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    x = torch.randn(2, 3, 5, 6, generator=gen)
    y = torch.randint(0, 3, (2, 5, 6), generator=gen)
    calls = {e.name: functools.partial(e.kernel, *_inputs(e, gen)) for e in LOSSES}
    calls |= {
        "confusion_matrix": functools.partial(ker.confusion_matrix, y, y, 3),
        "segmentation_metrics": functools.partial(ker.segmentation_metrics, x, y, 3),
        "surface_metrics": functools.partial(ker.surface_metrics, y, y, 3),
        "region_stats": functools.partial(ker.region_stats, x, y),
        "signed_distance_map": functools.partial(ker.signed_distance_map, y, 3),
        "distance_field": functools.partial(ker.distance_field, y, 3),
    }
    for call in calls.values():
        where = rf"kernels\.{call.func.__name__}: \w+ is on the CPU and there is no GPU here"
        with pytest.raises(ValueError, match=where):
            call()
    with pytest.raises(ValueError, match=r"sites is on the CPU.*is imported\)$"):
        ker.squared_edt(y == 0)
    metric = ker.StreamingMetrics(3)
    with pytest.raises(ValueError, match=r"segtriton.kernels.StreamingMetrics: target is on"):
        metric.update(y, y)
    with pytest.raises(ValueError, match=r"or call segtriton.reference.cross_entropy$"):
        ker.cross_entropy(x, y)


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_bool_class_vectors_are_refused(entry, gen):
    """A per-class option (weight, pos_weight, alpha) of bools, as a list or a bool tensor,
    is refused in the reference and the kernel alike (torch refuses a bool ``weight``;
    read as 1/0 it would pass for weights), as a lone bool is."""
    params = inspect.signature(entry.reference).parameters
    names = [n for n, p in params.items() if "Tensor | Sequence[float]" in str(p.annotation)]
    x, y = (t.to(DEVICE) for t in _inputs(entry, gen))
    C = x.shape[1]
    for name in names:
        for bad in ([True] * C, torch.ones(C, dtype=torch.bool, device=DEVICE)):
            for fn in (entry.reference, entry.kernel):
                with pytest.raises(TypeError, match=f"{name} must hold numbers, got bools"):
                    fn(x, y, **{**entry.variants[0], name: bad})


def test_bool_spacing_and_supervision_weights_are_refused():
    x, y = torch.randn(2, 3, 4, 5).to(DEVICE), torch.randint(0, 3, (2, 4, 5)).to(DEVICE)
    for lib in (ref, ker):
        with pytest.raises(TypeError, match=r"spacing must be a sequence of numbers, got \[True"):
            lib.boundary_loss(x, y, spacing=[True, 1.0])
    with pytest.raises(TypeError, match="weights must be a sequence of numbers"):
        ref.DeepSupervisionLoss(ref.dice_loss, weights=[1.0, True])


@pytest.mark.parametrize(
    "entry",
    [e for e in KERNELS if "validate" in inspect.signature(e.kernel).parameters],
    ids=lambda e: e.name,
)
def test_validate_lets_valid_inputs_through_unchanged(entry, seed, gen):
    """``validate=True`` only checks: on valid inputs (every option set of the registry,
    a fifth of the pixels ignored where the loss takes ``ignore_index``) it raises
    nothing, and the loss is bitwise the one without it."""
    for variant in range(len(entry.variants)):
        options = light_options(entry, variant)
        shape = entry.fit_shape((2, 3, 5, 6), options)
        x, t = make_inputs(entry, shape, options, torch.float32, gen, 0.2, device=DEVICE)
        want = entry.kernel(x, t, **options)
        got = entry.kernel(x, t, **options, validate=True)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=str(seed))


@pytest.mark.parametrize(
    ("entry", "C", "bad"),
    [
        pytest.param(e, C, bad, id=f"{e.name}-C{C}-{bad}")
        for e in PROBABILITY_INPUT
        for C in (3, 300)
        for bad in (1.5, -0.25, math.nan)
        # C = 300, one map per class, is slow (4-5.5 s a case in CI): the region losses
        # alone, with one bad value
        if C == 3 or (e.reference.__module__.endswith(".region") and bad != bad)
    ],
)
def test_probabilities_outside_the_unit_interval(entry, C, bad, gen):
    """With ``from_logits=False`` a counted input entry outside [0, 1]: the reference
    raises naming it, the kernel too with ``validate=True``; without it the kernel's loss
    is NaN. At an ignored pixel (entry) the value is not read: loss and gradient stay.
    C = 300 streams the classes through the region passes."""
    p = torch.softmax(torch.randn(2, C, 4, 5, generator=gen), dim=1).to(DEVICE)
    y = torch.randint(0, C, (2, 4, 5), generator=gen).to(DEVICE)
    y[y == 255] = 0  # class 255 of 300 is ignore_index: the counted pixel must count
    masks = (torch.rand(p.shape, generator=gen) < 0.5).float().to(DEVICE)
    y[1, 2, 3], masks[1, C - 1, 2, 3] = 255, 255
    at_ignored, at_counted = p.clone(), p.clone()
    at_ignored[1, C - 1, 2, 3] = bad
    at_counted[0, C - 1, 2, 3] = bad
    validated = functools.partial(entry.kernel, validate=True)
    modes = (("multiclass", y), ("multilabel", masks)) if entry.takes("mode") else ((None, y),)
    for mode, t in modes:
        opts = {**entry.light, "ignore_index": 255, "from_logits": False}
        if mode is not None:
            opts["mode"] = mode
        with pytest.raises(ValueError, match=r"from_logits=False .* outside \[0, 1\]"):
            entry.reference(at_counted.double(), t, **opts)
        with pytest.raises(ValueError, match=r"from_logits=False .* outside \[0, 1\]"):
            validated(at_counted, t, **opts)
        assert entry.kernel(at_counted, t, **opts).isnan().all(), mode
        for fn in (entry.reference, entry.kernel, validated):
            dtype = torch.float64 if fn is entry.reference else p.dtype
            want = run_with_grad(fn, p.to(dtype), t, opts)
            got = run_with_grad(fn, at_ignored.to(dtype), t, opts)
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b), mode
