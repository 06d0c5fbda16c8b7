"""`segtriton compile`'s arithmetic and report: resident warps per SM by the occupancy
calculator's rules, the per-kernel summary, and compile.md's spill and failure sections."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from kernel_checks import env_without_interpreter

from segtriton.bench import aot
from segtriton.reference._common import LABEL_DTYPES


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
    env = env_without_interpreter()
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_ONE], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert "_softmax_loss_kernel" in {r["kernel"] for r in rows}
    assert all(r["registers"] > 0 and r["num_warps"] >= 1 for r in rows), rows
    # its per-program loss sum crosses the warps: the PTX syncs them at least once
    assert all(r["barriers"] > 0 for r in rows if r["kernel"] == "_softmax_loss_kernel"), rows


_COMPILE_HD_ER = """
import dataclasses, json, torch
from segtriton.bench import aot
case = aot.CompileCase("hausdorff_er", {"iterations": 2}, (2, 2, 4, 5, 6), torch.float32,
                       torch.int64, False)
with aot.compile_only(90) as rows:
    aot.run_case(case)
print(json.dumps([dataclasses.asdict(r) for r in rows]))
"""


def test_the_erosion_kernels_divide_with_ieee_rounding():
    """The erosion Hausdorff kernels, which keep ties and the ``d_k = 1/2`` threshold as
    float32 torch does, compile with no ``div.full`` or ``div.approx`` (Triton's float32
    ``/`` without ``tl.math.div_rn``) in their PTX."""
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_HD_ER],
        capture_output=True, text=True, timeout=600, env=env_without_interpreter(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    erosion = {"_erosion_level_kernel", "_erosion_grad_kernel"}
    assert erosion <= {r["kernel"] for r in rows}, rows
    assert all(r["approx_divisions"] == 0 for r in rows if r["kernel"] in erosion), rows


def _variant(case: aot.CompileCase, options: dict) -> bool:
    """Whether ``case`` runs the variant ``options`` (its class vectors repeated to the
    case's C, with a reduction added or not)."""
    from segtriton.registry import fit_variant

    extra = {"reduction"} - set(options)
    fitted = fit_variant(options, case.shape[1])
    return {k: v for k, v in case.options.items() if k not in extra} == fitted


def test_compile_cases_cover_every_variant_in_every_layout_and_label_dtype():
    import torch

    from segtriton.registry import LOSSES, fit_variant

    cases = aot.compile_cases()
    seen = {(c.name, repr(c.options)) for c in cases}
    counts = (1, 2, 3, 19, 150, 300, 1000)
    for entry in LOSSES:
        for options in entry.variants:
            fitted = [f for f in (fit_variant(options, C) for C in counts) if f is not None]
            for reduction in entry.reductions if not options.get("gamma_after_mean") else ():
                ran = [(entry.name, repr({**f, "reduction": reduction})) in seen for f in fitted]
                assert any(ran), (entry.name, options, reduction)
            named = [c for c in cases if c.name == entry.name and _variant(c, options)]
            label = f"{entry.name} {options}"
            assert {c.channels_last for c in named} == {False, True}, label
            assert {len(c.shape) for c in named} == {4, 5}, label
            assert {c.dtype for c in named} == {torch.bfloat16, torch.float16, torch.float32}
            if not entry.is_binary(options):
                fits = {C for C in counts if fit_variant(options, C) is not None}
                want = {C for C in fits if entry.min_classes <= C}
                assert {c.shape[1] for c in named} == want, label
            else:
                assert {c.shape[1] for c in named} == {1}, label
    assert {c.label_dtype for c in cases} == set(LABEL_DTYPES) - {torch.int8}
    assert not [c for c in cases if c.shape[1] > 255 and c.label_dtype == torch.uint8]
    assert {c.name for c in cases} >= {"confusion_logits", "confusion_labels", "surface_dice"}
    quick = aot.compile_cases(quick=True)
    assert {c.shape[1] for c in quick if c.name == "cross_entropy"} == {3, 19, 300}
    assert {c.shape[1] for c in quick if c.name == "confusion_logits"} == {3, 19, 59, 150, 300}
    assert {c.dtype for c in quick} == {torch.bfloat16, torch.float32}
    bf16 = aot.compile_cases(quick=True, dtypes=("bf16",))
    assert {c.dtype for c in bf16} == {torch.bfloat16}
    assert len(bf16) == len(quick) // 2
    # with one dtype the layouts still take turns over every loss
    for name in {c.name for c in bf16 if c.name in {e.name for e in LOSSES}}:
        named = [c for c in bf16 if c.name == name]
        if len(named) >= 3:
            assert {c.channels_last for c in named} == {False, True}, name


def test_target_cases_are_the_targets_presets_loss_cases_uninitialised():
    from segtriton.bench.targets import sweep_cases

    cases = aot.target_cases()
    metrics = [(name, [8, 19, 1024, 2048]) for name in ("confusion_labels", "confusion_logits")]
    metrics += [(name, [16, 150, 512, 512]) for name in ("confusion_labels", "confusion_logits")]
    assert [(c.name, list(c.shape)) for c in cases] == [
        (name, list(shape)) for name, shape, _ in sweep_cases() if not name.startswith("lovasz")
    ] + sorted(metrics)
    assert all(c.empty and not c.channels_last for c in cases)
    cl = aot.target_cases(channels_last=True)
    assert [(c.name, c.shape) for c in cl] == [(c.name, c.shape) for c in cases]
    assert all(c.empty and c.channels_last for c in cl)


def test_confusion_cases_build_both_inputs_at_each_class_count():
    cases = aot.confusion_cases([19, 59])
    assert [(c.name, c.shape) for c in cases] == [
        (name, (8, C, 512, 1024))
        for C in (19, 59)
        for name in ("confusion_labels", "confusion_logits")
    ]
    assert all(c.empty and str(c.label_dtype) == "torch.int64" for c in cases)


_COMPILE_CLI = """
import sys, torch
from segtriton.bench import aot, cli
bf16, f32 = torch.bfloat16, torch.float32
aot.compile_cases = lambda quick=False, dtypes=None: [
    aot.CompileCase("dice", {}, (2, 3, 9, 13), bf16, torch.uint8, True),
    aot.CompileCase("confusion_masks", {"mode": "multilabel"}, (2, 3, 9, 13), f32, torch.int64,
                    True),
    aot.CompileCase("confusion_labels", {"per_image": True}, (2, 3, 9, 13), f32, torch.int16,
                    False),
    aot.CompileCase("cross_entropy", {"reduction": "nope"}, (2, 3, 9, 13), bf16, torch.int64,
                    False),
]
print("exit", cli.main(["compile", "--out", sys.argv[1]]))
"""


def test_segtriton_compile_labels_each_kernel_with_its_case_and_reports_failures(tmp_path):
    """The compile command on compiled (not interpreted) Triton: each case's launches carry
    its label, and a case that raises is listed as failed and sets the exit status (the
    real case list, and the overhead command, are tests/test_compile.py's)."""
    import pandas as pd

    env = env_without_interpreter()
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_CLI, str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "exit 1", out.stdout
    df = pd.read_csv(tmp_path / "kernels.csv")
    by_case = df.groupby("case").kernel.apply(set).to_dict()
    assert set(by_case) == {
        "dice 2x3x9x13 bfloat16 labels uint8 channels_last",
        "confusion_masks 2x3x9x13 float32 labels int64 channels_last {'mode': 'multilabel'}",
        "confusion_labels 2x3x9x13 float32 labels int16 {'per_image': True}",
    }, by_case
    assert by_case["dice 2x3x9x13 bfloat16 labels uint8 channels_last"] == {
        "_region_stats_kernel", "_region_finalize_kernel", "_region_grad_kernel"
    }  # fmt: skip
    strided = df[df.kernel.isin(["_region_stats_kernel", "_multilabel_counts_kernel"])]
    # channels_last: the class stride is 1 (specialised away), the pixel stride is not
    assert len(strided) == 2
    assert all(re.search("s[xp]s:", g) and not re.search("s[xp]c:", g) for g in strided.signature)
    report = (tmp_path / "compile.md").read_text()
    assert "1 case(s) failed" in report and "cross_entropy 2x3x9x13" in report
    assert "reduction" in report.split("## Failed cases")[1]


def test_sass_loops_count_the_innermost_loops_that_load():
    """Two walks inside a tile loop, a store-only loop and the closing self-branch: the
    walks are counted (3 and 2 instructions), the tile loop holds them and is not, nor
    are loops without a global load; the other 5 of the 10 instructions lie outside. The
    first walk stores nothing (its one load counts), the second stores before it loads
    (none before the store)."""
    listing = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   MUFU.EX2 R3, R2 ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   STG.E desc[UR4][R4.64], R7 ;
        /*0050*/                   LDG.E R6, desc[UR4][R4.64] ;
        /*0060*/               @P1 BRA `(.L_x_3) 0x40 ;
        /*0070*/                   STG.E desc[UR4][R4.64], R6 ;
        /*0080*/               @P2 BRA 0x70 ;
        /*0090*/               @P3 BRA 0x0 ;
        /*00a0*/                   BRA 0xa0 ;
    """
    assert aot.sass_loops(listing) == ([3, 3], 5, [1, 0])


def test_sass_loops_count_the_loads_before_a_loop_stores():
    """A walk that loads two rows, stores both, then loads again: two loads are ahead of
    its first store, the third is not counted."""
    listing = """
        /*0000*/                   LDG.E.64 R2, desc[UR4][R4.64] ;
        /*0010*/                   LDG.E.64 R6, desc[UR4][R8.64] ;
        /*0020*/                   STG.E.64 desc[UR4][R10.64], R2 ;
        /*0030*/                   STG.E.64 desc[UR4][R12.64], R6 ;
        /*0040*/                   LDG.E.64 R2, desc[UR4][R14.64] ;
        /*0050*/               @P0 BRA 0x0 ;
        /*0060*/                   EXIT ;
    """
    assert aot.sass_loops(listing) == ([6], 1, [2])
