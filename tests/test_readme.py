"""The README's Python examples run as written (kernels in Triton's interpreter on CPU),
one after another in one namespace, as a reader would paste them. The DDP snippet, which
needs an initialised process group, is left out."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    runnable = [b for b in blocks if "dist." not in b]
    assert len(runnable) >= 2, "the README lost its examples"
    namespace: dict = {}
    for block in runnable:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["surface"]["hd95"].shape == (1, 3)
