"""The ``segtriton`` command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
from kernel_checks import env_without_interpreter

import segtriton
from segtriton.bench.spec import load_spec
from segtriton.kernels import interpreter_problem
from segtriton.kernels._ops import MIN_TORCH, check_torch


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segtriton.bench.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
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
    mode = "compiled" if torch.cuda.is_available() else "Triton interpreter"
    assert f"smoke kernel on {'cuda' if torch.cuda.is_available() else 'cpu'} ({mode}): ok" in (
        out.stdout
    )
    torch_line = next(line for line in out.stdout.splitlines() if line.startswith("torch "))
    assert torch_line.split() == ["torch", torch.__version__]


def test_traffic_refuses_compiled_triton(monkeypatch, capsys):
    from segtriton.bench.cli import main

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["traffic"]) == 2
    assert "segtriton traffic runs in the interpreter" in capsys.readouterr().err


def test_compile_takes_channels_last_only_with_targets(monkeypatch, capsys):
    from segtriton.bench.cli import main

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["compile", "--channels-last"]) == 2
    assert "--channels-last goes with --targets" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--confusion", "19", "--targets"], "--confusion goes alone"),
        (["--confusion", "19,x"], "--confusion needs class counts, got 19,x"),
        (["--confusion", "0"], "--confusion needs class counts, got 0"),
        (["--confusion", "19", "--dtypes", "bf16"], "--confusion goes alone"),
        (["--targets", "--dtypes", "bf16"], "--dtypes does not go with --targets"),
        (["--quick", "--dtypes", "bf16,f8"], "--dtypes takes fp32,fp16,bf16, got f8"),
    ],
)
def test_compile_refuses_a_bad_case_list(args, message, monkeypatch, capsys):
    from segtriton.bench.cli import main

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["compile", *args]) == 2
    assert message in capsys.readouterr().err


def test_compare_allows_five_percent_by_default(tmp_path, capsys):
    from bench_rows import bench_row, save_run

    from segtriton.bench.cli import main

    runs = [
        save_run(tmp_path / name, [bench_row("dice", "triton", "2x3x4x4", "fp32", ms)])
        for name, ms in (("a", 1.0), ("b", 1.04), ("c", 1.06))
    ]
    assert main(["compare", str(runs[0]), str(runs[1])]) == 0
    chart = tmp_path / "compare.png"
    assert main(["compare", str(runs[0]), str(runs[2]), "--chart", str(chart)]) == 1
    assert "1 regression(s): slower by more than 5%" in capsys.readouterr().out
    assert chart.stat().st_size > 0


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


@pytest.mark.parametrize(
    ("version", "refused"),
    [("2.4.1", True), ("2.6.0+cu124", True), ("2.7.0a0+git5f3e1a2", False), ("2.14.1+cu130", False),
     ("3.0.0", False)],
)  # fmt: skip
def test_kernels_refuse_a_torch_older_than_their_custom_ops_need(version, refused):
    """torch 2.4 and 2.6 failed inside torch.library's infer_schema at import; the check
    names the version instead (a 2.7 nightly passes)."""
    if refused:
        found = f"needs torch >= 2.7.*found torch {re.escape(version)}"
        with pytest.raises(ImportError, match=found):
            check_torch(version)
    else:
        check_torch(version)


def test_pyproject_admits_no_torch_the_kernels_refuse():
    """pip keeps out every torch the import check refuses (the requirement may ask for
    more: the oldest release the tests have passed under)."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', pyproject)
    assert floor is not None and tuple(map(int, floor.groups())) >= MIN_TORCH


def test_a_sweep_runs_the_kernels_where_it_can_without_being_told(tmp_path):
    """`segtriton sweep` on a fresh shell: without a GPU it picks Triton's interpreter
    itself (TRITON_INTERPRET unset), so the Triton rows are checked, not errors."""
    env = env_without_interpreter()
    args = ["--losses", "cross_entropy", "--providers", "triton", "--reps", "1"]
    out = _run("sweep", *args, "--out", str(tmp_path), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == len(load_spec("quick")["shapes"]), rows  # the default preset
    assert all(row["passed"] for row in rows), rows
    if not torch.cuda.is_available():
        assert {row["timer"] for row in rows} == {"not measured (Triton interpreter)"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs without a GPU")
def test_an_interpreter_sweep_shows_no_numpy_warnings(tmp_path):
    """At the default tile knobs a class walk steps one class at a time from the lowest
    finite float, and its first step overflows to an infinity on purpose; NumPy warns
    about that in the interpreter, and the sweep does not pass those warnings on."""
    env = {k: v for k, v in env_without_interpreter().items() if not k.startswith("SEGTRITON_")}
    spec = tmp_path / "spec.toml"
    spec.write_text('losses = ["dice"]\nproviders = ["triton"]\nshapes = [[1, 150, 2, 8]]\n')
    out = _run("sweep", "--spec", str(spec), "--reps", "1", "--out", str(tmp_path / "run"), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RuntimeWarning" not in out.stderr, out.stderr


USER_SCRIPT = """
import sys
import torch, triton, triton.language as tl
from segtriton import kernels

x = torch.randn(1, 150, 2, 8, requires_grad=True)
y = torch.randint(0, 150, (1, 2, 8))
kernels.dice_loss(x, y).backward()
kernels.lovasz_softmax_loss(x, y).backward()
kernels.cross_entropy(x, y).backward()
print("losses done", file=sys.stderr, flush=True)

@triton.jit
def square(x_ptr):
    v = tl.load(x_ptr)
    tl.store(x_ptr, v * v)

square[(1,)](torch.tensor([1e30]))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs without a GPU")
def test_a_script_running_the_kernels_in_the_interpreter_sees_no_numpy_warnings(tmp_path):
    """Outside pytest's filters: the losses' launches (a class walk's first step overflows
    on purpose) warn about nothing, and a Triton kernel of the script's own still gets
    NumPy's overflow warning."""
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    env = {**env_without_interpreter(), "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-W", "default", str(script)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    losses, done, own = out.stderr.partition("losses done")
    assert done and "RuntimeWarning" not in losses, out.stderr
    assert "RuntimeWarning: overflow encountered" in own, out.stderr


def test_the_default_run_folder_is_named_after_the_device(monkeypatch):
    from segtriton.bench import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert cli._default_out("lease") == Path("results/nvidia-h100-80gb-hbm3/lease")


def test_pytest_benchmark_writes_rows_the_report_reads(tmp_path):
    """`pytest --benchmark` (here the eager CE cases of the quick preset) writes a JSON file
    whose rows carry the case, GB/s and the copy-bandwidth fraction, and `segtriton
    report` charts it."""
    root = Path(__file__).resolve().parent.parent
    result = tmp_path / "bench.json"
    # under pytest-xdist (CI's -n auto) a child pytest that sees the worker's variables
    # turns pytest-benchmark off
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--benchmark", "tests/test_benchmarks.py", "-q",
         "-p", "no:cacheprovider", "-k", "cross_entropy and eager",
         f"--benchmark-json={result}"],
        cwd=root, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    benches = json.loads(result.read_text())["benchmarks"]
    n = len(load_spec("quick")["shapes"])
    assert len(benches) == n
    for bench in benches:
        info = bench["extra_info"]
        assert (info["loss"], info["provider"]) == ("cross_entropy", "eager")
        assert info["pct_of_copy_bw"] > 0 and info["bytes"] > 0
    assert _run("report", str(result)).returncode == 0
    assert f"{n} row(s) come from pytest-benchmark" in (tmp_path / "report.md").read_text()
