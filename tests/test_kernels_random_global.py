"""Every loss that takes ``process_group`` (the region and compound losses) under option
sets drawn at random, as tests/test_kernels_random_options.py draws them but at scope
'batch', over a batch split unevenly between two gloo processes: each rank's loss with
the group equals the loss of the whole batch in one process, and its gradient is its
slice of that one's, for the kernel and for the reference (float64). The fixed cases of
test_kernels_region.py and test_kernels_compound.py cover some losses under a few
options; these draws reach each of them under its modes, weights, absent-class policies,
ignored pixels, soft masks, layouts and reductions."""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.distributed as dist
from kernel_checks import (
    DEVICE,
    GRAD_TOL,
    KERNELS,
    confident,
    on_two_gloo_ranks,
    run_with_grad,
    to_channels_last,
)
from random_draws import draw_case

from segtriton.registry import make_inputs

DRAWS = int(os.environ.get("SEGTRITON_TEST_GLOBAL_DRAWS", "2"))  # per loss and run
GLOBAL = [e for e in KERNELS if e.takes("process_group")]


def _cases(entry, r: random.Random, seed: int):
    """``(options, x, t, dtype)`` of each drawn case: the whole batch (2 to 4 images, the
    same on both ranks: drawn from one seed)."""
    for draw in range(20 * DRAWS):
        opts, shape, dtype, channels_last, ignore, label_dtype, soft, scale = draw_case(entry, r)
        if entry.takes("scope"):
            opts["scope"] = "batch"
        shape = (r.choice([2, 3, 4]), *shape[1:])
        gen = torch.Generator().manual_seed(seed + draw)
        x, t = make_inputs(entry, shape, opts, dtype, gen, ignore, 255, label_dtype, soft)
        x = confident(entry, opts, x, t).to(dtype) if scale == "confident" else x * scale
        yield opts, (to_channels_last(x) if channels_last else x), t, dtype


def _assert_close(got, want, dtype, what: str) -> None:
    """Loss: 1e-5 relative (1e-6 absolute); gradient: the dtype's tolerance of the
    gradient tests, relative to each entry and to its image's largest (the global sums
    add in another order than the whole batch's); NaN where the whole batch's is."""
    (loss, grad), (whole_loss, whole_grad) = got, want
    torch.testing.assert_close(
        loss.cpu(), whole_loss, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )
    grad = grad.cpu()
    assert torch.equal(grad.isnan(), whole_grad.isnan()), f"{what}: NaN gradients differ"
    grad, whole_grad = grad.nan_to_num(0.0), whole_grad.nan_to_num(0.0)
    tol = GRAD_TOL.get(dtype, 1e-10)
    scale = whole_grad.abs().flatten(1).amax(1).reshape(-1, *[1] * (whole_grad.dim() - 1))
    excess = (grad - whole_grad).abs() - tol * (whole_grad.abs() + scale) - 1e-12
    assert excess.max() <= 0, f"{what}: gradient off by {excess.max():.3g} beyond tolerance"


def _global_worker(rank: int, world: int, seed: int) -> None:
    group = dist.group.WORLD
    for entry in GLOBAL:
        r = random.Random(seed + len(entry.name))
        compared = 0
        for opts, x, t, dtype in _cases(entry, r, seed):
            mine = slice(0, 1) if rank == 0 else slice(1, x.shape[0])  # unequal parts
            try:
                want_ref = run_with_grad(entry.reference, x.double(), t, opts)
            except (TypeError, ValueError):
                continue  # an option set the loss rejects: the random-option test checks it
            what = f"{entry.name} {tuple(x.shape)} {dtype} {opts}"
            got = run_with_grad(
                entry.reference, x[mine].double(), t[mine], {**opts, "process_group": group}
            )
            _assert_close(got, (want_ref[0], want_ref[1][mine]), torch.float64, "reference " + what)
            xd, td = x.to(DEVICE), t.to(DEVICE)
            want = run_with_grad(entry.kernel, xd, td, opts)
            got = run_with_grad(entry.kernel, xd[mine], td[mine], {**opts, "process_group": group})
            _assert_close(got, (want[0].cpu(), want[1].cpu()[mine]), dtype, "kernel " + what)
            compared += 1
            if compared == DRAWS:
                break
        assert compared == DRAWS, f"only {compared} drawn option sets were valid for {entry.name}"


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_random_options_over_the_global_batch(seed):
    on_two_gloo_ranks(_global_worker, seed)
