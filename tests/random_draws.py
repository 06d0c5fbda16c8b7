"""Random option sets of a loss, drawn from its signature (shared by the random-option
tests)."""

from __future__ import annotations

import inspect
import random

import torch
from kernel_checks import LABELS_WITH_255, confident

from segtriton.registry import make_inputs

_FIXED = {"logits", "target", "reduction", "validate", "process_group", "dist_map"}
# C = 300 takes the streamed-class paths (past 256 classes); the losses that build a
# distance map or skeleton of every class take minutes at that C in the interpreter
_MAPS_EVERY_CLASS = (".boundary", ".cldice", ".hausdorff_er")


def _vector(r: random.Random, C: int) -> list[float]:
    return [round(r.uniform(0.2, 2.0), 3) for _ in range(C)]


def _units(r: random.Random, C: int) -> list[float]:
    return [round(r.uniform(0.0, 1.0), 3) for _ in range(C)]


def _distances(r: random.Random, C: int) -> list[list[float]]:
    """A ``[C, C]`` class distance matrix: 0 on the diagonal, not symmetric."""
    return [[0.0 if i == j else round(r.uniform(0.1, 3.0), 3) for j in range(C)] for i in range(C)]


def _draw(name: str, r: random.Random, C: int, nd: int) -> object:
    """A value for option ``name`` (None: leave the default). Values may be invalid for a
    given loss (an alpha above 1 for a sigmoid loss): the reference then rejects them."""
    unit = round(r.uniform(0.0, 1.0), 3)
    choices = {
        "mode": lambda: r.choice(["multiclass", "multilabel", "binary"]),
        "weight": lambda: r.choice([None, _vector(r, C)]),
        "pos_weight": lambda: r.choice([None, _vector(r, C)]),
        "alpha": lambda: r.choice([None, unit, _vector(r, C), _units(r, C)]),
        "beta": lambda: unit,
        "gamma": lambda: r.choice([0.0, 0.5, 1.0, 2.0, _vector(r, C)]),
        "label_smoothing": lambda: r.choice([0.0, 0.1, 0.4]),
        "smooth_nr": lambda: r.choice([0.0, 1e-5, 1.0]),
        "smooth_dr": lambda: r.choice([0.0, 1e-5, 1.0]),
        "smooth": lambda: r.choice([0.0, 1.0]),
        "eps": lambda: r.choice([1e-7, 1e-3]),
        "scope": lambda: r.choice(["batch", "image"]),
        "absent": lambda: r.choice(["include", "exclude", "zero"]),
        "weight_type": lambda: r.choice(["square", "simple", "uniform"]),
        "absent_weight": lambda: r.choice(["max", "zero"]),
        "classes": lambda: r.choice(["present", "all", None, sorted(r.sample(range(C), 1))]),
        "spacing": lambda: r.choice([None, [round(r.uniform(0.5, 2.0), 2) for _ in range(nd)]]),
        "thresh": lambda: r.choice([0.0, 0.3, 0.7, 1.0]),
        "min_kept": lambda: r.choice([0, 1, 7, 100000]),
        "k": lambda: r.choice([0.5, 10.0, 33.3, 100]),
        "weighting_mode": lambda: r.choice(["default", "GDL"]),
        "dist_matrix": lambda: r.choice([None, _distances(r, C)]),
        "iterations": lambda: r.choice([0, 1, 3]),
    }
    if name.startswith("lambda_"):
        return r.choice([0.0, 0.3, 1.0, 2.0])
    flags = (
        "avg_non_ignore",
        "squared",
        "log_loss",
        "per_image",
        "gamma_after_mean",
        "sigmoid_focal",
        "soft_label",
        "log_cosh",
        "from_logits",
    )
    if name in (*flags, "include_background"):
        return r.random() < 0.5
    if name == "ignore_index":
        return r.choice([None, 255])
    return choices[name]()


def draw_case(entry, r: random.Random):
    """(options, shape, dtype, channels_last, ignored fraction, label dtype, soft, logit
    scale or ``"confident"``)."""
    spatial = r.choice([(5, 7), (1, 13), (3, 4, 5), (9, 11)])
    counts = [1, 2, 3, 5, 19]
    if not entry.reference.__module__.endswith(_MAPS_EVERY_CLASS):
        counts.append(300)
    C = max(r.choice(counts), entry.min_classes)
    opts = {}
    for name in inspect.signature(entry.reference).parameters:
        value = None if name in _FIXED else _draw(name, r, C, len(spatial))
        if value is not None:
            opts[name] = value
    if entry.is_binary(opts) and C != 1:
        opts = {k: v for k, v in opts.items() if not isinstance(v, list) or k == "spacing"}
        C = 1
    if entry.name == "mcc" and r.random() < 0.5:
        opts["eps"] = 0.0  # the MCC's zero denominators (a class nowhere or everywhere)
    if isinstance(opts.get("classes"), list):
        opts["classes"] = [c for c in opts["classes"] if c < C] or [0]
    reduction = r.choice(entry.reductions)
    opts["reduction"] = "mean" if opts.get("gamma_after_mean") else reduction
    ignore = r.choice([0.0, 0.3, 0.9, 1.0]) if "ignore_index" in opts else 0.0
    labels = entry.target_kind(opts) == "labels"
    label_dtype = r.choice(LABELS_WITH_255)
    dtype = r.choice([torch.float32, torch.float16, torch.bfloat16])
    shape = (r.choice([1, 2, 3]), C, *spatial)
    soft = entry.soft and not labels and r.random() < 0.5
    # logits times a power of 2 (exact in every dtype); probabilities stay as drawn, and
    # so do the logits of a loss whose gradient follows the order of its probabilities,
    # which saturated ones tie in float32 and not in float64 (clDice's min and max)
    scaled = opts.get("from_logits", True) and not entry.order_sensitive
    # a right prediction, but not for the squared region forms (F + M = sum (p - g)^2
    # cancels to about eps / (1 - p) of itself there: test_kernels_region holds them to
    # 1e-3) nor the Lovasz losses (the gradient's softmax backward cancels alike, and
    # their check sums it against the loss)
    forms: list[float | str] = [1.0, 1.0, 4.0, 16.0]
    forms += [] if opts.get("squared") or entry.grad_weights else ["confident"]
    scale = r.choice(forms) if scaled else 1.0
    return opts, shape, dtype, r.random() < 0.3, ignore, label_dtype, soft, scale


def case_inputs(entry, case: tuple, gen: torch.Generator, shape=None, device="cpu"):
    """``(logits, target)`` of a :func:`draw_case` case (at its shape, or ``shape``): its
    dtype, label dtype, ignored fraction and soft masks, then its logit scale or confident
    prediction; the caller applies its memory format."""
    opts, drawn, dtype, _, ignore, label_dtype, soft, scale = case
    x, t = make_inputs(
        entry, shape or drawn, opts, dtype, gen, ignore, 255, label_dtype, soft, device=device
    )
    return (confident(entry, opts, x, t).to(dtype) if scale == "confident" else x * scale), t
