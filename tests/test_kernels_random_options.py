"""Every loss under option sets drawn at random each run (on top of the registry's fixed
variants): the options named in its signature, a class count (up to 300, past the
256 where classes are streamed, except for the per-class map losses), spatial shape, dtype,
memory format, label dtype, ignored fraction, soft masks and a logit scale (times 1, 4
or 16: confident and saturated predictions, where digits are lost first) or a confident
right prediction (``kernel_checks.confident``: where float32 loses ``1 - p``). The kernel
must match the float64 reference (loss and gradient; for the Lovasz losses, whose random
inputs have ties, the loss and the loss their gradient implies), or reject what the
reference rejects."""

from __future__ import annotations

import os
import random

import pytest
import torch
from kernel_checks import (
    DEVICE,
    KERNELS,
    assert_identity,
    assert_matches,
    to_channels_last,
)
from random_draws import case_inputs, draw_case

from segtriton.reference._common import in_classes, valid_labels

# option sets compared per loss and run; tests/test_kernels_stages.py's child run under the
# default tiles (class walks, minutes in the interpreter) compares 2
DRAWS = int(os.environ.get("SEGTRITON_TEST_DRAWS", "4"))
ATTEMPTS = max(40, 10 * DRAWS)  # draws to find them in (some sets are invalid for a loss)


def _reads_probabilities(entry, opts: dict) -> bool:
    """Whether a class-probability target of the logits' shape may replace the labels: the
    multiclass region losses, CE + Dice, clDice and the erosion Hausdorff loss."""
    multiclass = entry.target_kind(opts) == "labels" and opts.get("mode") in (None, "multiclass")
    region = entry.reference.__module__.endswith(".region") or entry.name in (
        "ce_dice",
        "cldice",
        "hausdorff_er",
    )
    return multiclass and region


def _probabilities(labels, shape, gen, one_hot: bool):
    """Class probabilities ``shape`` on the labels' device: the one-hot of ``labels``
    (ignored pixels read as class 0), or a random soft distribution per pixel."""
    C = shape[1]
    if one_hot:
        hard = valid_labels(labels, in_classes(labels, C))
        return torch.nn.functional.one_hot(hard, C).movedim(-1, 1).double()
    soft = torch.softmax(2 * torch.randn(shape, generator=gen, dtype=torch.float64), dim=1)
    return soft.to(labels.device)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_random_options_match_reference(entry, seed):
    """DRAWS option sets the reference accepts are compared; on the way, every drawn set it
    rejects must be rejected by the kernel too."""
    r = random.Random(seed)
    compared = 0
    for draw in range(ATTEMPTS):
        case = draw_case(entry, r)
        opts, shape, dtype, channels_last, ignore, _, _, scale = case
        gen = torch.Generator().manual_seed(seed + draw)
        x, t = case_inputs(entry, case, gen, device=DEVICE)
        if _reads_probabilities(entry, opts) and r.random() < 0.3:
            t = _probabilities(t, shape, gen, one_hot=r.random() < 0.5)
            opts.pop("ignore_index", None)
        if channels_last:
            x = to_channels_last(x)
        try:
            entry.reference(x.double(), t, **opts)
        except (TypeError, ValueError):
            with pytest.raises((TypeError, ValueError)):
                entry.kernel(x, t, **opts)
            continue
        case = f"draw {draw}: {shape} {dtype} x{scale} cl={channels_last} ignore={ignore} {opts}"
        try:
            if entry.grad_weights:  # random inputs have ties: no unique gradient
                assert_identity(entry, x, t, opts, dtype)
            else:
                assert_matches(entry, x, t, opts, dtype, seed + draw)
        except AssertionError as exc:
            raise AssertionError(case) from exc
        compared += 1
        if compared == DRAWS:
            return
    pytest.fail(f"only {compared} of {ATTEMPTS} drawn option sets were valid for {entry.name}")
