"""The ``segtriton`` command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import triton

import segtriton
from segtriton.kernels import interpreter_problem


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segtriton.bench.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_version():
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"segtriton {segtriton.__version__}"


def test_sweep_help_names_every_preset():
    from segtriton.bench.spec import PRESETS

    out = _run("sweep", "--help")
    assert out.returncode == 0, out.stderr
    assert [name for name in PRESETS if name not in out.stdout] == []


def test_check_reports_environment_and_runs_a_kernel():
    out = _run("check")
    assert out.returncode == 0, out.stdout + out.stderr
    for key in ("torch", "triton", "cuda_available", "triton_interpret", "peer:monai"):
        assert key in out.stdout
    assert "smoke kernel" in out.stdout and ": ok" in out.stdout


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "broken"),
    [("3.6.0", "2.4.1", True), ("3.7.0", "2.4.1", False), ("3.6.0", "2.3.5", False)],
)
def test_interpreter_problem_names_the_incompatible_versions(
    monkeypatch, triton_version, numpy_version, broken
):
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(np, "__version__", numpy_version)
    problem = interpreter_problem()
    assert (problem is not None) == broken
    if broken:
        assert "triton>=3.7" in problem and numpy_version in problem
