"""Reports from saved rows: the production recommendation, shape regimes, tables, merged
runs, the speedup heatmap's numbers, pytest-benchmark rows and the comparison of two runs."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
from bench_rows import bench_row, save_run

from segtriton.bench import report

NAN = math.nan


def _row(provider: str, shape: str, median_ms: float, **extra) -> dict:
    return bench_row("dice", provider, shape, "fp32", median_ms, **extra)


def test_regimes_split_at_their_stated_bounds():
    assert report._regime("1x2x1024x1024") == "binary (C<=2), <=1M px"
    assert report._regime("1x3x1024x1025") == "C<=32, <=16M px"
    assert report._regime("16x32x1024x1024") == "C<=32, <=16M px"
    assert report._regime("17x33x1024x1024") == "C>32, >16M px"


def test_the_recommendation_is_the_fastest_provider_that_passed():
    small, larger, binary = "2x19x64x64", "2x19x128x128", "2x2x64x64"
    rows = [
        _row("triton", small, 1.0),
        _row("triton", larger, 2.0),
        _row("smp", small, 2.0),
        _row("smp", larger, 3.0),
        _row("eager", small, 4.0),
        _row("eager", larger, 10.0),
        _row("compile", small, 0.5, passed=False),  # fastest, but wrong
        _row("monai", small, 0.1, passed=None),  # pytest-benchmark: never checked
        _row("kornia", larger, NAN),  # not timed
        _row("eager", binary, 1.0),
        _row("triton", binary, 2.0),
    ]
    rec = report.recommendations(pd.DataFrame(rows)).set_index("regime")
    assert sorted(rec.index) == ["C<=32, <=1M px", "binary (C<=2), <=1M px"]
    multi = rec.loc["C<=32, <=1M px"]
    assert multi["use"] == "triton" and multi["median ms"] == 1.5  # medians over the shapes
    assert multi["x faster than next"] == pytest.approx(2.5 / 1.5)  # smp
    assert multi["x faster than eager"] == pytest.approx(7.0 / 1.5)
    assert multi["cases"] == 2
    binary_rec = rec.loc["binary (C<=2), <=1M px"]
    assert binary_rec["use"] == "eager" and binary_rec["x faster than next"] == 2.0
    assert multi["not ranked"] == "compile (failed), kornia (not timed), monai (not checked)"
    assert binary_rec["not ranked"] == "-"


def test_providers_are_ranked_on_the_cases_they_all_passed():
    """A provider that passed only the cheap case of a regime (it ran out of memory or
    failed at the others) is not ranked against medians over more cases."""
    small, larger = "2x19x64x64", "2x19x128x128"
    rows = [
        _row("triton", small, 1.0),
        _row("triton", larger, 4.0),
        _row("triton", small, 2.0, memory_format="channels_last"),
        _row("eager", small, 3.0),
        _row("eager", larger, 9.0),
        _row("eager", small, 5.0, memory_format="channels_last"),
        _row("compile", small, 0.5),
        _row("compile", larger, NAN, error="OutOfMemoryError"),
        _row("compile", small, 0.6, memory_format="channels_last", passed=False),
    ]
    (rec,) = report.recommendations(pd.DataFrame(rows)).to_dict(orient="records")
    assert rec["use"] == "triton" and rec["median ms"] == 2.0 and rec["cases"] == 3
    assert rec["x faster than next"] == rec["x faster than eager"] == 2.5
    assert rec["not ranked"] == "compile (1 of 3)"


def test_without_a_provider_passing_every_case_the_best_covered_share_theirs():
    a, b, c = "2x19x64x64", "2x19x96x96", "2x19x128x128"
    rows = [
        _row("triton", a, 1.0),
        _row("triton", b, 2.0),
        _row("eager", a, 4.0),
        _row("eager", c, 8.0),
        _row("smp", a, 3.0),
    ]
    (rec,) = report.recommendations(pd.DataFrame(rows)).to_dict(orient="records")
    assert (rec["use"], rec["median ms"], rec["cases"]) == ("triton", 1.0, 1)
    assert rec["x faster than next"] == 3.0 and rec["x faster than eager"] == 4.0
    assert rec["not ranked"] == "-"
    rows[2]["shape"] = "2x19x80x80"  # triton and eager share no case: the first one's (eager)
    (rec,) = report.recommendations(pd.DataFrame(rows)).to_dict(orient="records")
    assert (rec["use"], rec["median ms"], rec["cases"]) == ("eager", 6.0, 2)
    assert rec["not ranked"] == "smp (1 of 4), triton (2 of 4)"


def test_markdown_tables_round_floats_and_dash_nan():
    df = pd.DataFrame({"a": [1.23456, NAN, 123456.7], "b": ["x", "y", "z"]})
    assert report.md_table(df).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| 1.23 | x |",
        "| - | y |",
        "| 123457 | z |",
    ]


def test_a_later_run_wins_on_the_same_case(tmp_path):
    a = save_run(tmp_path / "a", [_row("triton", "2x3x4x4", 1.0), _row("eager", "2x3x4x4", 4.0)])
    b = save_run(tmp_path / "b", [_row("triton", "2x3x4x4", 2.0)])
    df, _ = report.load_runs([a, b])
    assert df.set_index("provider").median_ms.to_dict() == {"triton": 2.0, "eager": 4.0}
    assert df.set_index("provider").speedup_vs_eager["triton"] == 2.0


def test_the_speedup_heatmap_reads_triton_rows_only():
    rows = [
        _row("triton", "2x19x64x64", 1.0, speedup_vs_eager=4.0),
        _row("triton", "2x19x64x64", 1.0, speedup_vs_eager=2.0),
        _row("eager", "2x19x64x64", 4.0, speedup_vs_eager=1.0),
        _row("triton", "2x150x64x64", 1.0, speedup_vs_eager=NAN),
    ]
    table = report.speedup_table(pd.DataFrame(rows), "eager")
    assert table.to_dict() == {2 * 64 * 64: {19: 3.0}}


def _benchmark_file(path):
    """A ``pytest --benchmark --benchmark-json`` file with one loss row."""
    info = _row("triton", "2x3x4x4", NAN) | {"device": "cpu", "copy_gbps": 10.0}
    del info["median_ms"], info["passed"]
    stats = {"median": 2e-3, "q1": 1e-3, "q3": 4e-3, "rounds": 7}
    path.write_text(json.dumps({"benchmarks": [{"extra_info": info, "stats": stats}]}))
    return path


def test_pytest_benchmark_rows_are_charted_never_recommended(tmp_path):
    df, (meta,) = report.load_runs([_benchmark_file(tmp_path / "bench.json")])
    (row,) = df.to_dict(orient="records")
    assert (row["median_ms"], row["p20_ms"], row["p80_ms"], row["reps"]) == (2.0, 1.0, 4.0, 7)
    assert row["passed"] is None and meta["copy_bandwidth_gbps"] == 10.0
    assert report.recommendations(df).empty


def test_an_empty_benchmark_json_is_named(tmp_path):
    """A pytest --benchmark run stopped at its time cap leaves its JSON file empty."""
    empty = tmp_path / "bench.json"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"bench\.json is empty"):
        report.load_runs([empty])


def test_the_report_counts_interpreter_rows(tmp_path):
    rows = [
        _row("triton", "2x3x4x4", NAN, timer="not measured (Triton interpreter)"),
        _row("triton", "2x3x8x8", NAN, timer="not measured (Triton interpreter)"),
        _row("triton", "2x3x16x16", 1.0),  # rows without a spread are charted too
        _row("eager", "2x3x4x4", 2.0),
    ]
    run = save_run(tmp_path / "run", rows)
    text = report.build_report([run], run).read_text()
    assert "2 Triton row(s) ran in Triton's CPU interpreter" in text
    assert (run / "time.png").stat().st_size > 0
    assert "graph breaks" not in text
    embedded = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert "time.png" in embedded and "speedup_eager.png" not in embedded  # no common case
    assert all((run / name).is_file() for name in embedded), embedded


def test_the_report_names_losses_whose_compiled_graph_broke(tmp_path):
    rows = [
        _row("compile", "2x3x4x4", 1.0, graph_breaks=0),
        bench_row("boundary", "compile", "2x3x4x4", "fp32", 1.0, graph_breaks=7),
        bench_row("boundary", "compile", "2x3x8x8", "fp32", 1.0, graph_breaks=9),
        bench_row("boundary", "eager", "2x3x8x8", "fp32", 2.0),
    ]
    run = save_run(tmp_path / "run", rows)
    text = report.build_report([run], run).read_text()
    assert "(most graph breaks in one first call): boundary (9)." in text


def test_the_tables_tell_apart_rows_that_differ_only_in_label_dtype(tmp_path):
    """Two rows of one loss, provider, shape and dtype on uint16 and int64 labels: both
    tables name the label dtype (and the failed one the layout); a run of one label dtype
    shows no such column."""
    rows = [
        _row("triton", "2x3x4x4", 1.0),
        _row("triton", "2x3x4x4", 1.0, label_dtype="uint16", passed=False, loss_rel_err=0.5),
    ]
    run = save_run(tmp_path / "run", rows)
    text = report.build_report([run], run).read_text()
    header = "| loss | provider | shape | dtype | mode | memory_format | label_dtype |"
    assert text.count(header) == 2, text  # failed rows, all rows
    failed = text.split("failed correctness or errored")[1].split("## ")[0]
    assert "| dice | triton | 2x3x4x4 | fp32 | fwd+bwd | contiguous | uint16 | 0.5 |" in failed
    one = save_run(tmp_path / "one", rows[:1])
    assert "label_dtype" not in report.build_report([one], one).read_text()


def test_compare_lists_rows_timed_in_both_runs(tmp_path):
    a = save_run(tmp_path / "a", [_row("triton", "2x3x4x4", 1.0), _row("eager", "2x3x4x4", 2.0)])
    b = save_run(tmp_path / "b", [_row("triton", "2x3x4x4", 1.01), _row("eager", "2x3x4x4", NAN)])
    table, regressions = report.compare(a, b, threshold=0.05)
    assert list(table.provider) == ["triton"] and regressions == 0


def test_the_comparison_chart_colours_each_case_by_its_ratio(tmp_path, monkeypatch):
    """A bar per case from 1 to b's time over a's: red beyond the threshold, green faster
    beyond it, grey within; a case that failed in b has no bar and says why, the first
    row of the table at the top."""
    from matplotlib.axes import Axes

    drawn = {}
    barh, set_yticks = Axes.barh, Axes.set_yticks

    def record_bars(self, y, width, left=None, color=None, **kw):
        drawn.update(y=list(y), width=list(width), color=list(color))
        return barh(self, y, width, left=left, color=color, **kw)

    def record_ticks(self, ticks, labels=None, **kw):
        drawn["labels"] = dict(zip(ticks, labels, strict=True))
        return set_yticks(self, ticks, labels, **kw)

    monkeypatch.setattr(Axes, "barh", record_bars)
    monkeypatch.setattr(Axes, "set_yticks", record_ticks)
    shapes = ["2x3x4x4", "2x3x8x8", "2x3x16x16", "2x3x32x32"]
    a = save_run(tmp_path / "a", [_row("triton", s, 1.0) for s in shapes])
    b = save_run(
        tmp_path / "b",
        [
            _row("triton", shapes[0], 1.5),
            _row("triton", shapes[1], 0.5),
            _row("triton", shapes[2], 1.02),
            _row("triton", shapes[3], 1.5, passed=False),
        ],
    )
    table, regressions = report.compare(a, b, threshold=0.05)
    path = report.compare_chart(table, 0.05, tmp_path / "compare.png", ("a", "b"))
    assert path.stat().st_size > 0 and regressions == 2
    assert drawn["y"] == [3, 2, 1, 0]
    assert drawn["width"] == pytest.approx([0.5, -0.5, 0.02, 0.0])
    assert drawn["color"] == ["tab:red", "tab:green", "0.6", "0.6"]
    assert drawn["labels"][0] == "dice triton 2x3x32x32 fp32 (failed the check in b)"
    assert drawn["labels"][3] == "dice triton 2x3x4x4 fp32"


def test_the_report_of_a_benchmark_file_goes_beside_it(tmp_path):
    from segtriton.bench.cli import main

    assert main(["report", str(_benchmark_file(tmp_path / "bench.json"))]) == 0
    assert "1 row(s) come from pytest-benchmark" in (tmp_path / "report.md").read_text()


def test_charts_draw_the_rows_numbers(tmp_path, monkeypatch):
    """The time chart's error bars run from p20 to p80 around the median, along logit
    elements in increasing order; the heatmap writes a speedup in each cell that has one
    and nothing in a cell without."""
    from matplotlib.axes import Axes

    bars, texts = [], []
    errorbar, text = Axes.errorbar, Axes.text

    def record_bars(self, x, y, yerr=None, **kw):
        bars.append((list(x), list(y), [list(e) for e in yerr]))
        return errorbar(self, x, y, yerr=yerr, **kw)

    def record_text(self, x, y, s, **kw):
        texts.append(s)
        return text(self, x, y, s, **kw)

    monkeypatch.setattr(Axes, "errorbar", record_bars)
    monkeypatch.setattr(Axes, "text", record_text)
    rows = [
        _row("triton", "2x3x8x8", 4.0, p20_ms=3.0, p80_ms=7.0),
        _row("triton", "2x3x4x4", 2.0, p20_ms=1.5, p80_ms=3.0),
    ]
    assert report._chart_time(pd.DataFrame(rows), tmp_path / "time.png")
    assert bars == [([2 * 3 * 16, 2 * 3 * 64], [2.0, 4.0], [[0.5, 1.0], [1.0, 3.0]])]
    rows = [
        _row("triton", "2x3x4x4", 1.0, speedup_vs_eager=2.0),
        _row("triton", "2x19x8x8", 1.0, speedup_vs_eager=3.0),
    ]
    assert report._chart_speedup(pd.DataFrame(rows), tmp_path / "speedup.png", "eager")
    assert sorted(texts) == ["2.0x", "3.0x"]


def test_size_ticks_label_the_sizes_drawn_without_crowding():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    report._size_ticks(ax, pd.Series([1_250_000, 1_800_000, 39_800_000, 300_000, 1_250_000]))
    assert list(ax.get_xticks()) == [300_000, 1_250_000, 39_800_000]  # 1.8M: within 1.5x
    assert [t.get_text() for t in ax.get_xticklabels()] == ["300k", "1.25M", "39.8M"]
    plt.close(fig)


def test_a_chart_line_never_joins_two_kinds_of_case(tmp_path, monkeypatch):
    """fwd and fwd+bwd rows get panels of their own, and layouts their own lines (named in
    the legend); the bar charts keep them apart as cases instead of averaging them."""
    from matplotlib.axes import Axes

    lines, bars, markers = [], [], {}
    errorbar = Axes.errorbar

    def record(self, x, y, yerr=None, label=None, **kw):
        lines.append((self, label, list(y)))
        markers[label] = kw["marker"]
        return errorbar(self, x, y, yerr=yerr, label=label, **kw)

    monkeypatch.setattr(Axes, "errorbar", record)
    rows = [
        _row("triton", shape, ms, mode=mode, memory_format=fmt, p20_ms=ms, p80_ms=ms)
        for mode, base in (("fwd", 1.0), ("fwd+bwd", 3.0))
        for fmt, extra in (("contiguous", 0.0), ("channels_last", 0.5))
        for shape, ms in (("2x3x4x4", base + extra), ("2x3x8x8", 2 * base + extra))
    ]
    assert report._chart_time(pd.DataFrame(rows), tmp_path / "time.png")
    assert sorted((ax.get_title(), label, y) for ax, label, y in lines) == [
        ("dice fwd", "triton fp32 channels_last", [1.5, 2.5]),
        ("dice fwd", "triton fp32 contiguous", [1.0, 2.0]),
        ("dice fwd+bwd", "triton fp32 channels_last", [3.5, 6.5]),
        ("dice fwd+bwd", "triton fp32 contiguous", [3.0, 6.0]),
    ]
    # the two layouts' lines share colour and line style: each has its marker
    assert markers["triton fp32 channels_last"] != markers["triton fp32 contiguous"]
    plot = pd.DataFrame.plot

    def record_bars(self):
        bars.append(self)
        return plot(self)

    monkeypatch.setattr(pd.DataFrame, "plot", property(record_bars))
    df = pd.DataFrame(rows).assign(pct_of_copy_bw=lambda d: 10 * d.median_ms)
    assert report._chart_bars(df, "pct_of_copy_bw", "%", tmp_path / "floor.png")
    (pivot,) = bars
    assert pivot.loc["dice 2x3x4x4 fp32 fwd channels_last", "triton"] == 15.0
    assert pivot.shape == (8, 1)


def test_a_provider_looks_the_same_in_every_chart(tmp_path, monkeypatch):
    """One colour per provider in every panel of the time chart and in the bar charts (its
    CUDA-graph bars a shade of it), one line style per dtype, so the time chart's panels
    share one legend; every provider of the sweep gets a colour of its own, other names
    colours of another palette."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from segtriton.bench.spec import PROVIDERS

    colors = [report.provider_color(p) for p in PROVIDERS]
    assert len(set(colors)) == len(PROVIDERS)
    assert report.provider_color("triton (CUDA graph)") not in colors
    others = {report.provider_color(p) for p in ("bincount", "scipy", "cupy", "torchmetrics")}
    assert len(others) == 4 and not others & set(colors)
    drawn = []
    errorbar = Axes.errorbar

    def record(self, x, y, yerr=None, label=None, **kw):
        drawn.append((label, kw["color"], kw["linestyle"]))
        return errorbar(self, x, y, yerr=yerr, label=label, **kw)

    monkeypatch.setattr(Axes, "errorbar", record)
    plain, labelled = report._plain_log_labels, []
    monkeypatch.setattr(report, "_plain_log_labels", lambda a: labelled.append(a) or plain(a))
    legends = []
    monkeypatch.setattr(Figure, "legend", lambda f, h, labels, **kw: legends.append(labels))
    rows = [
        bench_row(loss, provider, shape, dtype, ms, p20_ms=ms, p80_ms=ms)
        for loss, providers in (("dice", ("eager", "triton")), ("lovasz_softmax", ("triton",)))
        for provider in providers
        for dtype in ("fp32", "bf16")
        for shape, ms in (("2x3x4x4", 1.0), ("2x3x8x8", 2.0))
    ]
    assert report._chart_time(pd.DataFrame(rows), tmp_path / "time.png")
    assert set(drawn) == {
        ("eager fp32", report.provider_color("eager"), "-"),
        ("eager bf16", report.provider_color("eager"), "--"),
        ("triton fp32", report.provider_color("triton"), "-"),
        ("triton bf16", report.provider_color("triton"), "--"),
    }
    assert len(drawn) == 6  # lovasz_softmax's triton lines take dice's triton colours
    assert [a.axis_name for a in labelled] == ["y", "y"]  # each panel's time axis
    assert legends == [["eager bf16", "eager fp32", "triton bf16", "triton fp32"]]
    bars = []
    barh = pd.plotting.PlotAccessor.barh

    def record_bars(self, *args, **kw):
        bars.append(kw["color"])
        return barh(self, *args, **kw)

    monkeypatch.setattr(pd.plotting.PlotAccessor, "barh", record_bars)
    df = pd.DataFrame(rows).assign(pct_of_copy_bw=10.0, graph_pct_of_copy_bw=20.0)
    assert report._chart_bars(
        report._with_graph_rows(df), "pct_of_copy_bw", "%", tmp_path / "f.png"
    )
    assert bars == [
        {
            p: report.provider_color(p)
            for p in ("eager", "eager (CUDA graph)", "triton", "triton (CUDA graph)")
        }
    ]


def test_log_axes_are_labelled_in_plain_numbers(tmp_path):
    """A time axis spanning less than a decade labels its minor ticks as 0.4, 0.6, not in
    powers of ten; one spanning decades keeps to 0.1, 1, 10."""
    import matplotlib.pyplot as plt

    fig, (narrow, wide) = plt.subplots(1, 2)
    for ax, (low, high) in ((narrow, (0.3, 0.9)), (wide, (0.05, 50))):
        ax.plot([1, 2], [low, high])
        ax.set_yscale("log")
        report._plain_log_labels(ax.yaxis)
    fig.savefig(tmp_path / "axes.png")
    labels = {
        ax: [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
        for ax in (narrow, wide)
    }
    assert {"0.4", "0.6"} <= set(labels[narrow])
    assert {"0.1", "1", "10"} <= set(labels[wide]) and "20" not in labels[wide]
    assert not any("times" in t or "$" in t for t in labels[narrow] + labels[wide])
    plt.close(fig)


@pytest.mark.parametrize(
    ("commit", "shown"),
    [("0123456789abcdef", "0123456789"), ("0123456789abcd-dirty", "0123456789-dirty")],
)
def test_the_report_header_keeps_a_dirty_mark(tmp_path, commit, shown):
    run = save_run(tmp_path / "run", [_row("triton", "2x3x4x4", 1.0)])
    (run / "meta.json").write_text(json.dumps({"git_commit": commit}))
    assert f"(commit {shown});" in report.build_report([run], run).read_text()
