"""Facts about the environment a run happens in (printed by ``segtriton check``, and
stamped on every result file)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess

import torch

import segtriton
from segtriton.kernels import _tiles, interpreter_enabled

PEERS = ("monai", "kornia", "torchmetrics", "segmentation-models-pytorch")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout the package runs from, ending in '-dirty' where tracked files
    differ from it (uncommitted code is not stamped as the commit), or None outside a git
    checkout or without git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        changed = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--"], cwd=here, capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if not commit:
        return None
    return commit + ("-dirty" if changed.returncode == 1 else "")


def environment() -> dict[str, object]:
    """GPU, driver, library versions, interpreter mode and git commit, as a flat dict."""
    info: dict[str, object] = {
        "segtriton": segtriton.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda_available": torch.cuda.is_available(),
        "triton_interpret": interpreter_enabled(),
        "git_commit": _git_commit(),
        "max_tile": _tiles.MAX_TILE,  # SEGTRITON_MAX_TILE
        "stages": _tiles.STAGES,  # SEGTRITON_STAGES
        "max_single_c": _tiles.MAX_SINGLE_C,  # SEGTRITON_MAX_SINGLE_C
        "chunk": ",".join(map(str, _tiles.CHUNK)),  # SEGTRITON_CHUNK
        "unroll": ",".join(map(str, _tiles.UNROLL)),  # SEGTRITON_UNROLL
        "write_rows": _tiles.WRITE_ROWS,  # SEGTRITON_WRITE_ROWS
        "column": _tiles.COLUMN_CLASSES,  # SEGTRITON_COLUMN
        "column_pixels": _tiles.COLUMN_PIXELS,  # SEGTRITON_COLUMN_PIXELS (0: the default)
        "flat": int(_tiles.FLAT),  # SEGTRITON_FLAT
        "hist_bins": _tiles.HIST_BINS,  # SEGTRITON_HIST_BINS
        "fp_fusion": os.environ.get("TRITON_DEFAULT_FP_FUSION", "triton's default"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
            driver=_driver_version(),
        )
    for peer in PEERS:
        info[f"peer:{peer}"] = _version(peer)
    return info


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def provenance(command: str) -> str:
    """One line for a report: the command, library versions, commit and UTC date."""
    env = environment()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (
        f"Command: `{command}` (SEGTRITON_MAX_TILE={env['max_tile']}, "
        f"SEGTRITON_STAGES={env['stages']}, SEGTRITON_MAX_SINGLE_C={env['max_single_c']}, "
        f"SEGTRITON_CHUNK={env['chunk']}, SEGTRITON_UNROLL={env['unroll']}, "
        f"SEGTRITON_WRITE_ROWS={env['write_rows']}, SEGTRITON_COLUMN={env['column']}, "
        f"SEGTRITON_COLUMN_PIXELS={env['column_pixels']}, SEGTRITON_FLAT={env['flat']}, "
        f"SEGTRITON_HIST_BINS={env['hist_bins']}). "
        f"triton {env['triton']}, torch {env['torch']}, "
        f"segtriton {env['segtriton']} (commit {env['git_commit']}), {date}."
    )
