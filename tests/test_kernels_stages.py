"""The defaults and the kernel knobs that ``bench/gpu_run.sh lease`` times against them
give the reference's loss and gradient: classes walked one row at a time (the defaults),
tiles of every class (``SEGTRITON_MAX_SINGLE_C=256``, the interpreter's choice in
tests/conftest.py, up to ``SEGTRITON_MAX_TILE=8192`` elements), the pipelined tile loops
(``SEGTRITON_STAGES`` > 1: several pixel tiles per program, prefetched; tails of the
program grid included), classes streamed in chunks of 8 by 256 pixels
(``SEGTRITON_CHUNK=8,256``), the class walks unrolled (``SEGTRITON_UNROLL``), the
gradient-writing walks taking 1 or 8 class rows at once (``SEGTRITON_WRITE_ROWS``) and CE
/ softmax focal and the region passes on labels walking classes where the default holds
each pixel's class column (``SEGTRITON_COLUMN=0``; with it ``SEGTRITON_FLAT=0``, BCE walking
channels_last logits and masks where the default reads them as flat ranges), and those
column tiles 256 pixels wide (``SEGTRITON_COLUMN_PIXELS``: a GPU's default above 4
classes, where Triton's interpreter takes 1024).

They are read when segtriton.kernels is imported, so the cases run in a child process (in
Triton's interpreter where this one uses it, compiled on a GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from kernel_checks import DEVICE, run_with_grad

from segtriton.kernels._tiles import cdiv, next_pow2, pixel_block, program_tile
from segtriton.registry import get

TESTS = Path(__file__).parent

CHILD = r"""
import sys
import conftest  # in Triton's interpreter, the suite's shortcuts
import torch
from kernel_checks import DEVICE, assert_matches
from segtriton.bench.spec import channels_last
from segtriton.kernels import _tiles
from segtriton.registry import fit_variant, get, make_inputs

knobs = (_tiles.STAGES, _tiles.TILES_PER_PROGRAM, _tiles.MAX_TILE)
knobs += (_tiles.MAX_SINGLE_C, *_tiles.CHUNK, *_tiles.UNROLL, _tiles.WRITE_ROWS)
knobs += (_tiles.COLUMN_CLASSES, _tiles.COLUMN_PIXELS, _tiles.FLAT)
assert knobs == tuple(int(v) for v in sys.argv[2:]), knobs
seed = int(sys.argv[1])
# (loss, variant, C, spatial, dtype, reduction, channels_last): spatial sizes that leave
# several programs per launch, the last one with tiles past the end of the grid; masks of
# the logits' shape follow them into channels_last
CASES = [
    ("cross_entropy", 0, 19, (7, 83), torch.bfloat16, "mean", False),
    ("cross_entropy", 1, 3, (23, 61), torch.float32, "none", True),
    ("cross_entropy", 1, 13, (7, 83), torch.float16, "mean", False),
    ("softmax_focal", 1, 4, (23, 61), torch.float32, "none", False),
    ("softmax_focal", 0, 150, (5, 37), torch.float16, "sum", False),
    ("bce", 1, 3, (23, 61), torch.float32, "mean", False),
    ("bce", 0, 3, (23, 61), torch.bfloat16, "sum", True),
    ("sigmoid_focal_ovr", 0, 3, (3, 5, 41), torch.bfloat16, "mean", False),
    ("dice", 3, 3, (23, 61), torch.float32, "mean", False),
    ("dice", 1, 19, (7, 83), torch.bfloat16, "none", True),
    ("generalized_dice", 0, 150, (5, 37), torch.float32, "mean", False),
    ("ce_dice", 1, 3, (3, 5, 41), torch.float32, "mean", False),
    ("cross_entropy_probs", 1, 19, (7, 83), torch.bfloat16, "sum", True),
    ("wasserstein_dice", 0, 3, (23, 61), torch.float16, "none", False),
    ("wasserstein_dice", 1, 19, (7, 83), torch.float32, "mean", True),
]
for k, (name, v, C, spatial, dtype, reduction, cl) in enumerate(CASES):
    entry = get(name)
    options = entry.ignoring({**fit_variant(entry.variants[v], C), "reduction": reduction})
    gen = torch.Generator().manual_seed(seed + k)
    x, t = make_inputs(entry, (3, C, *spatial), options, dtype, gen, 0.2, 255, device=DEVICE)
    if cl:
        x, t = channels_last(x, t)
    assert_matches(entry, x, t, options, dtype, seed + k)
print("checked", len(CASES))
"""


KNOBS = (
    "SEGTRITON_STAGES",
    "SEGTRITON_MAX_TILE",
    "SEGTRITON_MAX_SINGLE_C",
    "SEGTRITON_CHUNK",
    "SEGTRITON_UNROLL",
    "SEGTRITON_WRITE_ROWS",
    "SEGTRITON_COLUMN",
    "SEGTRITON_FLAT",
    "SEGTRITON_HIST_BINS",
)


def _child_env(knobs: dict[str, str]) -> dict[str, str]:
    """This process's environment with the kernel knobs of :data:`KNOBS` set as ``knobs``
    says (the others at their defaults, whatever tests/conftest.py set here), any other
    variable ``knobs`` names (``SEGTRITON_TEST_DRAWS``, ``SEGTRITON_COLUMN_PIXELS``) set too,
    and tests/ on the path."""
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    env.update(knobs, SEGTRITON_TEST_DEFAULT_TILES="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return env


def _child_pytest(*args: str, **env: str) -> str:
    """Runs pytest on ``args`` in a child process under the default tiles, with ``env``
    added to its environment; its stdout."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    out = subprocess.run(
        [*argv, *args], env=_child_env(env), capture_output=True, text=True, cwd=TESTS.parent
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    return out.stdout


_DEFAULTS_ALREADY = pytest.mark.skipif(
    os.environ.get("SEGTRITON_TEST_DEFAULT_TILES") == "1" or torch.cuda.is_available(),
    reason="this run takes the default tiles already",
)


@_DEFAULTS_ALREADY
def test_random_options_under_the_default_tiles():
    """In Triton's interpreter the suite takes whole-class tiles for speed
    (tests/conftest.py); every loss's random option sets run here under the default
    walks over class rows, in a child pytest (on a GPU the whole suite runs them). Two
    drawn sets per loss, not four: at four this child took 190 to 280 s of CI's time."""
    stdout = _child_pytest(str(TESTS / "test_kernels_random_options.py"), SEGTRITON_TEST_DRAWS="2")
    assert " passed" in stdout and "skipped" not in stdout, stdout[-500:]


@_DEFAULTS_ALREADY
def test_region_label_edge_cases_under_the_default_tiles():
    """The region and compound losses' ignore-heavy, all-ignored and bad-label tests,
    every integer label dtype and the confident predictions' loss digits under the default
    walks, where pass 1 takes T, the counted pixels and the bad-label flag once per tile
    (and masks and class probabilities at C = 4 walk class rows) and pass 2 picks
    ``dL/dp`` by the label."""
    tests = [str(TESTS / f"test_kernels_{name}.py") for name in ("region", "compound")]
    keys = "bad_targets or ignore_heavy or any_integer_label or confident_predictions_keep"
    stdout = _child_pytest(*tests, "-k", keys)
    assert " passed" in stdout and " failed" not in stdout, stdout[-500:]


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({}, (1, 1, 2048, 1, 1, 512, 4, 1, 4, 32)),
        (
            {"SEGTRITON_MAX_SINGLE_C": "256", "SEGTRITON_CHUNK": "32,64"},
            (1, 1, 2048, 256, 32, 64, 4, 1, 4, 32),
        ),
        ({"SEGTRITON_STAGES": "3"}, (3, 8, 2048, 1, 1, 512, 4, 1, 4, 32)),
        (
            {"SEGTRITON_MAX_TILE": "8192", "SEGTRITON_MAX_SINGLE_C": "256"},
            (1, 1, 8192, 256, 1, 512, 4, 1, 4, 32),
        ),
        ({"SEGTRITON_CHUNK": "8,256"}, (1, 1, 2048, 1, 8, 256, 4, 1, 4, 32)),
        (
            {"SEGTRITON_UNROLL": "4", "SEGTRITON_CHUNK": "2,256"},
            (1, 1, 2048, 1, 2, 256, 4, 4, 4, 32),
        ),
        ({"SEGTRITON_UNROLL": "1"}, (1, 1, 2048, 1, 1, 512, 1, 1, 4, 32)),
        ({"SEGTRITON_UNROLL": "8,1"}, (1, 1, 2048, 1, 1, 512, 8, 1, 4, 32)),
        ({"SEGTRITON_UNROLL": "4"}, (1, 1, 2048, 1, 1, 512, 4, 4, 4, 32)),
        ({"SEGTRITON_WRITE_ROWS": "1"}, (1, 1, 2048, 1, 1, 512, 4, 1, 1, 32)),
        ({"SEGTRITON_WRITE_ROWS": "8"}, (1, 1, 2048, 1, 1, 512, 4, 1, 8, 32)),
        ({"SEGTRITON_COLUMN": "0", "SEGTRITON_FLAT": "0"}, (1, 1, 2048, 1, 1, 512, 4, 1, 4, 0)),
        ({"SEGTRITON_COLUMN_PIXELS": "256"}, (1, 1, 2048, 1, 1, 512, 4, 1, 4, 32)),
    ],
    ids=[
        "defaults",
        "whole_class_tiles",
        "stages3",
        "tile8192",
        "streamed8x256",
        "unroll4",
        "unroll1",
        "unroll8",
        "unroll4_rows",
        "rows1",
        "rows8",
        "walks",
        "column256",
    ],
)
def test_kernel_knobs_match_the_reference(knobs, expected, seed):
    # the column tiles' width passes to the child as this process has it (conftest.py)
    pixels = knobs.get("SEGTRITON_COLUMN_PIXELS", os.environ.get("SEGTRITON_COLUMN_PIXELS", "0"))
    expected = (*expected, int(pixels), int(knobs.get("SEGTRITON_FLAT", "1")))
    env = _child_env(knobs)
    argv = [sys.executable, "-c", CHILD, str(seed), *map(str, expected)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checked 15" in out.stdout


@triton.jit
def _tile_map_kernel(img_ptr, live_ptr, n_blocks, n_pblocks, S, TILES: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    for i in tl.range(0, TILES):
        b, offs_p, pmask = program_tile(pid, i, n_blocks, n_pblocks, S, TILES, 16)
        slot = pid * TILES + i
        tl.store(img_ptr + slot, b)
        tl.store(live_ptr + slot, tl.sum(pmask.to(tl.int32), axis=0))


def test_program_tiles_cover_the_grid_once_and_stay_in_its_images():
    """Every tile of the ``B * n_pblocks`` grid is one program's once, with its own pixels
    live; tiles past the end keep an image index below B (per-image loads such as the
    region gradient's coefficients are not masked) and no live pixel."""
    B, S, TILES = 3, 70, 8  # 5 tiles of 16 pixels per image (the last one 6), 15 in all
    n_pblocks = triton.cdiv(S, 16)
    n_blocks = B * n_pblocks
    programs = triton.cdiv(n_blocks, TILES)
    img = torch.full((programs * TILES,), -1, dtype=torch.int64, device=DEVICE)
    live = torch.full_like(img, -1)
    _tile_map_kernel[(programs,)](img, live, n_blocks, n_pblocks, S, TILES=TILES)
    img, live = img.cpu(), live.cpu()
    expected_live = [16] * (n_pblocks - 1) + [S - 16 * (n_pblocks - 1)]
    assert live[:n_blocks].tolist() == expected_live * B
    assert img[:n_blocks].tolist() == [b for b in range(B) for _ in range(n_pblocks)]
    assert (live[n_blocks:] == 0).all() and (img[n_blocks:] == B - 1).all()


def test_host_grid_helpers_agree_with_triton():
    """``cdiv`` and ``next_pow2`` replace Triton's constexpr functions on the host."""
    for n in [*range(1, 2100), 2**31 - 1, 2**31, 2**40 + 3]:
        assert next_pow2(n) == triton.next_power_of_2(n), n
        for b in (1, 3, 16, 1024, 4096):
            assert cdiv(n, b) == triton.cdiv(n, b), (n, b)


@triton.jit
def _image_offset_kernel(out_ptr, n_pblocks, stride):
    pid = tl.program_id(0)
    b, _, _ = pixel_block(pid, n_pblocks, 1, 16)
    tl.store(out_ptr + pid, b * stride)


def test_image_offsets_do_not_wrap_past_2_31():
    """``b * stride_b`` of an image stride under 2^31 (int32 on the kernel's side) but a
    product past it: the image index is int64, so the offset does not wrap."""
    stride = 2**30 + 1
    out = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    _image_offset_kernel[(4,)](out, 1, stride)
    assert out.cpu().tolist() == [b * stride for b in range(4)]


@triton.jit
def _pixel_offsets_kernel(out_ptr, n_pblocks, S, VEC: tl.constexpr):
    pid = tl.program_id(0)
    b, offs_p, pmask = pixel_block(pid, n_pblocks, S, 64, VEC)
    tl.store(out_ptr + pid * 64 + tl.arange(0, 64), tl.where(pmask, b * S + offs_p, -1))


@pytest.mark.parametrize("vec", [1, 2, 4, 8])
def test_pixel_offsets_in_runs_are_the_plain_offsets(vec):
    """``pixel_block`` with VEC > 1 (the offsets written as runs of VEC for the column
    tiles' layout, ``_tiles.runs_of``) addresses the same pixels, masked alike."""
    B, S = 2, 150  # 3 tiles of 64 pixels per image, the last one 22
    n_pblocks = cdiv(S, 64)
    out = torch.empty(B * n_pblocks * 64, dtype=torch.int64, device=DEVICE)
    _pixel_offsets_kernel[(B * n_pblocks,)](out, n_pblocks, S, VEC=vec)
    expected = torch.arange(n_pblocks * 64).repeat(B)
    expected = torch.where(
        expected < S, expected + S * torch.arange(B).repeat_interleave(n_pblocks * 64), -1
    )
    assert out.cpu().tolist() == expected.tolist()


def test_interpreter_helper_shortcut_changes_nothing(gen, monkeypatch):
    """tests/conftest.py lets the kernels' ``@triton.jit`` helpers skip the interpreter's
    second patch of triton.language; with that patch (the interpreter's own helper call),
    Dice's loss and gradient on the walks and on the column tiles are bitwise the same."""
    import conftest

    if not conftest.SKIPPED_LANG_PATCHES:
        pytest.skip("the kernels are compiled here: no interpreter patch to skip")
    from triton.runtime.interpreter import GridExecutor, InterpretedFunction

    entry = get("dice")
    x = torch.randn(2, 5, 7, 9, generator=gen)
    t = torch.randint(0, 5, (2, 7, 9), generator=gen)
    cases = [(x, t), (x[:, :, :, ::2], t[:, :, ::2])]  # column tiles; a strided view walks

    def run():
        return [run_with_grad(entry.kernel, a, b, {}) for a, b in cases]

    before = InterpretedFunction.__call__.shortcuts
    fast = run()
    assert InterpretedFunction.__call__.shortcuts > before
    monkeypatch.setattr(InterpretedFunction, "__call__", InterpretedFunction.__call__.slow)
    monkeypatch.setattr(GridExecutor, "__call__", GridExecutor.__call__.slow)
    for got, want in zip(run(), fast, strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
