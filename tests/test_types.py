"""The package type-checks: ``py.typed`` hands its hints to users' type checkers, so a
hint that disagrees with the code is a defect users meet in their own mypy runs; and the
public functions have hints to hand over.

mypy cannot follow the ``package-dir`` mapping of an editable install, so the test lays
the package out as it installs (``segtriton/{kernels,reference,bench}``) with symbolic
links in a temporary directory and checks it there with the project's mypy settings.
"""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("kernels", "reference", "bench")  # package-dir maps segtriton.<name> -> <name>/


def _public_functions(tree: ast.Module):
    """Public module functions and public methods of public classes (``__init__`` too)."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node.name, node
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and (
                    not f.name.startswith("_") or f.name in ("__init__", "__call__")
                ):
                    yield f"{node.name}.{f.name}", f


def test_public_functions_are_annotated():
    """Every argument and return of the public functions in the public modules (not
    ``_*.py``) has a hint; an unannotated one reads as ``Any`` to users' checkers."""
    missing = []
    for sub in ("segtriton", *SUBPACKAGES):
        for path in sorted((ROOT / sub).glob("*.py")):
            if path.name.startswith("_") and path.name != "__init__.py":
                continue
            for name, f in _public_functions(ast.parse(path.read_text())):
                a = f.args
                args = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
                bare = [x.arg for x in args if x and x.annotation is None]
                bare = [x for x in bare if x not in ("self", "cls")]
                if f.returns is None and f.name != "__init__":
                    bare.append("return")
                if bare:
                    missing.append(f"{sub}/{path.name}:{f.lineno} {name}: {', '.join(bare)}")
    assert not missing, "\n".join(missing)


def test_package_type_checks(tmp_path):
    assert importlib.util.find_spec("mypy"), "mypy comes with the dev extras (CI installs them)"
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
