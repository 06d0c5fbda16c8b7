"""Helpers shared by the kernel test modules: device, tolerances, and the float64 check."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
import sys
import tempfile
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode

from segtriton import reference as ref
from segtriton.reference._common import LABEL_DTYPES, in_classes, not_ignored, valid_labels
from segtriton.registry import LOSSES, fit_variant, make_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAD_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = list(GRAD_TOL)
# every label dtype that holds the tests' ignore_index 255 (all but int8)
LABELS_WITH_255 = [d for d in LABEL_DTYPES if torch.iinfo(d).max >= 255]
CLASSES = [1, 2, 3, 19, 150]
# metrics a GPU computes from counts equal to the reference's: a mean over classes may add
# in another order and land a few ulps away (0.0938026850581253 against ...529 on an H200)
METRIC_ULPS = {"rtol": 4 * torch.finfo(torch.float64).eps, "atol": 0.0}
# float32 distances (the distance transform, surface metrics) against float64 ones
DISTANCE_TOL = {"rtol": 1e-6, "atol": 1e-5}
SPATIAL = [(7, 9), (3, 5, 6)]
KERNELS = tuple(e for e in LOSSES if e.kernel is not None)  # the losses with a Triton kernel
# the pinned kornia (0.9.0) needs Python >= 3.11: pyproject installs it only there, and
# its tests fail where it is missing on 3.11 and later
NO_KORNIA, KORNIA_REASON = sys.version_info < (3, 11), "kornia 0.9.0 needs Python >= 3.11"
needs_kornia = pytest.mark.skipif(NO_KORNIA, reason=KORNIA_REASON)
CASE_ARGS = ("entry", "options", "C", "dtype", "spatial", "channels_last", "reduction")


def kernels_of(family: str) -> list:
    """The :data:`KERNELS` whose reference lives in ``reference/<family>.py``."""
    return [e for e in KERNELS if e.reference.__module__.endswith(f".{family}")]


def env_without_interpreter() -> dict[str, str]:
    """This process's environment without ``TRITON_INTERPRET``, for a subprocess that must
    choose for itself (``segtriton sweep``) or compile (``segtriton compile``, which builds
    sm_90 binaries without a GPU)."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def kernel_cases(entries, reductions, spatial=SPATIAL, classes=CLASSES):
    """pytest params ``CASE_ARGS`` over every entry's variants x class counts x dtypes, with
    the spatial shape, memory format and reduction taking turns along the list. A variant's
    per-class vectors are repeated to C (:func:`fit_variant`); at a C other than their
    length, one dtype per class count, in turn."""
    rows = []
    for entry in entries:
        for (v, variant), C, dtype in itertools.product(enumerate(entry.variants), classes, DTYPES):
            options = fit_variant(variant, C)
            if options is None or (entry.is_binary(options) and C != 1):
                continue
            if options != variant and dtype != DTYPES[classes.index(C) % len(DTYPES)]:
                continue
            k = len(rows)
            shape = spatial[(k // len(reductions)) % len(spatial)]
            channels_last = k % 3 == 1
            reduction = reductions[k % len(reductions)]
            if options.get("gamma_after_mean"):
                reduction = "mean"
            rows.append(
                pytest.param(
                    entry,
                    options,
                    C,
                    dtype,
                    shape,
                    channels_last,
                    reduction,
                    id=f"{entry.name}-{v}-C{C}-{str(dtype)[6:]}-{len(shape)}d"
                    f"{'-cl' if channels_last else ''}-{reduction}",
                )
            )
    return rows


def variants_at(entries, C):
    """pytest params ``(entry, options)``: every variant of ``entries``, its per-class
    vectors repeated to the class count the entry takes at C (:func:`fit_variant`)."""
    return [
        pytest.param(e, fit_variant(v, e.fit_classes(C, v)), id=f"{e.name}-{i}")
        for e in entries
        for i, v in enumerate(e.variants)
    ]


LABEL_METRICS = ["confusion_matrix", "segmentation_metrics", "hausdorff_distance", "surface_dice"]


def label_metric(lib, name: str, C: int) -> Callable:
    """``lib``'s metric ``name`` as ``fn(preds, target)`` over C classes (NSD at tolerance 1)."""
    fn = functools.partial(getattr(lib, name), num_classes=C)
    return functools.partial(fn, tolerance=1.0) if name == "surface_dice" else fn


def smooth_labels(gen: torch.Generator, C: int, shape: tuple[int, ...]) -> torch.Tensor:
    """int64 labels ``[B, *S]`` (2-D or 3-D) of smooth regions, as a segmentation has: the
    argmax over classes of noise averaged over 5-pixel boxes."""
    noise = torch.randn(shape[0], C, *shape[1:], generator=gen)
    pool = torch.nn.functional.avg_pool2d if len(shape) == 3 else torch.nn.functional.avg_pool3d
    return pool(noise, 5, stride=1, padding=2, count_include_pad=False).argmax(dim=1)


def nested_masks(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """int64 ``[B, 3, *S]`` masks of smooth regions nested as BraTS's whole tumour,
    tumour core and enhancing tumour (each inside the one before)."""
    level = smooth_labels(gen, 4, shape)  # 0: outside, 1..3: deeper
    return torch.stack([level >= c for c in (1, 2, 3)], dim=1).long()


def record_calls(monkeypatch, name: str, modules) -> list[tuple[tuple, object]]:
    """Wraps ``segtriton.kernels._tiles.<name>`` where each of ``modules`` imported it;
    returns the list its calls fill with ``(args, result)``."""
    from segtriton.kernels import _tiles

    real, calls = getattr(_tiles, name), []

    def recorded(*args):
        result = real(*args)
        calls.append((args, result))
        return result

    for module in modules:
        monkeypatch.setattr(module, name, recorded)
    return calls


def force_walk_label_bug(monkeypatch, bug: bool) -> None:
    """Sets ``_tiles.WALK_LABEL_BUG`` to ``bug`` for a test of both sides of it. Compiled
    under a Triton that has the bug (< 3.7), ``bug=False`` asks it to build a walk it cannot
    build on 8- or 16-bit labels, a case no user meets: that side is skipped there (on the
    H200, 2026-12-04, the HD-DT test failed so); the interpreter runs both."""
    import triton

    from segtriton.kernels import _runtime, _tiles

    if not bug and _runtime.WALK_LABEL_BUG and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(f"Triton {triton.__version__} cannot build this walk")
    monkeypatch.setattr(_tiles, "WALK_LABEL_BUG", bug)


def chunked_runs(monkeypatch) -> list[tuple[tuple, object]]:
    """Runs of several pixel tiles per program in the chunked reductions at small shapes:
    ``CHUNK_PROGRAMS`` lowered from 1024 to 4. Returns the recorded ``tile_chunks`` calls
    (see :func:`assert_runs_split` and ``tests/test_kernels_chunks.py``)."""
    from segtriton.kernels import _tiles, metrics, pixelwise, region, wasserstein

    monkeypatch.setattr(_tiles, "CHUNK_PROGRAMS", 4)
    return record_calls(monkeypatch, "tile_chunks", (metrics, pixelwise, region, wasserstein))


def assert_runs_split(calls: list[tuple[tuple, object]]) -> None:
    """Every recorded ``tile_chunks(S, block_p, B)`` call gave two or more runs of two or
    more tiles, the last run ending past the image."""
    from segtriton.kernels._tiles import cdiv

    assert calls, "no chunked launch ran"
    for (S, block_p, *_), (per_run, n_runs) in calls:
        assert per_run >= 2 and n_runs >= 2 and per_run * n_runs > cdiv(S, block_p), calls


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=fmt)


def confident(entry, options: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Logits of a confident right prediction made from random logits ``x``: each label's
    logit 14 ahead (``1 - p_y`` near 1e-6 at a few classes; labels of any integer dtype,
    an ignored or out-of-range one read as class 0), or masks' logits at +-9 on their
    right side (plus ``0.1 x``)."""
    if entry.target_kind(options) == "labels":
        hard = valid_labels(t, in_classes(t, x.shape[1]))
        return x + 14.0 * torch.nn.functional.one_hot(hard, x.shape[1]).movedim(-1, 1)
    return torch.where(t.reshape(x.shape) > 0.5, 9.0, -9.0) + 0.1 * x


def reads_probabilities(entry) -> bool:
    """Losses that read a floating (or bool) target of the logits' shape as class
    probabilities."""
    return entry.reference.__module__.endswith(".region") or entry.name in (
        "cross_entropy",
        "ce_dice",
        "cldice",
        "hausdorff_er",
    )


def light_options(entry, variant=0) -> dict:
    """Option set ``variant`` of ``entry`` with its ``light`` options (fewer inner loops)
    and ``ignore_index=255`` where the loss takes one: what the generic tests call."""
    return entry.ignoring({**entry.variants[variant], **entry.light})


def light_case(entry, shape, gen, dtype=torch.float32, ignore_frac=0.0, device=DEVICE):
    """``(options, logits, target)``: :func:`light_options` of the first option set and
    inputs of ``shape`` (its class count fitted to the loss) drawn from ``gen``."""
    options = light_options(entry)
    shape = entry.fit_shape(shape, options)
    x, t = make_inputs(entry, shape, options, dtype, gen, ignore_frac, device=device)
    return options, x, t


def run_with_grad(fn, x, t, options, gout_seed=None):
    """(loss, dloss/dx) as float64, with a random grad_output in [0.5, 1.5)."""
    x = x.detach().requires_grad_(True)
    loss = fn(x, t, **options)
    g = torch.Generator().manual_seed(gout_seed or 0)
    gout = (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(loss.device)
    (grad,) = torch.autograd.grad(loss, x, grad_outputs=gout.to(loss.dtype))
    return loss.double(), grad.double()


def apart_from_predictions(entry, x, t, options, gap=1e-3):
    """A soft target whose entries lie at least ``gap`` from the predicted probabilities
    (or at 0 or 1; the input itself with ``from_logits=False``): with ``soft_label``,
    ``dI/dp`` jumps where ``p = g``, so an entry within fp32 rounding of its prediction
    could fall on one side in the kernel and on the other in the float64 reference.
    Entries within ``gap`` move to ``p -+ gap`` on their side; ignored entries (outside
    [0, 1]) stay."""
    masks = entry.target_kind(options) == "masks"
    p = x.detach().double()
    if options.get("from_logits", True):
        p = torch.sigmoid(p) if masks else torch.softmax(p, dim=1)
    g = t.double().reshape(p.shape)
    near = (g - p).abs() < gap
    moved = torch.where(g < p, p - gap, p + gap).clamp(0.0, 1.0)
    g = torch.where(near & (g >= 0) & (g <= 1), moved, g)
    return g.reshape(t.shape).to(t.dtype)


def lovasz_errors(entry, x, t, per_image, ignore_index=255):
    """The rows of errors the reference sorts (float64), ignored entries dropped."""
    x = x.double().cpu()
    t = t.cpu()
    if entry.name == "lovasz_hinge":
        t = t.reshape(x.shape)
        e = 1 - x * (2 * t - 1)
        valid = t != ignore_index
        rows = x.shape[0] if per_image else 1
        e, valid = e.reshape(rows, -1), valid.reshape(rows, -1)
    else:
        p = torch.softmax(x, 1).flatten(2)
        y = t.flatten(1)
        fg = (y.unsqueeze(1) == torch.arange(x.shape[1]).view(1, -1, 1)).double()
        e = (fg - p).abs().transpose(0, 1).flatten(1)  # [C, B * N] pooled
        valid = (y != ignore_index).unsqueeze(0).expand(x.shape[1], -1, -1).flatten(1)
        if per_image:
            e = (fg - p).abs().flatten(0, 1)
            valid = (y != ignore_index).repeat_interleave(x.shape[1], 0)
    return [row[v] for row, v in zip(e, valid, strict=True)]


def separated(s: torch.Tensor) -> bool:
    """Neighbours differ by more than 1e-5 relative (fp32 errors sort as float64 ones)."""
    scale = torch.maximum(s[1:].abs(), s[:-1].abs())
    return bool((s.diff() > 1e-5 * scale + 1e-12).all())


def _moved(x, b, c, s, step):
    """``x`` with the logits at image ``b``, class ``c``, flat pixel ``s`` (indices or index
    tensors) moved by ``step``, rounded to ``x``'s dtype, in ``x``'s layout."""
    shift = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    shift.view(*x.shape[:2], -1)[b, c, s] = step
    return x.detach().clone().copy_(x.double() + shift)


def ordered_as_float64(entry, x, options, step=0.05, rounds=20):
    """Logits whose float32 probabilities (as the kernel computes them: torch's softmax or
    sigmoid of ``x.float()``) order each (image, class) map exactly as the float64 ones
    do. The soft skeletons route the gradient to the neighbour that wins a min or max,
    so two probabilities that float32 rounds into the other order (or into a tie) would
    send it elsewhere in the kernel than in the float64 reference. A logit of each such
    pair moves by ``step`` until none is left. Probabilities as the input
    (``from_logits=False``) come back as they are: the kernel reads the same numbers."""
    if not options.get("from_logits", True):
        return x
    masks = entry.target_kind(options) == "masks"
    for _ in range(rounds):
        z = x.detach()
        p32 = (torch.sigmoid(z.float()) if masks else torch.softmax(z.float(), 1)).double()
        p64 = torch.sigmoid(z.double()) if masks else torch.softmax(z.double(), 1)
        order = p64.flatten(2).argsort(dim=-1, stable=True)
        a64, a32 = (p.flatten(2).gather(-1, order) for p in (p64, p32))
        up64, up32 = a64[..., 1:] > a64[..., :-1], a32[..., 1:] > a32[..., :-1]
        tie64, tie32 = a64[..., 1:] == a64[..., :-1], a32[..., 1:] == a32[..., :-1]
        bad = (up64 & ~up32) | (tie64 & ~tie32)
        if not bad.any():
            return x
        b, c, k = bad.nonzero(as_tuple=True)
        x = _moved(x, b, c, order[..., 1:][b, c, k], step)
    raise AssertionError(f"float32 still orders the probabilities otherwise after {rounds} moves")


def apart_at_topk(entry, x, t, options, margin=1e-5, step=0.1, rounds=50):
    """Logits whose float64 per-pixel cross-entropies leave a gap of at least ``margin``
    (relative) between the n-th and the (n+1)-th largest, or tie there exactly. A top-k
    loss keeps the n largest (weighted, smoothed), OHEM the valid pixels less sure than
    the one ``min_kept`` places from the least sure (unweighted; n = ``min_kept``, at
    most the valid count less 1), so a pixel within float32 rounding of the n-th could
    be kept by the kernel and dropped by the reference, with another gradient, or with
    none kept where float32 ties the two (OHEM's 'mean' is then NaN). The pixel just
    outside moves (its label's logit by ``step``, doubled while the logits' dtype rounds
    the move away) until the gap is there. Other losses' logits come back as they are."""
    params = inspect.signature(entry.reference).parameters
    if "k" in params:
        names = ("weight", "ignore_index", "label_smoothing")
        kw = {name: options.get(name, params[name].default) for name in names}
        n = ref.pixelwise.topk_count(t.numel(), options.get("k", params["k"].default))
    elif "min_kept" in params:
        kw = {"ignore_index": options.get("ignore_index", params["ignore_index"].default)}
        valid = int(not_ignored(t, kw["ignore_index"]).sum())
        n = min(options.get("min_kept", params["min_kept"].default), valid - 1)
    else:
        return x
    for _ in range(rounds):
        ce = ref.cross_entropy(x.detach().double(), t, reduction="none", **kw).flatten()
        top, order = ce.sort(descending=True, stable=True)
        if n <= 0 or n == ce.numel() or top[n - 1] == top[n]:
            return x
        if top[n - 1] - top[n] > margin * top[n - 1]:
            return x
        b, s = divmod(int(order[n]), ce.numel() // x.shape[0])
        moved = _moved(x, b, int(t.flatten()[order[n]]), s, step)
        step = 2 * step if torch.equal(moved, x) else step
        x = moved
    raise AssertionError(f"the top {n} losses still end within {margin:g} after {rounds} moves")


def assert_matches(entry, x, t, options, dtype, seed, kernel=None):
    """The kernel's loss and gradient equal the reference's on float64 logits, within the
    fixed tolerances or :func:`float32_slack`, whichever is larger (with
    ``soft_label``, the target kept apart from the predictions first; for a loss whose
    gradient follows the order of the probabilities, logits ordered alike in float32; for
    a top-k or OHEM loss, a gap at the k-th largest pixel loss)."""
    if options.get("soft_label") and t.is_floating_point():
        t = apart_from_predictions(entry, x, t, options)
    if entry.order_sensitive:
        x = ordered_as_float64(entry, x, options)
    x = apart_at_topk(entry, x, t, options)
    loss, grad = run_with_grad(kernel or entry.kernel, x, t, options, seed)
    with SoftmaxTerms(x.shape, x.device) as terms:
        ref_loss, ref_grad = run_with_grad(entry.reference, x.double(), t, options, seed)
    assert loss.shape == ref_loss.shape
    slack = float32_slack(entry, x, t, options, seed, ref_loss, ref_grad)
    assert_within(loss, ref_loss, 2e-5, loss_floor(entry, x), slack[0])
    # an entry past the dtype's range (fp16: 65504) is inf in that dtype, whoever computes
    # it: the kernel must give the reference's signed inf there, and match elsewhere
    rounded = ref_grad.to(dtype).double()
    over = ref_grad.isfinite() & rounded.isinf()
    assert torch.equal(grad[over], rounded[over])
    grad, ref_grad = grad.masked_fill(over, 0.0), ref_grad.masked_fill(over, 0.0)
    # where the float64 gradient is 0 (or about as small), the kernel's may hold the
    # rounding residue of terms that cancel (the erosion loss's min-max scaling, where one
    # pixel survives an erosion): under 16 float32 eps of the loss, in the interpreter
    # (0.09 eps at logits of +-1e4, where float32 torch left 0.5 eps) as compiled, where
    # the division is not correctly rounded (on an H200: 1.1 eps with FMA contraction,
    # 10.8 eps without it, which the erosion kernels have asked for since)
    loss_top = float(ref_loss.detach().abs().nan_to_num().max()) if ref_loss.numel() else 0.0
    residue = 16 * torch.finfo(torch.float32).eps * loss_top
    # the absolute floor scales with each image's largest gradient entry, so an image
    # whose gradient is small beside its neighbours' is held to its own digits
    scale = image_scale(ref_grad)
    tol = GRAD_TOL[dtype]
    # Gradients below the dtype's normal range are stored as subnormals; the fused path
    # rounds twice (gradient in the forward, then times grad_output): allow two quanta.
    quantum = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    atol = (tol * scale).clamp_min(2 * quantum)
    slack_grad = slack[1].masked_fill(over, 0.0) + residue * (ref_grad.abs() <= residue)
    slack_grad = slack_grad + SOFTMAX_ULPS * torch.finfo(torch.float32).eps * terms.size
    assert_within(grad, ref_grad, tol, atol, slack_grad)
    return loss, grad


# float32 ulps of the terms that cancel in a softmax's backward (see SoftmaxTerms)
SOFTMAX_ULPS = 16


class SoftmaxTerms(TorchFunctionMode):
    """Sizes the terms that cancel where a gradient passes back through a softmax over the
    classes: ``dL/dx_c = p_c (g_c - sum_k p_k g_k)`` with ``g = dL/dp``. ``g`` comes from
    image-wide sums (a region loss's), so any float32 computation knows it to a few ulps
    of ``|g|``, and an entry whose float64 value is far below ``p_c (|g_c| +
    sum_k p_k |g_k|)`` carries rounding noise of that size, at entries that differ from
    one float32 computation to another. ``size``: that sum, of ``shape``, added up over
    the softmaxes over dim 1 of logits of ``shape`` (or of their ``[B, C, pixels]`` view)
    that the recorded computation's backward passes through; zeros where none."""

    _SOFTMAX = (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax)

    def __init__(self, shape: torch.Size, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.shape = shape
        self.size = torch.zeros(shape, dtype=torch.float64, device=device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if func in self._SOFTMAX and dim == 1 and out.requires_grad and self._logits(out):
            out.register_hook(functools.partial(self._record, out.detach()))
        return out

    def _logits(self, p: torch.Tensor) -> bool:
        return p.shape[:2] == self.shape[:2] and p.numel() == self.size.numel()

    def _record(self, p: torch.Tensor, g: torch.Tensor) -> None:
        mixed = (p * g.abs()).sum(dim=1, keepdim=True)
        size = p * (g.abs() + mixed)
        self.size = self.size + size.reshape(self.shape)


def loss_floor(entry, x: torch.Tensor) -> float:
    """The absolute floor of a loss's check: about 8 float32 ulps of 1 for a loss that
    cancels near 0 (1 - Dice); for a sum of non-negative terms (``entry.nonneg_terms``),
    whose small values keep their digits in float32, only the float64 reference's own
    rounding, whose log-sum-exp subtracts logits as large as the largest finite one (a
    pixel loss of 1e-21 is 0 there)."""
    if not entry.nonneg_terms:
        return 1e-6
    x = x.detach()  # a scalar of a tensor that requires grad warns
    finite = x[x.isfinite()].abs()
    top = float(finite.max()) if finite.numel() else 0.0
    return 64 * torch.finfo(torch.float64).eps * max(1.0, top)


def float32_slack(entry, x, t, options, seed, ref_loss, ref_grad, factor=10.0):
    """``factor`` times how far the reference itself lands from float64 when it runs in
    float32, per entry of the loss and of the gradient. Some inputs are so
    ill-conditioned that any float32 computation, torch's as the kernel's, misses float64
    by more than the fixed tolerances (the erosion loss's min-max scaling of an erosion
    that barely passes 1/2; the MCC of an image with one counted pixel, where float32
    torch misses a gradient entry by 6e-5 relative): the kernel may miss by as much as
    float32 torch does, not more.

    For a ``kinked`` loss on logits the float32 reference also runs at their float32
    neighbours (one ulp up, one down) and the largest miss counts: how near float32 lands
    at an ill-conditioned entry is luck, and one run can land far nearer than its
    rounding allows (an erosion's ``d - 1/2`` at d = 0.5009, where one ulp of d is 7e-5
    of the entry: float32 torch missed by 1e-6 of it, the kernel by 7e-5)."""
    xf = x.float()
    inputs = [xf]
    if entry.kinked and options.get("from_logits", True):
        inputs += [torch.nextafter(xf, torch.full_like(xf, v)) for v in (math.inf, -math.inf)]
    slack_loss = torch.zeros_like(ref_loss.detach())
    slack_grad = torch.zeros_like(ref_grad)
    for x32 in inputs:
        loss32, grad32 = run_with_grad(entry.reference, x32, t, options, seed)
        slack_loss = torch.maximum(slack_loss, (loss32 - ref_loss).abs().nan_to_num(0.0))
        slack_grad = torch.maximum(slack_grad, (grad32 - ref_grad).abs().nan_to_num(0.0))
    return factor * slack_loss, factor * slack_grad


def image_scale(grad: torch.Tensor) -> torch.Tensor:
    """Each image's largest gradient magnitude (at least 1e-30), shaped to broadcast over
    ``grad``: the scale of the tests' absolute gradient floors."""
    scale = grad.abs().flatten(1).amax(1).clamp_min(1e-30)
    return scale.view(-1, *[1] * (grad.dim() - 1))


def assert_within(got, want, rtol: float, atol: float | torch.Tensor, slack=0.0) -> None:
    """``|got - want| <= atol + rtol |want| + slack`` entry by entry (NaN where both are,
    an inf where both are that inf)."""
    slack = torch.zeros_like(want) + slack
    same = (got.isnan() & want.isnan()) | (got == want)
    err = (got - want).abs().masked_fill(same, 0.0)
    bound = atol + rtol * want.abs().nan_to_num(0.0) + slack
    bad = ~(err <= bound)
    if bad.any():
        k = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} entries off; first at flat index {k}: got "
            f"{float(got.flatten()[k])}, want {float(want.flatten()[k])}, allowed "
            f"{float(bound.flatten()[k])} (float32 slack {float(slack.flatten()[k])})"
        )


def assert_identity(entry, x, t, options, dtype):
    """For a tie-order-dependent gradient (``entry.grad_weights``): the kernel's loss
    equals the reference's, and so does the loss its gradient implies (summed over units
    for reduction='none'), whatever order it gave tied errors."""
    x = x.detach().requires_grad_(True)
    loss = entry.kernel(x, t, **options)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    expected = entry.reference(x.detach().double(), t, **options)
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=1e-6)
    assert entry.grad_identity_err(x.detach(), t, grad, expected, options) <= GRAD_TOL[dtype]


def _gloo_rank(rank: int, worker: Callable, init_file: str, seed: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        worker(rank, 2, seed)
    finally:
        dist.destroy_process_group()


def on_two_gloo_ranks(worker: Callable[[int, int, int], None], seed: int) -> None:
    """Run ``worker(rank, world, seed)`` in two CPU processes of one gloo process group
    (``worker`` must be a module-level function: the processes import it)."""
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init")
        mp.spawn(_gloo_rank, args=(worker, init, seed), nprocs=2, join=True)
