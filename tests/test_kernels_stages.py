"""The pipelined tile loops (``SEGTRITON_STAGES`` > 1: several pixel tiles per program,
prefetched) give the reference's loss and gradient, tails of the program grid included.

``SEGTRITON_STAGES`` is read when segtriton.kernels is imported, so the cases run in a
child process (in Triton's interpreter where this one uses it, compiled on a GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys
import torch
from kernel_checks import DEVICE, assert_matches, to_channels_last
from segtriton.kernels import _tiles
from segtriton.registry import get, make_inputs

pipelined = (_tiles.STAGES, _tiles.TILES_PER_PROGRAM)
assert pipelined == (3, 8), pipelined
seed = int(sys.argv[1])
# (loss, variant, C, spatial, dtype, reduction, channels_last): spatial sizes that leave
# several programs per launch, the last one with tiles past the end of the grid
CASES = [
    ("cross_entropy", 0, 19, (7, 83), torch.bfloat16, "mean", False),
    ("cross_entropy", 1, 3, (23, 61), torch.float32, "none", True),
    ("softmax_focal", 0, 150, (5, 37), torch.float16, "sum", False),
    ("bce", 1, 3, (23, 61), torch.float32, "mean", False),
    ("sigmoid_focal_ovr", 0, 3, (3, 5, 41), torch.bfloat16, "mean", False),
    ("dice", 3, 3, (23, 61), torch.float32, "mean", False),
    ("dice", 1, 19, (7, 83), torch.bfloat16, "none", True),
    ("generalized_dice", 0, 150, (5, 37), torch.float32, "mean", False),
    ("ce_dice", 1, 3, (3, 5, 41), torch.float32, "mean", False),
]
for k, (name, v, C, spatial, dtype, reduction, cl) in enumerate(CASES):
    entry = get(name)
    options = {**entry.variants[v], "reduction": reduction, "ignore_index": 255}
    gen = torch.Generator().manual_seed(seed + k)
    x, t = make_inputs(entry, (3, C, *spatial), options, dtype, gen, 0.2, 255, device=DEVICE)
    if cl:
        x = to_channels_last(x)
    assert_matches(entry, x, t, options, dtype, seed + k)
print("checked", len(CASES))
"""


def test_pipelined_tile_loops_match_the_reference(seed):
    tests = Path(__file__).parent
    env = {
        **os.environ,
        "SEGTRITON_STAGES": "3",
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(seed)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checked 9" in out.stdout
