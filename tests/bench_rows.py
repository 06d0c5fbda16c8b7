"""Saved sweep rows for the report, target and comparison tests, written by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def bench_row(
    loss: str, provider: str, shape: str | Sequence[int], dtype: str, median_ms: float, **extra
) -> dict:
    """A row as ``segtriton sweep`` saves it: fwd+bwd, int64 labels, contiguous, no ignored
    pixels, passed; ``extra`` sets or overrides columns."""
    return {
        "loss": loss,
        "provider": provider,
        "shape": shape if isinstance(shape, str) else "x".join(map(str, shape)),
        "dtype": dtype,
        "label_dtype": "int64",
        "mode": "fwd+bwd",
        "memory_format": "contiguous",
        "ignore_frac": 0.0,
        "median_ms": median_ms,
        "passed": True,
        **extra,
    }


def save_run(path: Path, rows: list[dict]) -> Path:
    """A run folder at ``path`` holding ``rows`` as rows.json."""
    path.mkdir()
    (path / "rows.json").write_text(json.dumps(rows))
    return path
