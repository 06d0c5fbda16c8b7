"""`segtriton compile`'s arithmetic and report: resident warps per SM by the occupancy
calculator's rules, the per-kernel summary, and compile.md's spill and failure sections."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from segtriton.bench import aot


def _kernel(name="k", registers=32, warps=4, shared=0, local=0, case="c"):
    return aot.CompiledKernel(name, case, "x:*bf16", warps, registers, local, shared)


@pytest.mark.parametrize(
    ("registers", "warps", "shared", "arch", "blocks"),
    [
        (128, 4, 0, 90, 4),  # 4 KiB registers per warp: 16 warps
        (40, 8, 0, 90, 6),  # 40 x 32 = 1280, a multiple of 256: 51 warps, 6 blocks of 8
        (41, 8, 0, 90, 5),  # 1312 rounds up to 1536: 42 warps, 5 blocks
        (16, 1, 0, 90, 32),  # the block limit
        (16, 4, 0, 86, 12),  # sm_86: 48 warps
        (32, 4, 100 * 1024, 90, 2),  # shared memory, 1 KiB reserved per block
        (32, 4, 100 * 1024, 80, 1),
        (32, 4, 116_000, 90, 1),  # two would fit without the reserved KiB
    ],
)
def test_blocks_per_sm_follow_the_occupancy_calculator(registers, warps, shared, arch, blocks):
    assert aot.blocks_per_sm(_kernel(registers=registers, warps=warps, shared=shared), arch) == (
        blocks
    )


def test_the_summary_takes_each_kernels_worst_specialisation():
    rows = [
        _kernel("a", registers=40, warps=8, local=0, case="one"),
        _kernel("a", registers=128, warps=4, local=16, case="two"),
        _kernel("b", registers=32, shared=4096, case="one"),
    ]
    summary = aot.summarize(aot.frame(rows, 90)).set_index("kernel")
    a = summary.loc["a"]
    assert (a.specialisations, a.max_registers, a.max_local_bytes, a.spilling) == (2, 128, 16, 1)
    assert a.min_warps_per_sm == 16  # 128 registers at 4 warps, against 48 for the first
    assert summary.loc["b", "max_shared_bytes"] == 4096


def test_the_report_lists_spills_and_failures(tmp_path):
    rows = [_kernel("a", registers=255, local=64, case="dice 2x3x9x13"), _kernel("b")]
    path = aot.write_report(rows, [("ce 2x1x9x13", "CompilationError: boom\nmore")], tmp_path,
                            90, "segtriton compile")  # fmt: skip
    text = path.read_text()
    assert "2 specialisations compiled, 1 case(s) failed." in text
    assert "## Spilling specialisations" in text and "dice 2x3x9x13" in text
    assert "- ce 2x1x9x13: `CompilationError: boom`" in text
    assert (tmp_path / "kernels.csv").read_text().count("\n") == 3


_COMPILE_ONE = """
import dataclasses, json, torch
from segtriton.bench import aot
case = aot.CompileCase("cross_entropy", {}, (2, 3, 9, 13), torch.bfloat16, torch.int64, False)
with aot.compile_only(90) as rows:
    aot.run_case(case)
print(json.dumps([dataclasses.asdict(r) for r in rows]))
"""


def test_kernels_compile_for_sm90_on_any_machine():
    """`segtriton compile`'s mechanism, in a process without the interpreter: a loss's
    forward and backward launches build sm_90 binaries whose resources are read back."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_ONE], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert "_softmax_loss_kernel" in {r["kernel"] for r in rows}
    assert all(r["registers"] > 0 and r["num_warps"] >= 1 for r in rows), rows
