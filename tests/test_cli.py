"""The ``segtriton`` command line."""

from __future__ import annotations

import subprocess
import sys

import segtriton


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


def test_check_reports_environment_and_runs_a_kernel():
    out = _run("check")
    assert out.returncode == 0, out.stdout + out.stderr
    for key in ("torch", "triton", "cuda_available", "triton_interpret", "peer:monai"):
        assert key in out.stdout
    assert "smoke kernel" in out.stdout and ": ok" in out.stdout
