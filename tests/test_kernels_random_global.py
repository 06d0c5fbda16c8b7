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
    assert_within,
    image_scale,
    on_two_gloo_ranks,
    run_with_grad,
    to_channels_last,
)
from random_draws import case_inputs, draw_case

DRAWS = int(os.environ.get("SEGTRITON_TEST_GLOBAL_DRAWS", "2"))  # per loss and run
GLOBAL = [e for e in KERNELS if e.takes("process_group")]


def _cases(entry, r: random.Random, seed: int):
    """``(options, x, t, dtype)`` of each drawn case: the whole batch (2 to 4 images, the
    same on both ranks: drawn from one seed)."""
    for draw in range(20 * DRAWS):
        case = draw_case(entry, r)
        opts, shape, dtype, channels_last = case[:4]
        if entry.takes("scope"):
            opts["scope"] = "batch"
        shape = (r.choice([2, 3, 4]), *shape[1:])
        gen = torch.Generator().manual_seed(seed + draw)
        x, t = case_inputs(entry, case, gen, shape)
        yield opts, (to_channels_last(x) if channels_last else x), t, dtype


def _assert_close(got, want, dtype, what: str) -> None:
    """Loss: 1e-5 relative (1e-6 absolute); gradient: the dtype's tolerance of the
    gradient tests, relative to each entry and to its image's largest (the global sums
    add in another order than the whole batch's); NaN where the whole batch's is."""
    (loss, grad), (whole_loss, whole_grad) = got, want
    tol = GRAD_TOL.get(dtype, 1e-10)
    try:
        assert_within(loss.cpu(), whole_loss, 1e-5, 1e-6)
        scale = image_scale(whole_grad.nan_to_num(0.0))
        assert_within(grad.cpu(), whole_grad, tol, tol * scale + 1e-12)
    except AssertionError as exc:
        raise AssertionError(what) from exc


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
