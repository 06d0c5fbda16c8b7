"""Reports from saved rows: charts (matplotlib), report.md with a recommendation table,
and the comparison of two runs."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.axis import Axis  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, NullLocator  # noqa: E402

from segtriton.registry import KINK_SHARE, LOSSES  # noqa: E402

from .runner import add_ratios, load_rows  # noqa: E402
from .spec import PROVIDERS  # noqa: E402
from .targets import bench_extras, evaluate  # noqa: E402

KEYS = ["loss", "shape", "dtype", "label_dtype", "mode", "memory_format", "ignore_frac"]


def rows_from_pytest_benchmark(path: Path) -> tuple[list[dict], dict]:
    """Rows and meta from a ``pytest --benchmark --benchmark-json=FILE`` file. Its spread is
    the interquartile range (p25/p75), stored in the p20/p80 columns and so labelled. Its
    rows were not checked against float64 in that run (``passed`` is None), so they are
    charted but never recommended."""
    text = path.read_text()
    if not text.strip():
        raise ValueError(f"{path} is empty: its pytest --benchmark run stopped before writing it")
    data = json.loads(text)
    rows = []
    for bench in data["benchmarks"]:
        info, stats = bench.get("extra_info", {}), bench["stats"]
        if "loss" not in info:
            continue
        rows.append(
            {
                **info,
                "median_ms": stats["median"] * 1e3,
                "p20_ms": stats["q1"] * 1e3,
                "p80_ms": stats["q3"] * 1e3,
                "reps": stats["rounds"],
                "pct_of_copy_bw": info.get("pct_of_copy_bw"),
                "passed": None,
                "timer": "pytest-benchmark (p25/p75 as spread)",
            }
        )
    machine = data.get("machine_info", {})
    meta = {
        "device": rows[0]["device"] if rows else "?",
        "date": data.get("datetime"),
        "copy_bandwidth_gbps": rows[0].get("copy_gbps", float("nan")) if rows else float("nan"),
        "command": "pytest --benchmark",
        "python": machine.get("python_version"),
    }
    for key in ("segtriton", "torch", "triton", "gpu", "driver", "git_commit"):
        meta[key] = rows[0].get(key) if rows else None
    return rows, meta


def load_runs(dirs: list[Path]) -> tuple[pd.DataFrame, list[dict]]:
    """Rows of several runs (run folders, or pytest-benchmark JSON files; later runs win on
    the same case and provider) and their meta."""
    frames, metas = [], []
    for d in dirs:
        if d.is_file():
            rows, meta = rows_from_pytest_benchmark(d)
            frames.append(pd.DataFrame(rows).assign(run=str(d)))
            metas.append(meta)
            continue
        rows = load_rows(d)
        if not rows:
            raise FileNotFoundError(f"no rows.json in {d}")
        frames.append(pd.DataFrame(rows).assign(run=str(d)))
        meta_file = d / "meta.json"
        metas.append(json.loads(meta_file.read_text()) if meta_file.exists() else {})
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(subset=KEYS + ["provider"], keep="last")
    for col in (
        "median_ms",
        "p20_ms",
        "p80_ms",
        "gbps",
        "pct_of_copy_bw",
        "extra_mem_mb",
        "grad_rel_err",
        "grad_identity_err",
        "grad_off_share",
        "loss_rel_err",
        "error",
    ):
        if col not in df:
            df[col] = np.nan
    return add_ratios(df.reset_index(drop=True)), metas


def _pixels(shape: str) -> int:
    dims = [int(v) for v in shape.split("x")]
    return dims[0] * math.prod(dims[2:])


def _classes(shape: str) -> int:
    return int(shape.split("x")[1])


def _elements(shape: str) -> int:
    """Logit elements B*C*pixels of a ``'BxCx...'`` shape."""
    return math.prod(int(v) for v in shape.split("x"))


def _regime(shape: str) -> str:
    C, pixels = _classes(shape), _pixels(shape)
    cls = "binary (C<=2)" if C <= 2 else ("C<=32" if C <= 32 else "C>32")
    size = "<=1M px" if pixels <= 2**20 else ("<=16M px" if pixels <= 2**24 else ">16M px")
    return f"{cls}, {size}"


def md_table(df: pd.DataFrame) -> str:
    """A markdown table of ``df`` (floats to 3 significant digits, NaN as '-')."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                cells.append("-" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# case columns besides loss, shape and dtype, named in a chart's labels where they vary
_SIDE = {
    "mode": "{}",
    "memory_format": "{}",
    "label_dtype": "labels {}",
    "ignore_frac": "ignore {:g}",
}


def _varying(df: pd.DataFrame, columns: list[str]) -> list[str]:
    """The ``columns`` of ``df`` holding more than one value."""
    return [c for c in columns if c in df and df[c].nunique(dropna=False) > 1]


def _side_label(row: pd.Series, columns: list[str]) -> str:
    return " ".join(_SIDE[c].format(row[c]) for c in columns)


GRAPH = " (CUDA graph)"  # the provider suffix of a CUDA-graph replay's bar
# dark and light shades of one hue per provider (its replays take the light one), in the
# order of the sweep's providers, so that a provider looks the same in every chart
_SHADES = [matplotlib.colormaps["tab20"](i) for i in range(20)]
_DTYPE_LINES = {"fp32": "-", "bf16": "--", "fp16": ":"}
_MARKERS = "os^Dvx"  # one per kind of case (layout, label dtype, ignored share) in a chart


def provider_color(provider: str) -> tuple[float, float, float, float]:
    """The colour of ``provider`` in every chart: a fixed hue per provider of the sweep,
    its lighter shade for the provider's CUDA-graph replays; any other name takes a
    colour of a second palette picked by a checksum of the name (the same in every run)."""
    base = provider.removesuffix(GRAPH)
    if base not in PROVIDERS:
        return matplotlib.colormaps["tab20b"](zlib.crc32(provider.encode()) % 20)
    return _SHADES[(2 * PROVIDERS.index(base) + (base != provider)) % len(_SHADES)]


class PlainLogFormatter(LogFormatterSciNotation):
    """Matplotlib's choice of which ticks of a log axis to label, each written as a plain
    number (0.3, 2, 40) instead of 3 x 10^-1: a time axis spanning less than a decade
    labels its minor ticks, which read poorly in powers of ten."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _plain_log_labels(axis: Axis) -> None:
    """Plain numbers on the major and minor ticks of a log ``axis``."""
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def _size_ticks(ax: plt.Axes, sizes: pd.Series) -> None:
    """Label the x axis (log) at the sizes drawn, skipping one within 1.5x of the last."""
    kept: list[int] = []
    for v in sorted(set(sizes)):
        if not kept or v >= 1.5 * kept[-1]:
            kept.append(v)
    ax.set_xticks(kept, [f"{v / 1e6:.3g}M" if v >= 1e6 else f"{v / 1e3:.3g}k" for v in kept])
    ax.xaxis.set_minor_locator(NullLocator())


def _chart_time(df: pd.DataFrame, path: Path) -> bool:
    """Median time (p20-p80 bars) against logit elements: a panel per loss and mode, a line
    per provider and dtype, split further by any case column that varies (layout, label
    dtype, ignored share), so one line never joins two kinds of case. A provider has one
    colour in every panel (:func:`provider_color`), a dtype one line style, a kind of
    case one marker."""
    timed = df[df.median_ms.notna()]
    if timed.empty:
        return False
    timed = timed.assign(px=timed["shape"].map(_elements))
    modes = _varying(timed, ["mode"])
    panels = list(timed.groupby(["loss", *modes]))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False)
    side = [c for c in _varying(timed, list(_SIDE)) if c != "mode"]  # modes: panels
    kinds = {kind: i for i, (kind, _) in enumerate(timed.groupby(side))} if side else {}
    for ax, (key, sub) in zip(axes.flat, panels, strict=False):
        for (prov, dtype, *kind), g in sub.groupby(["provider", "dtype", *side]):
            g = g.sort_values(["px", "shape"])
            ax.errorbar(
                g.px,
                g.median_ms,
                yerr=[g.median_ms - g.p20_ms, g.p80_ms - g.median_ms],
                marker=_MARKERS[kinds.get(tuple(kind), 0) % len(_MARKERS)],
                capsize=2,
                color=provider_color(prov),
                linestyle=_DTYPE_LINES.get(dtype, "-."),
                label=f"{prov} {dtype} {_side_label(g.iloc[0], side)}".strip(),
            )
        ax.set(
            xscale="log",
            yscale="log",
            title=" ".join(key),
            xlabel="logit elements (B*C*pixels)",
            ylabel="median ms (p20-p80)",
        )
        _size_ticks(ax, sub.px)
        _plain_log_labels(ax.yaxis)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    # one legend below the panels: a line looks the same in each
    lines: dict[str, Artist] = {}
    for ax in axes.flat:
        for line, label in zip(*ax.get_legend_handles_labels(), strict=True):
            lines.setdefault(label, line)
    ncol = min(4, len(lines))
    legend_in = 0.22 * math.ceil(len(lines) / ncol) + 0.2
    fig.set_size_inches(5 * cols, 3.6 * rows + legend_in)
    fig.legend(list(lines.values()), list(lines), loc="lower center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, legend_in / (3.6 * rows + legend_in), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def speedup_table(df: pd.DataFrame, base: str) -> pd.DataFrame:
    """Median speedup of the Triton rows over ``base``: classes C down, pixels across
    (the median is over losses, dtypes, modes and layouts; other providers' rows are not in it)."""
    tri = df[(df.provider == "triton") & df[f"speedup_vs_{base}"].notna()]
    tri = tri.assign(C=tri["shape"].map(_classes), px=tri["shape"].map(_pixels))
    return tri.groupby(["C", "px"])[f"speedup_vs_{base}"].median().unstack("px")


def _chart_speedup(df: pd.DataFrame, path: Path, base: str) -> bool:
    table = speedup_table(df, base)
    if table.empty:
        return False
    fig, ax = plt.subplots(figsize=(1.2 * table.shape[1] + 3, 0.6 * table.shape[0] + 2))
    im = ax.imshow(
        np.log2(table.values.astype(float)), cmap="RdYlGn", vmin=-4, vmax=4, aspect="auto"
    )
    ax.set_xticks(range(table.shape[1]), [f"{p / 1e6:.2g}M" for p in table.columns], rotation=45)
    ax.set_yticks(range(table.shape[0]), [str(c) for c in table.index])
    for (i, j), v in np.ndenumerate(table.values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}x", ha="center", va="center", fontsize=8)
    ax.set(
        xlabel="pixels (B*spatial)",
        ylabel="classes C",
        title=f"Triton speedup over {base}\n(median over the cases of each cell)",
    )
    bar = fig.colorbar(im, label="speedup (log scale)", ticks=[-4, -2, 0, 2, 4])
    bar.ax.set_yticklabels(["1/16x", "1/4x", "1x", "4x", "16x"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _chart_bars(
    df: pd.DataFrame,
    column: str,
    xlabel: str,
    path: Path,
    logx: bool = False,
    line_at: float | None = None,
) -> bool:
    """Horizontal bars of ``column`` per case (loss, shape, dtype and any other case column
    that varies), one bar per provider; per loss from the smallest case down."""
    if column not in df:
        return False
    rows = df[df[column].notna()]
    if rows.empty:
        return False
    side = _varying(rows, list(_SIDE))
    case = rows.loss + " " + rows["shape"] + " " + rows.dtype
    if side:
        case = case + " " + rows.apply(_side_label, axis=1, columns=side)
    rows = rows.assign(case=case, size=rows["shape"].map(_elements))
    order = rows.sort_values(["loss", "size", "case"], ascending=False).case.unique()
    pivot = rows.pivot_table(index="case", columns="provider", values=column).loc[order]
    colors = {p: provider_color(p) for p in pivot.columns}
    ax = pivot.plot.barh(figsize=(9, 0.35 * len(pivot) + 2), logx=logx, color=colors)
    if logx:
        _plain_log_labels(ax.xaxis)
    if line_at is not None:
        ax.axvline(line_at, color="k", lw=0.8)
    ax.set(xlabel=xlabel, ylabel="")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)
    return True


def _with_graph_rows(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` plus, for each row with a CUDA-graph time, a row of provider
    '<provider> (CUDA graph)' whose ``pct_of_copy_bw`` is the graph figure."""
    if "graph_pct_of_copy_bw" not in df:
        return df
    graph = df[df.graph_pct_of_copy_bw.notna()]
    graph = graph.assign(provider=graph.provider + GRAPH, pct_of_copy_bw=graph.graph_pct_of_copy_bw)
    return pd.concat([df, graph], ignore_index=True)


# the cases a recommendation ranks over: KEYS less those it is made per (with the regime)
CASE = [k for k in KEYS if k not in ("loss", "dtype", "mode")]


def _common_cases(times: pd.DataFrame) -> pd.DataFrame:
    """The columns (providers) of ``times`` (cases x providers, NaN where a provider has
    no passing row) that cover every one of its cases. Where none does, the cases that
    all the providers covering most of them share (or, where they share none, the first
    one's cases), and the providers covering all of those."""
    covered = times.notna().sum()
    if covered.max() < len(times):
        most = list(covered[covered == covered.max()].index)
        shared = times[times[most].notna().all(axis=1)]
        times = shared if len(shared) else times[times[most[0]].notna()]
    return times.loc[:, times.notna().all()]


def _why_unranked(rows: pd.DataFrame) -> str:
    """Why a provider with no timed row that passed in a regime is absent from its ranking."""
    if (rows.passed == True).any():  # noqa: E712
        return "not timed"  # a Triton row checked in the interpreter
    return "not checked" if rows.passed.isna().all() else "failed"


def recommendations(df: pd.DataFrame) -> pd.DataFrame:
    """Per loss, regime, dtype and mode: the fastest provider among rows that passed, by
    the median over the regime's cases (shape, label dtype, layout, ignored fraction). All
    ranked providers are compared on the same cases. 'not ranked' names the regime's other
    providers: one that passed only some of the cases (an OOM, a compile failure or a wrong
    value at the others), with its count; one whose rows all failed or errored ('failed'),
    were not timed (Triton in the interpreter) or never checked (pytest-benchmark)."""
    df = df.assign(regime=df["shape"].map(_regime))
    timed = (df.passed == True) & df.median_ms.notna()  # noqa: E712
    out = []
    for (loss, regime, dtype, mode), group in df.groupby(["loss", "regime", "dtype", "mode"]):
        ok = group[timed[group.index]]
        if ok.empty:
            continue
        times = ok.pivot_table(index=CASE, columns="provider", values="median_ms")
        ranked = _common_cases(times)
        per = ranked.median().sort_values()
        left_out = [
            f"{p} ({n} of {len(times)})"
            for p, n in times.notna().sum().drop(ranked.columns).items()
        ]
        absent = group[~group.provider.isin(times.columns)]
        left_out += [f"{p} ({_why_unranked(rows)})" for p, rows in absent.groupby("provider")]
        out.append(
            {
                "loss": loss,
                "regime": regime,
                "dtype": dtype,
                "mode": mode,
                "use": per.index[0],
                "median ms": per.iloc[0],
                "x faster than next": per.iloc[1] / per.iloc[0] if len(per) > 1 else math.nan,
                "x faster than eager": per.get("eager", math.nan) / per.iloc[0],
                "cases": len(ranked),
                "not ranked": ", ".join(left_out) or "-",
            }
        )
    return pd.DataFrame(out)


def _short_commit(commit: object) -> str:
    """A stamped commit cut to 10 hex digits, keeping a '-dirty' mark."""
    text = str(commit)
    return text[:10] + ("-dirty" if text.endswith("-dirty") else "")


def build_report(dirs: list[Path], out: Path) -> Path:
    """Charts and report.md for the runs in ``dirs``, written to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    df, metas = load_runs(dirs)
    charts = {
        "time.png": ("Time against size", _chart_time(df, out / "time.png")),
        "speedup_eager.png": (
            "Speedup over eager",
            _chart_speedup(df, out / "speedup_eager.png", "eager"),
        ),
        "speedup_compile.png": (
            "Speedup over torch.compile",
            _chart_speedup(df, out / "speedup_compile.png", "compile"),
        ),
        "floor.png": (
            "Fraction of the copy-bandwidth floor",
            _chart_bars(
                _with_graph_rows(df),
                "pct_of_copy_bw",
                "% of measured copy bandwidth (minimal bytes / time)",
                out / "floor.png",
                line_at=100,
            ),
        ),
        "memory.png": (
            "Extra memory",
            _chart_bars(
                df, "extra_mem_mb", "peak memory beyond inputs (MiB)", out / "memory.png", logx=True
            ),
        ),
    }
    meta = metas[-1]
    lines = ["# segtriton benchmark report", ""]
    lines += [
        f"- runs: {', '.join(str(d) for d in dirs)}",
        f"- device: {meta.get('gpu') or meta.get('device', '?')}; torch {meta.get('torch')}; "
        f"triton {meta.get('triton')}; segtriton {meta.get('segtriton')} "
        f"(commit {_short_commit(meta.get('git_commit'))}); date {meta.get('date')}; kernel knobs "
        f"SEGTRITON_MAX_TILE={meta.get('max_tile', '?')}, "
        f"SEGTRITON_STAGES={meta.get('stages', '?')}, "
        f"SEGTRITON_MAX_SINGLE_C={meta.get('max_single_c', '?')}, "
        f"SEGTRITON_CHUNK={meta.get('chunk', '?')}, "
        f"SEGTRITON_UNROLL={meta.get('unroll', '?')}, "
        f"SEGTRITON_WRITE_ROWS={meta.get('write_rows', '?')}, "
        f"SEGTRITON_COLUMN={meta.get('column', '?')}, "
        f"SEGTRITON_COLUMN_PIXELS={meta.get('column_pixels', '?')}, "
        f"SEGTRITON_FLAT={meta.get('flat', '?')}, "
        f"SEGTRITON_HIST_BINS={meta.get('hist_bins', '?')}",
        f"- measured copy bandwidth: {meta.get('copy_bandwidth_gbps', float('nan')):.0f} GB/s"
        " (bytes read + written); every GB/s figure uses the minimal byte model of its loss",
        "- command: "
        + ", then ".join(f"`{c}`" for c in meta.get("commands") or [meta.get("command", "")]),
        "",
    ]
    extras = [row for d in dirs if d.is_file() for row in bench_extras(d)]
    targets = evaluate(pd.concat([df, pd.DataFrame(extras)], ignore_index=True))
    if (targets.status != "not measured").any():
        counts = targets.status.value_counts()
        lines += [
            "## Issue targets",
            "",
            "The bars the issues set (`bench/targets.py`), read from the rows below: "
            + ", ".join(f"{n} {status}" for status, n in counts.items())
            + ".",
            "",
            md_table(targets),
            "",
        ]
    else:
        lines += ["No issue target (`bench/targets.py`) was measured in this run.", ""]
    untimed = df[(df.provider == "triton") & df.median_ms.isna() & (df.passed == True)]  # noqa: E712
    if len(untimed):
        lines += [
            f"{len(untimed)} Triton row(s) ran in Triton's CPU interpreter: checked "
            "against float64, speed not measured (no GPU in this run).",
            "",
        ]
    failed = df[df.passed.eq(False)]
    by_identity = df.grad_identity_err.notna()
    if by_identity.any():
        lines += [
            f"Rows of {', '.join(sorted(set(df.loss[by_identity])))} are gated on their "
            "gradient through the loss it implies (`grad_identity_err`, an identity true "
            "for any order of tied errors, see `segtriton.reference.lovasz`): the gradient "
            "itself depends on how tied errors are ordered, so its element-wise error "
            "(grad_rel_err) is shown but not gated.",
            "",
        ]
    sized = sorted(set(df.loss) & {e.name for e in LOSSES if e.magnitude is not None})
    if sized:
        lines += [
            f"The loss error of {', '.join(sized)} (`loss_rel_err`) is relative to the size "
            "of its terms when that exceeds the loss: the loss is a difference of terms "
            "that can nearly cancel, where float32 rounding of the terms is large relative "
            "to what is left.",
            "",
        ]
    by_share = df.grad_off_share.notna()
    if by_share.any():
        lines += [
            f"Rows of {', '.join(sorted(set(df.loss[by_share])))} are gated on the share of "
            "gradient entries off the float64 reference by more than the tolerance "
            f"(`grad_off_share`, at most {KINK_SHARE:g}): the gradient jumps at thresholds "
            "and extremes inside the loss, and over a large input float32 lands on the "
            "other side of a few of them at isolated pixels, so the largest error "
            "(grad_rel_err) is shown but not gated.",
            "",
        ]
    if "graph_breaks" in df:
        broken = df[df.graph_breaks > 0].groupby("loss").graph_breaks.max().astype(int)
        if len(broken):
            lines += [
                "torch.compile split these references into several graphs, running the "
                "code between them eagerly (most graph breaks in one first call): "
                + ", ".join(f"{loss} ({n})" for loss, n in broken.items())
                + ".",
                "",
            ]
    if df.passed.isna().any():
        lines += [
            f"{int(df.passed.isna().sum())} row(s) come from pytest-benchmark and were "
            "not checked against float64 in that run: charted, not recommended.",
            "",
        ]
    # besides the layout, what tells two rows of a loss, provider, shape and dtype apart
    cases_differ = _varying(df, ["label_dtype", "ignore_frac"])
    if len(failed):
        lines += [
            f"**{len(failed)} row(s) failed correctness or errored** (kept out of the "
            "recommendations):",
            "",
            md_table(
                failed[
                    [
                        "loss",
                        "provider",
                        "shape",
                        "dtype",
                        "mode",
                        "memory_format",
                        *cases_differ,
                        "loss_rel_err",
                        "grad_rel_err",
                        "grad_identity_err",
                        "grad_off_share",
                        "error",
                    ]
                ]
            ),
            "",
        ]
    for name, (title, made) in charts.items():
        if made:
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
    cols = [
        "loss",
        "provider",
        "shape",
        "dtype",
        "mode",
        "memory_format",
        *cases_differ,
        "median_ms",
        "p20_ms",
        "p80_ms",
        "gbps",
        "pct_of_copy_bw",
        "graph_median_ms",
        "graph_pct_of_copy_bw",
        "speedup_vs_eager",
        "speedup_vs_compile",
        "extra_mem_mb",
        "first_call_s",
        "loss_rel_err",
        "grad_rel_err",
        "grad_identity_err",
        "grad_off_share",
        "passed",
        "timer",
    ]
    lines += ["## All rows", "", md_table(df[[c for c in cols if c in df]]), ""]
    rec = recommendations(df)
    lines += [
        "## Recommendation",
        "",
        "Fastest provider per loss and shape regime among rows that passed the float64 "
        "check: the median of its medians above over the regime's cases, every ranked "
        "provider on the same cases ('not ranked': the regime's other providers, with the "
        "share of its cases they passed, or why none counts).",
        "",
    ]
    lines += [md_table(rec) if len(rec) else "No timed rows passed: nothing to recommend.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def compare(a: Path, b: Path, threshold: float = 0.05) -> tuple[pd.DataFrame, int]:
    """Median times of run ``b`` against run ``a``. A row is a regression (column ``why``)
    when ``b`` is slower by more than ``threshold`` (event-timed medians; the CUDA-graph
    ratio is shown beside them when both runs have it), or when it passed the float64
    check in ``a`` and fails it or errors in ``b`` (an error row has no time, and a
    failing row's time is no use). Rows in one run only are left out. Returns the table
    and the number of regressions."""
    da, _ = load_runs([a])
    db, _ = load_runs([b])
    keys = KEYS + ["provider"]
    times = ["median_ms"] + (
        ["graph_median_ms"] if "graph_median_ms" in da and "graph_median_ms" in db else []
    )
    cols = keys + times + ["passed", "error"]
    m = da[cols].merge(db[cols], on=keys, suffixes=("_a", "_b"))
    broke = m.passed_a.eq(True) & m.passed_b.eq(False)
    m = m[(m.median_ms_a.notna() & m.median_ms_b.notna()) | broke].copy()
    broke = broke[m.index]
    m["ratio_b_over_a"] = m.median_ms_b / m.median_ms_a
    if "graph_median_ms" in times:  # the GPU work alone, beside the event-timed ratio
        m["graph_ratio_b_over_a"] = m.graph_median_ms_b / m.graph_median_ms_a
    slower = m.ratio_b_over_a > 1 + threshold
    m["regression"] = slower | broke
    m["why"] = [
        (f"error in b: {err}" if isinstance(err, str) else "failed the check in b")
        if fails
        else ("slower" if slow else "")
        for fails, slow, err in zip(broke, slower, m.error_b, strict=True)
    ]
    return m.reset_index(drop=True), int(m.regression.sum())


# ratio ticks: fine within a decade, coarse across more
_RATIO_TICKS = (0.1, 0.2, 0.25, 0.5, 0.67, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 4, 5, 10)
_WIDE_RATIO_TICKS = (0.001, 0.01, 0.1, 0.5, 1, 2, 10, 100, 1000)


def compare_chart(
    table: pd.DataFrame, threshold: float, path: Path, names: tuple[str, str]
) -> Path:
    """A bar per case of a :func:`compare` table: run b's median over run a's on a log
    axis, red where b is slower beyond ``threshold``, green where it is faster beyond
    it, grey within the band drawn around 1; a diamond marks the CUDA-graph ratio where
    both runs have one. A case that failed or errored in b has no bar: its label says
    so. ``names`` label the two runs."""
    side = _varying(table, list(_SIDE))
    labels = [
        " ".join([row["loss"], row["provider"], row["shape"], row["dtype"]])
        + (" " + _side_label(row, side) if side else "")
        + ("" if row["why"] in ("", "slower") else f" ({row['why'][:40]})")
        for _, row in table.iterrows()
    ]
    timed = table.why.isin(["", "slower"])  # a time that failed the check is no use
    ratio = table.ratio_b_over_a.where(timed)
    colors = np.where(
        ratio > 1 + threshold, "tab:red", np.where(ratio < 1 / (1 + threshold), "tab:green", "0.6")
    )
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(table) + 1.8))
    at = np.arange(len(table))[::-1]  # the table's first row at the top
    ax.barh(at, ratio.fillna(1.0) - 1, left=1, color=colors, height=0.7)
    xlabel = f"median time of {names[1]} / {names[0]} (below 1: faster"
    if "graph_ratio_b_over_a" in table and table.graph_ratio_b_over_a.notna().any():
        ax.plot(table.graph_ratio_b_over_a.where(timed), at, "kD", markersize=4)
        xlabel += "; diamonds: CUDA-graph replays"
    ax.axvspan(1 / (1 + threshold), 1 + threshold, color="0.9", zorder=0)
    ax.axvline(1, color="k", lw=0.8)
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ticks = _RATIO_TICKS if high / low <= 10 else _WIDE_RATIO_TICKS
    ax.set_xticks([r for r in ticks if low <= r <= high], minor=False)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yticks(at, labels, fontsize=8)
    ax.set_ylim(-0.6, len(table) - 0.4)
    ax.set_xlabel(xlabel + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
