"""The probe's two plain cross-entropy kernels (``bench/probe.py``: class sums as tile
reductions, and as walks over class rows) give torch's loss and gradient, so a GPU run
times the same work both ways; in the interpreter on CPU, compiled on a GPU."""

from __future__ import annotations

import re

import pytest
import torch
from kernel_checks import DEVICE

from segtriton.bench import probe
from segtriton.bench.probe import ce_launch


@pytest.mark.parametrize("C", [1, 3, 19])
@pytest.mark.parametrize(
    ("rows", "block_p", "unroll"), [(False, 16, 1), (True, 16, 1), (True, 32, 4)]
)
def test_plain_ce_kernels_match_torch(C, rows, block_p, unroll, gen):
    x = torch.randn(2, C, 37, generator=gen).to(DEVICE, torch.bfloat16)
    y = torch.randint(0, C, (2, 37), generator=gen).to(DEVICE)
    g = torch.empty_like(x)
    loss = ce_launch(x, y, g, rows, block_p, unroll).sum()
    xd = x.double().requires_grad_(True)
    want = torch.nn.functional.cross_entropy(xd, y, reduction="sum")
    (want_grad,) = torch.autograd.grad(want, xd)
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.double(), want_grad, rtol=1.6e-2, atol=1e-2)


def test_work_and_pattern_stages_run_through(capsys):
    """The probe's ``work`` and ``pattern`` stages at a small shape: every configuration
    runs, is timed and (``work``) gives the loss torch gives, so a GPU call is not lost
    to a bug in the stage."""
    probe.work(1.0, [(1, 3, 40)], DEVICE)
    probe.pattern(1.0, [(1, 3, 40)], DEVICE)
    out = capsys.readouterr().out
    assert "LOSS OFF" not in out
    assert out.count("C=  3 rows") == 8 and out.count("C=  3 tile") == 3
    assert out.count("C=  3 BLOCK_C=") == 15  # 32 x 1024 passes the 16384 elements


def test_host_stage_runs_through(capsys):
    """The probe's ``host`` stage at a small shape: each case prints its host time per
    call, the CPU ops and the Python functions that took it."""
    probe.host([("cross_entropy", (1, 3, 4, 5)), ("ce_dice", (1, 3, 4, 5))], DEVICE, calls=2)
    out = capsys.readouterr().out
    times = re.findall(r"^(cross_entropy|ce_dice) 1x3x4x5: (\d+) us per call$", out, re.M)
    assert [name for name, _ in times] == ["cross_entropy", "ce_dice"], out
    assert all(int(us) > 0 for _, us in times)
    assert len(re.findall(r"^ +[\d.]+ us  x\d+ ", out, re.M)) >= 4, out
    assert out.count("Python functions by own time") == 2 and ".py:" in out, out
