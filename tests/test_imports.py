"""What importing segtriton costs: the package leaves torch._dynamo (1.5 s on this
project's CPU machine) and scipy.ndimage (0.2 s) to their first use, so ``import
segtriton.kernels`` took 2.0 s where it had taken 3.8 (torch alone: 1.3 s). Every
process that runs a loss pays it, `segtriton` commands and this suite's child
processes too."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import segtriton.bench.runner, segtriton.kernels, segtriton.reference, segtriton.registry
print(sorted(m for m in ("torch._dynamo", "scipy.ndimage") if m in sys.modules))
"""


def test_import_leaves_dynamo_and_scipy_ndimage_for_later():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
