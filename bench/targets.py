"""The issues' performance targets as data, and whether a run met them.

Each target names a measurement and the bar the issue sets for it. The ``targets`` sweep
preset runs the loss cases the targets name; ``pytest --benchmark`` times the confusion
matrix and the distance transform. :func:`evaluate` reads both (sweep rows, and rows taken
from a pytest-benchmark JSON file by :func:`bench_extras`) and gives one line per target:
the measured value, the bar, and 'met', 'missed', 'failed check' (the Triton row did not
match float64 or raised) or 'not measured' (no timed row, e.g. a run without a GPU).

Kinds of target (all fwd+bwd, contiguous, int64 labels, Triton rows):

- ``floor``: percent of the measured copy bandwidth (minimal bytes over time) >= ``goal``,
  judged on the CUDA-graph replay time of the Triton row when the run has it (the GPU
  work alone; the event-timed figure, launch overhead included, is shown beside it);
- ``speedup``: median time of provider ``versus`` over Triton's >= ``goal`` (event-timed
  calls on both sides: the other providers are not captured in graphs);
- ``ratio``: Triton time of this loss over Triton time of loss ``versus`` <= ``goal``
  (graph replay times when both rows have them);
- ``memory``: peak memory beyond the inputs and the gradient buffer <= the bound the issue
  states, in bytes: ``per_logit`` per logit element plus ``per_pixel`` per pixel plus
  ``per_unit`` per (image, class), plus 16 MiB for allocator rounding and partial sums.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import pandas as pd

CITYSCAPES = (8, 19, 512, 1024)
ADE20K = (16, 150, 512, 512)
SLACK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Target:
    issue: int
    loss: str  # a registry loss, or 'confusion_labels' | 'confusion_logits' | 'edt'
    shape: tuple[int, ...]
    dtype: str
    kind: str  # floor | speedup | ratio | memory
    goal: float
    versus: str = ""  # the provider (speedup) or loss (ratio) compared with
    per_logit: float = 0.0
    per_pixel: float = 0.0
    per_unit: float = 0.0

    def describe(self) -> str:
        shape = "x".join(map(str, self.shape))
        what = {
            "floor": f">= {self.goal:g}% of copy bandwidth",
            "speedup": f">= {self.goal:g}x faster than {self.versus}",
            "ratio": f"<= {self.goal:g}x the time of {self.versus}",
            "memory": "extra memory <= " + self._bound_text(),
        }[self.kind]
        return f"{self.loss} {shape} {self.dtype}: {what}"

    def _bound_text(self) -> str:
        terms = [
            f"{v:g} B/{name}"
            for v, name in (
                (self.per_logit, "logit"),
                (self.per_pixel, "pixel"),
                (self.per_unit, "(image, class)"),
            )
            if v
        ]
        return " + ".join([*terms, "16 MiB"])

    def memory_bound_mb(self) -> float:
        B, C, *spatial = self.shape
        pixels = B * math.prod(spatial)
        total = self.per_logit * pixels * C + self.per_pixel * pixels + self.per_unit * B * C
        return (total + SLACK_BYTES) / 2**20


def _each(issue, losses, shapes, dtypes, kind, goal, **kw) -> list[Target]:
    return [
        Target(issue, loss, tuple(shape), dtype, kind, goal, **kw)
        for loss in losses
        for shape in shapes
        for dtype in dtypes
    ]


_PIXEL = ("cross_entropy", "softmax_focal", "sigmoid_focal_ovr")
_BCE_SHAPES = ((8, 1, 1024, 1024), (4, 4, 128, 128, 128))
_REGION = ("dice", "jaccard", "tversky", "generalized_dice")
_BOTH = ("bf16", "fp32")
_BIG = (CITYSCAPES, ADE20K)

TARGETS: list[Target] = [
    # issue 3: pixel-wise losses, one pass; O(B*C + pixels) scalars beyond the gradient
    *_each(3, _PIXEL, _BIG, _BOTH, "floor", 80),
    *_each(3, ("bce",), _BCE_SHAPES, _BOTH, "floor", 80),
    *_each(3, _PIXEL, _BIG[:1], ("bf16",), "memory", 0, per_pixel=8, per_unit=8),
    *_each(3, ("bce",), _BCE_SHAPES[:1], ("bf16",), "memory", 0, per_pixel=8, per_unit=8),
    # issue 5: region losses, two passes; fused CE + Dice costs about what Dice costs
    *_each(5, _REGION, _BIG, _BOTH, "floor", 75),
    *_each(5, ("ce_dice",), _BIG, _BOTH, "ratio", 1.15, versus="dice"),
    *_each(5, ("dice",), _BIG, ("bf16",), "memory", 0, per_unit=64),
    # issue 7: Lovasz-softmax against Berman's loop and the batched torch pipeline (eager)
    *_each(7, ("lovasz_softmax",), _BIG, ("bf16",), "speedup", 30, versus="berman"),
    *_each(7, ("lovasz_softmax",), _BIG, ("bf16",), "speedup", 3, versus="eager"),
    *_each(7, ("lovasz_softmax",), _BIG, ("bf16",), "memory", 0, per_logit=12),
    # issue 7: the exact distance transform against scipy (pytest --benchmark)
    *_each(
        7,
        ("edt",),
        ((8, 512, 512), (4, 1024, 1024), (2, 128, 128, 128)),
        ("-",),
        "speedup",
        100,
        versus="scipy",
    ),
    # issue 6: the confusion matrix (pytest --benchmark; bf16 logits, int64 labels)
    *_each(6, ("confusion_labels",), ((8, 19, 1024, 2048), ADE20K), ("-",), "floor", 80),
    *_each(6, ("confusion_logits",), ((8, 19, 1024, 2048), ADE20K), ("bf16",), "floor", 75),
]


def sweep_cases() -> list[tuple[str, list[int], str]]:
    """(loss, shape, dtype) of every sweep row the targets read: bf16 first (a sweep cut
    short by its time cap keeps those), then fp32, each in issue order."""
    out: list[tuple[str, list[int], str]] = []
    for t in TARGETS:
        if t.loss in ("edt", "confusion_labels", "confusion_logits"):
            continue
        for loss in (t.loss, t.versus) if t.kind == "ratio" else (t.loss,):
            case = (loss, list(t.shape), t.dtype)
            if case not in out:
                out.append(case)
    return sorted(out, key=lambda case: case[2] != "bf16")


def bench_extras(path: Path) -> list[dict]:
    """Confusion-matrix and distance-transform rows of a ``pytest --benchmark`` JSON file,
    as ``loss`` ('confusion_labels', 'confusion_logits', 'edt'), provider, shape, dtype,
    median_ms, pct_of_copy_bw and, where the run timed CUDA-graph replays (Triton's
    confusion matrix), graph_median_ms and graph_pct_of_copy_bw. They have no ``passed``:
    that run checked nothing (the test suite checks these kernels), so no such target
    reads 'failed check'."""
    rows = []
    for bench in json.loads(Path(path).read_text()).get("benchmarks", []):
        info, group = bench.get("extra_info", {}), bench.get("group") or ""
        if group.startswith("confusion_matrix"):
            loss = f"confusion_{info.get('preds')}"
            dtype = "bf16" if info.get("preds") == "logits" else "-"
        elif group.startswith("edt "):
            loss, dtype = "edt", "-"
        else:
            continue
        rows.append(
            {
                "loss": loss,
                "provider": info.get("provider"),
                "shape": info.get("shape"),
                "dtype": dtype,
                "median_ms": bench["stats"]["median"] * 1e3,
                "pct_of_copy_bw": info.get("pct_of_copy_bw", math.nan),
                "graph_median_ms": info.get("graph_median_ms", math.nan),
                "graph_pct_of_copy_bw": info.get("graph_pct_of_copy_bw", math.nan),
            }
        )
    return rows


def _row(df: pd.DataFrame, loss: str, shape: tuple[int, ...], dtype: str, provider: str):
    sel = df[
        (df.loss == loss)
        & (df["shape"] == "x".join(map(str, shape)))
        & (df.dtype == dtype)
        & (df.provider == provider)
    ]
    for col, value in (("mode", "fwd+bwd"), ("memory_format", "contiguous")):
        if col in sel:
            sel = sel[sel[col].isna() | (sel[col] == value)]
    if "label_dtype" in sel:
        sel = sel[sel.label_dtype.isna() | (sel.label_dtype == "int64")]
    return None if sel.empty else sel.iloc[-1]


def _graph(row, col: str) -> float:
    """A row's CUDA-graph figure, NaN when it has none."""
    value = row.get(col, math.nan)
    return math.nan if value is None or pd.isna(value) else float(value)


def _timed(row: pd.Series | None) -> TypeGuard[pd.Series]:
    return row is not None and not pd.isna(row.get("median_ms", math.nan))


def evaluate(df: pd.DataFrame) -> pd.DataFrame:
    """One line per target: issue, target, measured, status."""
    out = []
    for t in TARGETS:
        tri = _row(df, t.loss, t.shape, t.dtype, "triton") if len(df) else None
        measured, status, note = math.nan, "not measured", ""
        passed = None if tri is None else tri.get("passed")
        if passed is not None and not pd.isna(passed) and not bool(passed):
            status = "failed check"
        elif _timed(tri):
            if t.kind == "floor":
                measured = float(tri.get("pct_of_copy_bw", math.nan))
                graph = _graph(tri, "graph_pct_of_copy_bw")
                if not math.isnan(graph):
                    measured, note = graph, f" graph ({measured:.3g}% events)"
            elif t.kind == "memory":
                measured = float(tri.get("extra_mem_beyond_grad_mb", math.nan))
            else:
                loss, prov = (t.loss, t.versus) if t.kind == "speedup" else (t.versus, "triton")
                other = _row(df, loss, t.shape, t.dtype, prov)
                if _timed(other):
                    mine, theirs = tri["median_ms"], other["median_ms"]
                    if t.kind == "ratio":
                        graphs = _graph(tri, "graph_median_ms"), _graph(other, "graph_median_ms")
                        if not any(math.isnan(g) for g in graphs):
                            (mine, theirs), note = graphs, " graph"
                    ratio = theirs / mine
                    measured = ratio if t.kind == "speedup" else 1 / ratio
            if not math.isnan(measured):
                if t.kind == "memory":
                    met = measured <= t.memory_bound_mb()
                else:
                    met = measured <= t.goal if t.kind == "ratio" else measured >= t.goal
                status = "met" if met else "missed"
        unit = {"floor": "%", "memory": " MiB"}.get(t.kind, "x")
        out.append(
            {
                "issue": t.issue,
                "target": t.describe(),
                "measured": "-" if math.isnan(measured) else f"{measured:.3g}{unit}{note}",
                "status": status,
            }
        )
    return pd.DataFrame(out)
