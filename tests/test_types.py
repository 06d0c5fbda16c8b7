"""The package type-checks: ``py.typed`` hands its hints to users' type checkers, so a
hint that disagrees with the code is a defect users meet in their own mypy runs.

mypy cannot follow the ``package-dir`` mapping of an editable install, so the test lays
the package out as it installs (``segtriton/{kernels,reference,bench}``) with symbolic
links in a temporary directory and checks it there with the project's mypy settings.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy comes with the dev extras (CI installs them)")

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("kernels", "reference", "bench")  # package-dir maps segtriton.<name> -> <name>/


def test_package_type_checks(tmp_path):
    pkg = tmp_path / "segtriton"
    pkg.mkdir()
    for f in (ROOT / "segtriton").iterdir():
        if f.suffix in (".py", ".typed"):
            (pkg / f.name).symlink_to(f)
    for name in SUBPACKAGES:
        (pkg / name).symlink_to(ROOT / name, target_is_directory=True)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "-p", "segtriton"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
