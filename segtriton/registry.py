"""One entry per loss: the tests and the benchmark iterate over ``LOSSES``.

Adding a loss means a reference function, a kernel (once written) and one entry here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from segtriton import kernels as ker
from segtriton import reference as ref

KINK_SHARE = 1e-4  # share of gradient entries a kinked loss may have off its tolerance


@dataclass(frozen=True)
class LossEntry:
    """What the tests and the benchmark need to know about one loss.

    target: 'labels' (integer ``[B, *S]``) or 'masks' (``[B, C, *S]`` in {0, 1}).
    variants: option sets the tests exercise (the first is the default configuration).
    soft: masks may be soft (values in (0, 1)).
    kernel: the Triton implementation, once it exists.
    traffic: byte-model family: 'pixel' (one pass: read logits and target once, write the
      gradient once) or 'region' (two passes: logits and target read twice).
    reductions: the ``reduction`` values the loss accepts.
    grad_weights: for a gradient that is a subgradient depending on how tied errors are
      ordered (Lovasz), ``f(logits, target, **options)``: float64 weights ``w`` with
      ``<w, grad> = loss`` for every order. The gradient equals the reference's on
      tie-free inputs only; elsewhere the tests and the benchmark check it through
      :meth:`grad_identity_err`.
    order_sensitive: the gradient goes where a comparison of probabilities points (the
      min and max of clDice's skeletons), so the tests keep float32 and float64 in one
      order (an input with ties in one precision only has two different gradients).
    kinked: the gradient jumps where a threshold or an extreme inside the loss changes
      side (the erosion Hausdorff loss: ``d_k = 1/2``, a map's max or min moving to
      another pixel; the top-k and OHEM cross-entropies: a pixel at the k-th largest
      loss or at the OHEM threshold, kept or dropped). Over a large input a float32
      provider and the float64 reference fall on two sides at a few isolated pixels,
      so the benchmark gates such a gradient on the share of its entries off by more
      than the tolerance (:data:`KINK_SHARE`), not on the largest error.
    nonneg_terms: the loss is a weighted mean or sum of non-negative per-element terms,
      so nothing in it cancels and its float32 value keeps its relative precision however
      small it is (a confident prediction's CE near 1e-6, its focal loss near 1e-12):
      the tests hold it to a relative tolerance, with an absolute floor only at the
      float64 reference's own rounding, and run it at confident predictions
      (``tests/test_kernels_saturated.py``). A loss such as ``1 - Dice`` or the signed
      boundary loss loses digits near 0 when formed from float32 sums or terms that
      cancel (the float32 reference's ``1 - Dice`` does; the region kernels sum the false
      positives and negatives whole instead).
    magnitude: for a loss that is a difference of terms which can cancel (Combo),
      ``f(logits, target, **options)``: the float64 size of its terms. The benchmark
      measures the loss's error relative to the larger of that and ``|loss|``: near a
      cancellation, the float32 rounding of the terms is large relative to the loss.
    light: options that shorten the loss's inner loop (clDice's and HD-ER's erosions),
      which the generic tests that run many launches or large inputs in Triton's
      interpreter (infinite logits, layouts, the fp16 loss scale) merge into theirs; the
      loss's own tests run its defaults.
    """

    name: str
    reference: Callable[..., torch.Tensor]
    target: Literal["labels", "masks"]
    variants: tuple[dict, ...] = ({},)
    soft: bool = False
    kernel: Callable[..., torch.Tensor] | None = None
    min_classes: int = 1
    traffic: Literal["pixel", "region"] = "region"
    reductions: tuple[str, ...] = ("mean", "sum", "none")
    grad_weights: Callable[..., torch.Tensor] | None = None
    order_sensitive: bool = False
    kinked: bool = False
    nonneg_terms: bool = False
    magnitude: Callable[..., torch.Tensor] | None = None
    light: dict = field(default_factory=dict)

    def triton(self) -> Callable[..., torch.Tensor]:
        """The Triton implementation, or a NotImplementedError naming a loss without one."""
        if self.kernel is None:
            raise NotImplementedError(f"no Triton kernel for {self.name} yet")
        return self.kernel

    def is_binary(self, options: dict) -> bool:
        """Whether the loss needs C = 1 under ``options``: its mode, given or the reference's
        default, is 'binary'."""
        mode = inspect.signature(self.reference).parameters.get("mode")
        return options.get("mode", None if mode is None else mode.default) == "binary"

    def fit_classes(self, C: int, options: dict | None = None) -> int:
        """A class count this loss takes under ``options``: 1 in binary mode, else C."""
        return 1 if self.is_binary(options or {}) else C

    def fit_shape(self, shape: Sequence[int], options: dict | None = None) -> tuple[int, ...]:
        """``shape`` with the class count of :meth:`fit_classes`."""
        B, C, *spatial = (int(v) for v in shape)
        return (B, self.fit_classes(C, options), *spatial)

    def grad_identity_err(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        grad: torch.Tensor,
        loss: torch.Tensor,
        options: dict,
    ) -> float:
        """How far ``<w, grad>`` (``w`` from :attr:`grad_weights`) is from ``loss`` (the
        float64 reference, summed over units), relative to ``|loss|``, beyond what rounding
        ``grad`` to its dtype explains: ``sum |w| ulp(grad)``. A low-precision gradient far
        below its dtype's normal range (fp16 over millions of pixels without loss scaling)
        has few bits left, and that shows as a large allowance, not as an error."""
        if self.grad_weights is None:
            raise ValueError(f"{self.name} has no grad_weights: its gradient is unique")
        w = self.grad_weights(logits, target, **options)
        g = grad.detach().double()
        finfo = torch.finfo(grad.dtype)
        ulp = torch.ldexp(torch.full_like(g, finfo.eps), torch.frexp(g)[1] - 1)
        ulp = torch.where(g.abs() >= finfo.tiny, ulp, finfo.tiny * finfo.eps)
        total = loss.detach().double().sum()
        miss = ((w * g).sum() - total).abs() - (w.abs() * ulp).sum()
        return float(miss.clamp_min(0) / total.abs().clamp_min(1e-30))

    def takes(self, option: str) -> bool:
        """Whether the loss has the option ``option`` (a parameter of its reference)."""
        return option in inspect.signature(self.reference).parameters

    def ignoring(self, options: dict, ignore_index: float = 255) -> dict:
        """``options`` with ``ignore_index`` where the loss has that option (cross-entropy
        against probabilities has none)."""
        if self.takes("ignore_index"):
            return {**options, "ignore_index": ignore_index}
        return dict(options)

    def target_kind(self, options: dict) -> str:
        """'labels' or 'masks' for this entry under ``options`` (mode may switch it)."""
        if options.get("mode") in ("binary", "multilabel"):
            return "masks"
        return self.target


_REGION_VARIANTS: tuple[dict[str, object], ...] = (
    {},
    {"scope": "image", "absent": "exclude", "smooth_nr": 1e-5, "smooth_dr": 1e-5},
    {"absent": "zero", "weight": [0.5, 1.0, 2.0]},
    {"mode": "multilabel", "scope": "image"},
)

_SCALAR = ("mean", "sum")  # compound losses return one scalar

LOSSES: tuple[LossEntry, ...] = (
    LossEntry(
        "cross_entropy",
        ref.cross_entropy,
        "labels",
        ({}, {"label_smoothing": 0.1, "weight": [0.5, 1.0, 2.0]}, {"avg_non_ignore": False}),
        kernel=ker.cross_entropy,
        traffic="pixel",
        nonneg_terms=True,
    ),
    LossEntry(
        "cross_entropy_probs",
        ref.cross_entropy_probs,
        "masks",
        ({}, {"label_smoothing": 0.1, "weight": [0.5, 1.0, 2.0]}),
        soft=True,
        kernel=ker.cross_entropy_probs,
        traffic="pixel",
        nonneg_terms=True,
    ),
    LossEntry(
        "ohem_cross_entropy",
        ref.ohem_cross_entropy,
        "labels",
        ({}, {"thresh": 0.9, "min_kept": 5}, {"thresh": 0.5, "min_kept": 0, "weight": [0.5, 1, 2]}),
        kernel=ker.ohem_cross_entropy,
        traffic="pixel",
        nonneg_terms=True,
        kinked=True,
    ),
    LossEntry(
        "recall_cross_entropy",
        ref.recall_cross_entropy,
        "labels",
        kernel=ker.recall_cross_entropy,
        traffic="pixel",
        nonneg_terms=True,
    ),
    LossEntry(
        "topk_cross_entropy",
        ref.topk_cross_entropy,
        "labels",
        ({}, {"k": 30.0, "label_smoothing": 0.1}, {"k": 100, "weight": [0.5, 1, 2]}, {"k": 1}),
        kernel=ker.topk_cross_entropy,
        traffic="pixel",
        nonneg_terms=True,
        kinked=True,
    ),
    LossEntry(
        "bce",
        ref.binary_cross_entropy_with_logits,
        "masks",
        (
            {},
            {"pos_weight": [2.0, 1.0, 0.5], "weight": [1.0, 0.5, 2.0]},
            {"label_smoothing": 0.1, "pos_weight": [0.5, 1.0, 3.0]},
        ),
        soft=True,
        kernel=ker.binary_cross_entropy_with_logits,
        traffic="pixel",
        nonneg_terms=True,
    ),
    LossEntry(
        "sigmoid_focal",
        ref.sigmoid_focal_loss,
        "masks",
        (
            {"mode": "multilabel"},
            {"mode": "multilabel", "alpha": None, "gamma": 0.5},
            {"mode": "multilabel", "alpha": [0.1, 0.5, 0.9], "weight": [0.5, 1.0, 2.0]},
        ),
        soft=True,
        kernel=ker.sigmoid_focal_loss,
        traffic="pixel",
        nonneg_terms=True,
    ),
    LossEntry(
        "sigmoid_focal_ovr",
        ref.sigmoid_focal_loss,
        "labels",
        ({"mode": "multiclass"},),
        kernel=ker.sigmoid_focal_loss,
        traffic="pixel",
        nonneg_terms=True,
    ),
    LossEntry(
        "softmax_focal",
        ref.softmax_focal_loss,
        "labels",
        ({}, {"alpha": [0.25, 0.5, 0.75], "gamma": 0.5}),
        kernel=ker.softmax_focal_loss,
        traffic="pixel",
        nonneg_terms=True,
    ),
    LossEntry(
        "dice",
        ref.dice_loss,
        "labels",
        (
            *_REGION_VARIANTS,
            {"squared": True, "log_loss": True},
            {"mode": "multilabel", "soft_label": True, "absent": "zero"},
            {"log_cosh": True, "scope": "image"},
            {"from_logits": False},
        ),
        kernel=ker.dice_loss,
    ),
    LossEntry("jaccard", ref.jaccard_loss, "labels", _REGION_VARIANTS, kernel=ker.jaccard_loss),
    LossEntry(
        "tversky",
        ref.tversky_loss,
        "labels",
        (
            {"alpha": 0.3, "beta": 0.7},
            *_REGION_VARIANTS[1:],
            {"from_logits": False, "mode": "multilabel", "soft_label": True},
        ),
        kernel=ker.tversky_loss,
    ),
    LossEntry(
        "focal_tversky",
        ref.focal_tversky_loss,
        "labels",
        ({}, {"gamma": [0.75, 1.0, 2.0], "scope": "image"}, {"gamma_after_mean": True}),
        kernel=ker.focal_tversky_loss,
    ),
    LossEntry(
        "generalized_dice",
        ref.generalized_dice_loss,
        "labels",
        (
            {},
            {"scope": "image", "weight_type": "simple", "absent_weight": "zero"},
            {"weight_type": "uniform", "weight": [0.5, 1.0, 2.0]},
        ),
        kernel=ker.generalized_dice_loss,
    ),
    LossEntry(
        "mcc",
        ref.mcc_loss,
        "labels",
        (
            {},
            {"mode": "multilabel", "scope": "image", "eps": 0.0},
            {"absent": "exclude", "weight": [0.5, 1.0, 2.0], "ignore_index": 255},
            {"from_logits": False, "scope": "image"},
        ),
        kernel=ker.mcc_loss,
    ),
    LossEntry(
        "wasserstein_dice",
        ref.generalized_wasserstein_dice_loss,
        "labels",
        (
            {},
            {"weighting_mode": "GDL"},
            {"dist_matrix": [[0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [2.0, 0.5, 0.0]], "smooth_nr": 0.0},
        ),
        kernel=ker.generalized_wasserstein_dice_loss,
        min_classes=2,
    ),
    LossEntry(
        "ce_dice",
        ref.ce_dice_loss,
        "labels",
        (
            {},
            {
                "lambda_ce": 0.3,
                "scope": "image",
                "label_smoothing": 0.1,
                "weight": [1, 2, 3],
                "include_background": False,
            },
        ),
        kernel=ker.ce_dice_loss,
        reductions=_SCALAR,
    ),
    LossEntry(
        "topk_dice",
        ref.topk_dice_loss,
        "labels",
        (
            {},
            {
                "k": 50.0,
                "lambda_ce": 0.5,
                "scope": "image",
                "label_smoothing": 0.1,
                "include_background": False,
            },
            {"k": 5.0, "weight": [0.0, 1.0, 2.0], "smooth_nr": 1e-5, "smooth_dr": 1e-5},
        ),
        kernel=ker.topk_dice_loss,
        reductions=_SCALAR,
        kinked=True,
    ),
    LossEntry(
        "bce_dice",
        ref.bce_dice_loss,
        "masks",
        ({}, {"pos_weight": [2.0, 1.0, 0.5], "weight": [1.0, 0.5, 2.0], "scope": "image"}),
        soft=True,
        kernel=ker.bce_dice_loss,
        reductions=_SCALAR,
    ),
    LossEntry(
        "focal_dice",
        ref.focal_dice_loss,
        "labels",
        (
            {},
            {"alpha": 0.25},
            {"alpha": [0.25, 0.5, 0.75], "gamma": 0.5},
            {"mode": "multilabel", "alpha": 0.25, "scope": "image"},
            {"mode": "multilabel", "alpha": [0.1, 0.5, 0.9]},
            {"sigmoid_focal": True, "alpha": 0.25, "scope": "image"},
            {"sigmoid_focal": True, "include_background": False, "gamma": 1.5},
        ),
        kernel=ker.focal_dice_loss,
        reductions=_SCALAR,
    ),
    LossEntry(
        "generalized_dice_focal",
        ref.generalized_dice_focal_loss,
        "labels",
        (
            {},
            {"alpha": 0.25, "weight_type": "simple", "scope": "image", "lambda_gdl": 0.5},
            {"mode": "multilabel", "alpha": [0.1, 0.5, 0.9], "absent_weight": "zero"},
            {"sigmoid_focal": True, "scope": "image", "ignore_index": 255},
            {"sigmoid_focal": True, "include_background": False, "absent_weight": "zero"},
        ),
        kernel=ker.generalized_dice_focal_loss,
        reductions=_SCALAR,
    ),
    LossEntry(
        "combo",
        ref.combo_loss,
        "masks",
        ({}, {"alpha": 0.7, "beta": 0.3}),
        soft=True,
        kernel=ker.combo_loss,
        reductions=_SCALAR,
        magnitude=ref.combo_magnitude,
    ),
    LossEntry(
        "lovasz_hinge",
        ref.lovasz_hinge_loss,
        "masks",
        (
            {},
            {"per_image": True},
            {"mode": "multilabel"},
            {"mode": "multilabel", "per_image": True},
        ),
        kernel=ker.lovasz_hinge_loss,
        grad_weights=ref.lovasz_hinge_grad_weights,
    ),
    LossEntry(
        "lovasz_softmax",
        ref.lovasz_softmax_loss,
        "labels",
        (
            {},
            {"per_image": True, "classes": "all"},
            {"classes": [0, 2], "weight": [0.5, 1.0, 2.0]},
            {"per_image": True, "from_logits": False},
        ),
        kernel=ker.lovasz_softmax_loss,
        grad_weights=ref.lovasz_softmax_grad_weights,
    ),
    LossEntry(
        "boundary",
        ref.boundary_loss,
        "labels",
        ({}, {"mode": "multilabel"}, {"classes": [0, 2]}, {"from_logits": False}),
        min_classes=2,
        kernel=ker.boundary_loss,
        traffic="pixel",
    ),
    LossEntry(
        "hausdorff_dt",
        ref.hausdorff_dt_loss,
        "labels",
        (
            {},
            {"mode": "multilabel"},
            {"classes": [0, 2], "alpha": 1.0},
            {"mode": "multilabel", "from_logits": False},
            {"from_logits": False},
        ),
        min_classes=2,
        kernel=ker.hausdorff_dt_loss,
        traffic="pixel",
        nonneg_terms=True,
    ),
    LossEntry(
        "cldice",
        ref.cldice_loss,
        "labels",
        (
            {},
            {"include_background": False, "scope": "batch", "iterations": 1},
            {"mode": "multilabel", "iterations": 0, "smooth_nr": 0.5, "smooth": 1e-3},
            {"mode": "multilabel", "iterations": 1, "from_logits": False},
        ),
        kernel=ker.cldice_loss,
        order_sensitive=True,
        light={"iterations": 1},
    ),
    LossEntry(
        "hausdorff_er",
        ref.hausdorff_er_loss,
        "labels",
        (
            {},
            {"include_background": False, "iterations": 3, "alpha": 1.0},
            {"mode": "multilabel", "iterations": 4, "alpha": 2.5},
            {"iterations": 2, "from_logits": False},
        ),
        kernel=ker.hausdorff_er_loss,
        kinked=True,
        light={"iterations": 2},
    ),
)


def get(name: str) -> LossEntry:
    for entry in LOSSES:
        if entry.name == name:
            return entry
    raise KeyError(f"no loss named {name!r}; known: {[e.name for e in LOSSES]}")


def kernel_names(names: Sequence[str] | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Names of the registry losses with a Triton kernel, then ``extra``, in that order;
    only those in ``names`` when given, where a name that is neither raises ValueError."""
    known = [e.name for e in LOSSES if e.kernel] + list(extra)
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"no Triton kernel in the registry for {unknown}")
    return [n for n in known if not names or n in names]


def fit_variant(options: dict, C: int) -> dict | None:
    """``options`` for C classes, or None where they cannot take C: a per-class vector of
    another length is repeated (``v[c % len(v)]``), so its values stay valid for the
    option; a list of class indices must lie below C and a ``[C, C]`` matrix
    (``dist_matrix``) must already be C x C."""
    fitted = dict(options)
    for key, value in options.items():
        if not isinstance(value, Sequence) or isinstance(value, str):
            continue
        if key == "classes":
            if max(value) >= C:
                return None
        elif isinstance(value[0], Sequence):
            if len(value) != C:
                return None
        elif len(value) != C:
            fitted[key] = [value[c % len(value)] for c in range(C)]
    return fitted


def make_inputs(
    entry: LossEntry,
    shape: Sequence[int],
    options: dict | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    ignore_frac: float = 0.0,
    ignore_index: int = 255,
    label_dtype: torch.dtype = torch.int64,
    soft: bool = False,
    device: str | torch.device = "cpu",
    mask_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(logits, target)`` for ``entry`` under ``options``, logits ``[B, C, *S]``.

    Logits are N(0, 2^2) (with ``from_logits=False`` among the options, their softmax over
    classes in multiclass mode, else their sigmoid); labels uniform over the classes, in
    ``label_dtype``; masks Bernoulli(0.5), or uniform soft values with ``soft=True``, in
    ``mask_dtype`` (float64 by default, for exact checks; the benchmark passes the logits'
    dtype). A fraction ``ignore_frac`` of the pixels (or mask elements) is set to
    ``ignore_index`` (none for a loss without that option: there it would be an invalid
    target value). The numbers are drawn on the generator's device (a CUDA generator draws
    a large case in milliseconds; the CPU takes seconds) and the tensors are then moved to
    ``device``.
    """
    B, C, *spatial = shape
    on = "cpu" if generator is None else generator.device
    logits = 2 * torch.randn(tuple(shape), dtype=torch.float64, generator=generator, device=on)
    labels = entry.target_kind(options or {}) == "labels"
    if not (options or {}).get("from_logits", True):
        logits = torch.softmax(logits, dim=1) if labels else torch.sigmoid(logits)
    logits = logits.to(dtype)
    if labels:
        target = torch.randint(0, C, (B, *spatial), generator=generator, device=on)
    else:
        u = torch.rand(tuple(shape), dtype=torch.float64, generator=generator, device=on)
        target = u if soft else (u < 0.5).to(torch.float64)
    if ignore_frac > 0 and entry.takes("ignore_index"):
        drop = torch.rand(target.shape, generator=generator, device=on) < ignore_frac
        target = target.masked_fill(drop, ignore_index)
    target = target.to(mask_dtype if target.is_floating_point() else label_dtype)
    return logits.to(device), target.to(device)


def minimal_bytes(
    entry: LossEntry,
    shape: Sequence[int],
    dtype: torch.dtype,
    target_dtype: torch.dtype,
    mode: str,
    options: dict | None = None,
) -> int:
    """The fewest bytes a ``mode`` ('fwd', 'bwd', 'fwd+bwd') run must move: logits and
    target read once per pass the loss family needs, and the gradient written once."""
    logits = math.prod(shape) * dtype.itemsize
    B, C, *spatial = shape
    masks = entry.target_kind(options or {}) == "masks"
    target = (math.prod(shape) if masks else B * math.prod(spatial)) * target_dtype.itemsize
    grad = logits
    passes = 1 if entry.traffic == "pixel" else 2
    if mode == "fwd":
        return logits + target
    if mode == "bwd":
        return grad if entry.traffic == "pixel" else logits + target + grad
    return passes * (logits + target) + grad


def confusion_bytes(preds: torch.Tensor, target: torch.Tensor) -> int:
    """The fewest bytes a confusion matrix must move: its predictions (labels, or the
    logits whose argmax it takes) and its targets, each read once."""
    return preds.numel() * preds.element_size() + target.numel() * target.element_size()
