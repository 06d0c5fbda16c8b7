"""Every Triton kernel compiles for the H100 (sm_90) with the installed Triton, on a
machine without a GPU: ``segtriton compile --quick`` runs in a subprocess with compiled
Triton (the interpreter accepts programs the compiler rejects, e.g. non-constexpr globals);
and with the GPU image's Triton where ``SEGTRITON_GPU_TRITON_PYTHON`` names a Python that
has it (``.ci/run`` makes one).

It also guards speed: under either Triton no kernel spills registers to local memory
beyond ``SPILL_SLACK`` bytes per thread, in NCHW / NCDHW or channels_last. On a GPU the
other kernel tests compile every kernel for real, so these checks run only where there
is none; the test of the tile-size knob runs everywhere.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from kernel_checks import env_without_interpreter

cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a GPU the kernel tests compile every kernel"
)

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"
# ptxas may park a few registers in local memory by its own heuristics (1-3 store
# instructions, 8-24 bytes seen); tiles too large for the register file spilled 800-3500.
SPILL_SLACK = 32


def jit_kernels() -> set[str]:
    """Names of the ``@triton.jit`` functions named ``*_kernel`` in kernels/ (the smoke
    kernel of ``_runtime.py`` aside)."""
    names = set()
    for path in KERNELS_DIR.glob("*.py"):
        if path.name == "_runtime.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.FunctionDef)
                and node.name.endswith("_kernel")
                and any(ast.unparse(d) == "triton.jit" for d in node.decorator_list)
            ):
                names.add(node.name)
    return names


def build_env() -> dict[str, str]:
    """The environment of a ``segtriton compile`` that builds the kernels a GPU runs:
    compiled Triton and no ``SEGTRITON_*`` variable, so none of the knobs
    tests/conftest.py sets for the interpreter (whole-class tiles, which at C = 150 with a
    sigmoid focal term spill 48 bytes under Triton 3.9; column tiles of 1024 pixels, which
    at C = 19 spill 128); nor the FMA knob, which the command sets itself."""
    env = env_without_interpreter()
    env.pop("TRITON_DEFAULT_FP_FUSION", None)
    return {k: v for k, v in env.items() if not k.startswith("SEGTRITON_")}


# a Python whose Triton is the GPU image's (3.6), over this checkout (.ci/run makes one)
GPU_TRITON_PYTHON = os.environ.get("SEGTRITON_GPU_TRITON_PYTHON")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``segtriton compile --quick`` under the installed Triton: fp32 logits only where
    the GPU image's Triton builds the bf16 cases
    (``test_the_gpu_images_triton_builds_every_case``), so that each dtype is built once
    (either list reaches every kernel); both dtypes where it does not."""
    out = tmp_path_factory.mktemp("sm90")
    cmd = [sys.executable, "-m", "segtriton.bench.cli", "compile", "--quick", "--out", str(out)]
    if GPU_TRITON_PYTHON:
        cmd += ["--dtypes", "fp32"]
    proc = subprocess.run(cmd, env=build_env(), capture_output=True, text=True, timeout=1800)
    return proc, out


@cpu_only
def test_every_case_compiles_within_sm90_limits(compiled):
    proc, out = compiled
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 failed case(s)" in proc.stdout
    assert (out / "compile.md").exists()
    assert "TRITON_DEFAULT_FP_FUSION" not in proc.stderr  # Triton 3.9's warning, pinned


@cpu_only
def test_every_kernel_is_covered(compiled):
    _, out = compiled
    df = pd.read_csv(out / "kernels.csv")
    assert jit_kernels() <= set(df.kernel), jit_kernels() - set(df.kernel)


def spills(out: Path) -> str:
    """The specialisations of a ``segtriton compile --out out`` that spill more than
    ``SPILL_SLACK`` bytes a thread, as a table ('' if none)."""
    df = pd.read_csv(out / "kernels.csv")
    over = df[df.local_bytes > SPILL_SLACK]
    return over[["kernel", "case", "registers", "local_bytes"]].to_string() if len(over) else ""


@cpu_only
def test_no_register_spills(compiled):
    """In NCHW / NCDHW and channels_last alike: under Triton 3.9 the channels_last column
    tiles once put a pixel's classes across the lanes, and focal + Dice's pass 1 spilled
    96 bytes at C = 19 (``_runtime.COLUMN_READ_TRANSPOSED``)."""
    _, out = compiled
    table = spills(out)
    assert not table, table


@pytest.mark.skipif(
    not GPU_TRITON_PYTHON, reason="SEGTRITON_GPU_TRITON_PYTHON names no Python to build with"
)
def test_the_gpu_images_triton_builds_every_case(tmp_path):
    """``segtriton compile --quick --dtypes bf16`` under the GPU image's Triton. Its
    compiler fails on some programs that the installed one builds
    (``_runtime.WALK_LABEL_BUG``: 8- and 16-bit labels, which take turns here as in the
    full list); a GPU run would meet such a failure only for the cases its tests launch.
    One logits dtype each (bf16 here: 718 specialisations, 249 s on a CPU machine like
    CI's; fp32 under the installed Triton 3.9: 716, 252 s, where both dtypes there took
    1213 and 430 s): bf16 loads and stores go through the conversions that fp32 ones
    skip, and the GPU runs this Triton."""
    version = subprocess.run(
        [GPU_TRITON_PYTHON, "-c", "import triton; print(triton.__version__)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert version.stdout.startswith("3.6"), version.stdout + version.stderr
    cmd = [GPU_TRITON_PYTHON, "-m", "segtriton.bench.cli", "compile", "--quick", "--dtypes", "bf16"]
    cmd += ["--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=build_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 failed case(s)" in proc.stdout
    table = spills(tmp_path)
    assert not table, table


def _tile_rule(env_value: str) -> subprocess.CompletedProcess:
    code = (
        "from segtriton.kernels._tiles import MAX_TILE, class_blocks, num_warps_for\n"
        "bc, bp, _ = class_blocks(19)\n"
        "print(MAX_TILE, bc, bp, num_warps_for(bc, bp))"
    )
    env = {**os.environ, "SEGTRITON_MAX_TILE": env_value, "SEGTRITON_MAX_SINGLE_C": "256"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_tile_size_knob():
    """SEGTRITON_MAX_TILE sets the tile of every class (C = 19: 32 x MAX_TILE / 32) and the
    warps follow at 8 elements per thread; anything but a power of two >= 256 is refused."""
    proc = _tile_rule("8192")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["8192", "32", "256", "16"]
    bad = _tile_rule("3000")
    assert bad.returncode != 0 and "SEGTRITON_MAX_TILE must be a power of two" in bad.stderr


@pytest.mark.parametrize(
    ("name", "code", "cases", "bad"),
    [
        (
            "SEGTRITON_STAGES",
            "from segtriton.kernels._tiles import STAGES, TILES_PER_PROGRAM\n"
            "print(STAGES, TILES_PER_PROGRAM)",
            (("1", ["1", "1"]), ("3", ["3", "8"])),
            ("9",),
        ),
        (
            "SEGTRITON_UNROLL",
            "from segtriton.kernels._tiles import UNROLL, WALK_UNROLL\n"
            "print(*UNROLL, WALK_UNROLL.value)",
            (("1", ["1", "1", "None"]), ("4", ["4", "4", "4"]), ("8,1", ["8", "1", "None"])),
            ("0", "8,0", "4,1,2", "x"),
        ),
    ],
    ids=["stages", "unroll"],
)
def test_integer_knobs(name, code, cases, bad):
    """SEGTRITON_STAGES > 1 turns on the pipelined loops (8 tiles per program), 1 keeps one
    tile per program; SEGTRITON_UNROLL sets every class walk's unroll factor, or with
    "A,B" the CE / softmax focal walks' and the others' (1 leaves the loops plain: no
    unroll attribute; unset, 4 and 1). Both take 1 to 8 and refuse other values by name."""

    def run(value: str) -> subprocess.CompletedProcess:
        env = {**os.environ, name: value}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)

    for value, expected in cases:
        proc = run(value)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == expected
    for value in bad:
        proc = run(value)
        assert proc.returncode != 0 and f"{name} must be 1 to 8" in proc.stderr, value


def test_write_rows_knob():
    """SEGTRITON_WRITE_ROWS sets the class rows a gradient-writing walk loads at once (4
    unset) for contiguous pixels, 1 where the logits or the gradient are not; it takes 1,
    2, 4 or 8 and refuses other values by name."""
    code = (
        "from segtriton.kernels._tiles import WRITE_ROWS, write_rows\n"
        "print(WRITE_ROWS, write_rows(1, 1), write_rows(1, 19), write_rows(19, 1))"
    )

    def run(value: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "SEGTRITON_WRITE_ROWS"}
        if value is not None:
            env["SEGTRITON_WRITE_ROWS"] = value
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)

    for value, expected in ((None, "4 4 1 1"), ("1", "1 1 1 1"), ("8", "8 8 1 1")):
        proc = run(value)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == expected.split()
    for value in ("0", "3", "16", "x"):
        proc = run(value)
        assert proc.returncode != 0, value
        assert "SEGTRITON_WRITE_ROWS must be 1, 2, 4 or 8" in proc.stderr, value


def test_flat_knob():
    """SEGTRITON_FLAT=0 keeps BCE / sigmoid focal on their class walks where channels_last
    logits and masks could go as flat ranges (1, unset, lets them); other values are
    refused by name."""
    code = (
        "import torch\n"
        "from segtriton.kernels._tiles import flat_layout\n"
        "x = torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)\n"
        "print(flat_layout(x, x))"
    )

    def run(value: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "SEGTRITON_FLAT"}
        env.update({} if value is None else {"SEGTRITON_FLAT": value})
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)

    for value, expected in ((None, "True"), ("1", "True"), ("0", "False")):
        proc = run(value)
        assert proc.stdout.split() == [expected], proc.stderr
    bad = run("2")
    assert bad.returncode != 0 and "SEGTRITON_FLAT must be 0 to 1" in bad.stderr


def test_streamed_class_knobs():
    """SEGTRITON_MAX_SINGLE_C sets the most classes one tile holds (default 1), SEGTRITON_CHUNK
    the streamed chunk (default one class by 512 pixels, at least 16 pixels); malformed
    values are refused by name."""
    code = (
        "from segtriton.kernels._tiles import CHUNK, MAX_SINGLE_C, class_blocks\n"
        "print(MAX_SINGLE_C, *CHUNK, *class_blocks(3))"
    )

    def run(**knobs: str) -> subprocess.CompletedProcess:
        env = {**os.environ, **knobs}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)

    defaults = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SEGTRITON_MAX_SINGLE_C", "SEGTRITON_CHUNK")
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], env=defaults, capture_output=True, text=True
    )
    assert proc.stdout.split() == ["1", "1", "512", "1", "512", "False"], proc.stderr
    proc = run(SEGTRITON_MAX_SINGLE_C="2", SEGTRITON_CHUNK="8,512")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "8", "512", "8", "512", "False"]
    assert run(SEGTRITON_CHUNK="4,8").stdout.split()[1:3] == ["4", "16"]
    for knobs, message in (
        ({"SEGTRITON_CHUNK": "6,64"}, "SEGTRITON_CHUNK must be two powers of two"),
        ({"SEGTRITON_CHUNK": "64"}, "SEGTRITON_CHUNK must be two powers of two"),
        ({"SEGTRITON_MAX_SINGLE_C": "0"}, "SEGTRITON_MAX_SINGLE_C must be 1 to 256"),
    ):
        bad = run(**knobs)
        assert bad.returncode != 0 and message in bad.stderr


def test_column_tile_knobs():
    """SEGTRITON_COLUMN sets the most classes of a column tile (32 unset, half that with
    label smoothing, 0 never), SEGTRITON_COLUMN_PIXELS its width (unset: 4 warps of 32
    threads, 4 pixels a thread up to 4 classes, else 2, and 1 on channels_last; a power of
    two from 64 to 2048 sets the pixels, and the warps follow, one at least and 32 at
    most); other values are refused by name. Printed: the two knobs, then each tile's
    (pixels, warps) at C = 3 and 19 (NCHW, then with smoothing), then C = 3 and 19
    channels_last, or None where the classes do not fit or the layout is neither."""
    code = (
        "import torch\n"
        "from segtriton.kernels._tiles import COLUMN_CLASSES, COLUMN_PIXELS, column_tiles\n"
        "def tile(C, smooth=False, strides=None):\n"
        "    t = column_tiles(torch.empty(1, C, 8, 8), smooth, *(strides or (64, 1)))\n"
        "    return 'None' if t is None else f'{t[5][1]}/{t[7]}'\n"
        "print(COLUMN_CLASSES, COLUMN_PIXELS, tile(3), tile(19), tile(19, True),\n"
        "      tile(3, strides=(1, 3)), tile(19, strides=(1, 19)), tile(19, strides=(2, 38)))"
    )
    knobs = ("SEGTRITON_COLUMN", "SEGTRITON_COLUMN_PIXELS")

    def run(**values: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in knobs}
        return subprocess.run(
            [sys.executable, "-c", code], env={**env, **values}, capture_output=True, text=True
        )

    for values, expected in (
        ({}, "32 0 512/4 256/4 None 128/4 128/4 None"),
        ({"SEGTRITON_COLUMN": "0"}, "0 0 None None None None None None"),
        (
            {"SEGTRITON_COLUMN": "3", "SEGTRITON_COLUMN_PIXELS": "1024"},
            "3 1024 1024/8 None None 1024/32 None None",
        ),
        ({"SEGTRITON_COLUMN_PIXELS": "64"}, "32 64 128/1 64/1 None 64/2 64/2 None"),
        ({"SEGTRITON_COLUMN_PIXELS": "2048"}, "32 2048 2048/16 2048/32 None 2048/32 2048/32 None"),
    ):
        proc = run(**values)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == expected.split(), values
    for values, message in (
        ({"SEGTRITON_COLUMN_PIXELS": "96"}, "SEGTRITON_COLUMN_PIXELS must be 0 or a power of two"),
        ({"SEGTRITON_COLUMN_PIXELS": "4096"}, "SEGTRITON_COLUMN_PIXELS must be 0 to 2048"),
    ):
        bad = run(**values)
        assert bad.returncode != 0 and message in bad.stderr, values


@cpu_only
def test_overhead_times_both_dispatch_paths():
    """``segtriton overhead`` times a loss's host side through the eager path and through
    the custom-op dispatcher (launches compiled for sm_90, not run), in microseconds, at
    the shape each loss takes (a binary loss gets C = 1): the median and the fastest
    call of each, then the eager path's median with the launches made no-ops."""
    env = env_without_interpreter()
    cmd = [sys.executable, "-m", "segtriton.bench.cli", "overhead"]
    cmd += ["--losses", "cross_entropy,dice,lovasz_hinge", "--calls", "5", "--shape", "2,3,8,8"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [r[:2] for r in rows] == [
        ["cross_entropy", "2x3x8x8"], ["dice", "2x3x8x8"], ["lovasz_hinge", "2x1x8x8"]
    ]  # fmt: skip
    for r in rows:  # microseconds: a launch alone costs more than 5, no call a second
        median, op_median, fastest, op_fastest, bare = (float(v.strip("()")) for v in r[2:])
        assert 5 < median < 1e6 and 5 < op_median < 1e6
        assert 5 < fastest <= median and 5 < op_fastest <= op_median
        assert 0 < bare < 1e6
