"""The sweep runner's parts on a CPU: the error measures, each correctness gate failing a row
on its own, the layout and mode a row names, the timed steps, the bandwidth and memory
columns, speedups and the progress line."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
import torch
from bench_rows import bench_row
from kernel_checks import needs_kornia

from segtriton.bench import cli, runner
from segtriton.bench.baselines import PEERS
from segtriton.registry import get

CPU = torch.device("cpu")


def _case(loss: str, provider: str = "eager", mode: str = "fwd+bwd", fmt: str = "contiguous"):
    shape = get(loss).fit_shape((2, 3, 5, 7), get(loss).variants[0])
    return runner.Case(loss, provider, shape, "fp32", "int64", mode, fmt, 0.0)


def test_relative_error_counts_nan_and_shape_as_misses():
    nan, inf = math.nan, math.inf
    assert runner._max_rel(torch.tensor([nan, 2.0]), torch.tensor([nan, 4.0])) == 0.5
    assert runner._max_rel(torch.tensor([nan, 2.0]), torch.tensor([1.0, 2.0])) == inf
    assert runner._max_rel(torch.zeros(3), torch.zeros(3)) == 0  # an all-zero gradient
    assert runner._max_rel(torch.ones(2, 3), torch.ones(3)) == inf  # no broadcasting
    assert runner._off_share(torch.ones(2, 3), torch.ones(3), 1e-4) == inf


def _wrapped(monkeypatch, wrap):
    """Every provider's function passed through ``wrap(fn)``."""
    real = runner.make_provider
    monkeypatch.setattr(runner, "make_provider", lambda case, entry: wrap(real(case, entry)))


def _doubled(fn):
    """``fn`` with the same value and twice the gradient."""
    return lambda x, t, **o: fn(x.detach() + 2 * (x - x.detach()), t, **o)


def test_a_loss_value_off_fails_a_row_whose_gradient_is_right(monkeypatch):
    def off(fn):
        def loss(x, t, **o):
            value = fn(x, t, **o)
            return value + 1e-3 * value.detach()  # the value 0.1% high, the same gradient

        return loss

    _wrapped(monkeypatch, off)
    for mode in ("fwd", "fwd+bwd"):
        row = runner.run_case(_case("dice", mode=mode), CPU, copy_gbps=1.0, reps=1)
        assert row["loss_rel_err"] == pytest.approx(1e-3, rel=1e-3), row
        assert not row["passed"], row
    assert row["grad_rel_err"] < 1e-5, row


def test_a_combo_loss_is_judged_against_the_size_of_its_terms(monkeypatch, tmp_path):
    """Combo is a difference of two terms that can cancel: a value off by 5e-5 of the terms'
    size passes (though that is several times 1e-4 of the loss), one off by 1e-3 fails; the
    report says how the error was measured."""
    seen, rows = [], []

    def off(share):
        def wrap(fn):
            def loss(x, t, **o):
                value = fn(x, t, **o)
                size = get("combo").magnitude(x.detach().double(), t, **o)
                seen.append((value.item(), size.item()))
                return value + share * size.to(value.dtype)

            return loss

        return wrap

    for share, passed in ((5e-5, True), (1e-3, False)):
        with monkeypatch.context() as patch:
            _wrapped(patch, off(share))
            row = runner.run_case(_case("combo"), CPU, copy_gbps=1.0, reps=1)
        assert row["loss_rel_err"] == pytest.approx(share, rel=1e-2) and row["passed"] == passed
        rows.append(row)
    assert all(abs(value) < size / 4 for value, size in seen), seen  # the loss << its terms
    runner.save_rows(tmp_path, rows)
    cli.main(["report", str(tmp_path), "--out", str(tmp_path)])
    assert (
        "The loss error of combo (`loss_rel_err`) is relative to the size"
        in (tmp_path / "report.md").read_text()
    )


def test_a_kinked_loss_fails_on_the_share_of_its_gradient_off(monkeypatch):
    """A gradient twice the right one fails the erosion Hausdorff row (gated on the share of
    entries off the tolerance, not on the largest error)."""
    entry = get("hausdorff_er")
    assert entry.kinked
    row = runner.run_case(_case(entry.name), CPU, copy_gbps=1.0, reps=1)
    assert row["passed"] and row["grad_off_share"] == 0, row
    _wrapped(monkeypatch, _doubled)
    row = runner.run_case(_case(entry.name), CPU, copy_gbps=1.0, reps=1)
    assert row["loss_rel_err"] < 1e-6 and row["grad_off_share"] > 0.1, row
    assert not row["passed"], row


def test_a_row_runs_the_layout_and_mode_it_names(monkeypatch):
    seen = []

    def record(fn):
        def loss(x, t, **o):
            seen.append((x.is_contiguous(), x.is_contiguous(memory_format=torch.channels_last)))
            return fn(x, t, **o)

        return loss

    _wrapped(monkeypatch, record)
    for fmt, layout in (("channels_last", (False, True)), ("contiguous", (True, False))):
        seen.clear()
        row = runner.run_case(_case("dice", fmt=fmt), CPU, copy_gbps=1.0, reps=1)
        assert row["passed"] and set(seen) == {layout}, (fmt, seen)
    row = runner.run_case(_case("dice", mode="bwd"), CPU, copy_gbps=1.0, reps=1)
    assert row["passed"] and row["grad_rel_err"] < 1e-5, row  # bwd rows check the gradient
    row = runner.run_case(_case("dice", mode="fwd"), CPU, copy_gbps=1.0, reps=1)
    assert row["passed"] and math.isnan(row["grad_rel_err"]), row


@pytest.mark.parametrize("mode", ["fwd+bwd", "fwd"])
def test_a_row_derives_bandwidth_and_memory_from_its_measurements(monkeypatch, mode):
    """The columns the floor and memory targets read, from a stubbed 2 ms median and a
    5 MiB peak: GB/s is the byte model over the median, the floor share that over the copy
    bandwidth, and the extra memory beyond the gradient leaves out one logits-sized
    buffer when the row computes a gradient."""
    monkeypatch.setattr(runner, "time_fn", lambda *a, **k: {"median_ms": 2.0})
    monkeypatch.setattr(runner, "peak_memory", lambda step, device: 5 * 2**20)
    case = _case("dice", mode=mode)
    row = runner.run_case(case, CPU, copy_gbps=50.0, reps=1)
    assert row["passed"], row
    assert row["gbps"] == pytest.approx(row["bytes"] / 2e-3 / 1e9)
    assert row["pct_of_copy_bw"] == pytest.approx(2 * row["gbps"])
    grad = math.prod(case.shape) * 4 if mode == "fwd+bwd" else 0  # fp32 logits
    assert row["extra_mem_mb"] == 5.0
    assert row["extra_mem_beyond_grad_mb"] == pytest.approx(5.0 - grad / 2**20)


PEER_ROWS = [
    pytest.param(
        provider, loss, id=f"{provider}-{loss}", marks=needs_kornia if provider == "kornia" else ()
    )
    for provider, losses in PEERS.items()
    for loss in losses
]


@pytest.mark.parametrize(
    "shape", [(2, 3, 9, 11), (1, 2, 4, 5, 6), (2, 19, 3, 4)], ids=["2d", "3d", "absent"]
)
@pytest.mark.parametrize(("provider", "loss"), PEER_ROWS)
def test_every_peer_row_matches_the_reference_under_its_options(provider, loss, shape):
    """Each entry of the peer table passes the row's float64 check, with ignored pixels
    where the peer takes ``ignore_index`` and with classes absent from an image (19 classes
    over 12 pixels: the absent-class policy shows); a case the peer cannot take (ignored pixels,
    a volume for a 2-D loss) is refused by name instead of failing inside the peer."""
    peer = PEERS[provider][loss]
    shape = get(loss).fit_shape(shape, peer.options)
    for frac in (0.0, 0.2):
        case = runner.Case(loss, provider, shape, "fp32", "int64", "fwd+bwd", "contiguous", frac)
        refusal = f"{provider}'s {loss} " + (
            "has no ignore" if frac and not peer.ignores else "takes 2-D inputs only, not 3-D"
        )
        if peer.refusal(shape, frac):
            with pytest.raises(NotImplementedError, match=re.escape(refusal)):
                runner.run_case(case, CPU, copy_gbps=1.0, reps=1)
            options = get(loss).ignoring(peer.options)
            x, t = runner.case_inputs(case, get(loss), options, CPU)
            with pytest.raises((RuntimeError, ValueError)):  # the refusal is needed
                peer.factory()(x, t)
            continue
        row = runner.run_case(case, CPU, copy_gbps=1.0, reps=1)
        assert row["passed"], row


def test_no_preset_asks_a_peer_for_a_case_it_cannot_take():
    from segtriton.bench.spec import PRESETS, expand, load_spec

    for name in PRESETS:
        for case in expand(load_spec(name)):
            if case.provider in PEERS:
                peer = PEERS[case.provider][case.loss]
                assert peer.refusal(case.shape, case.ignore_frac) is None, (name, case)


def test_timed_steps_scale_the_backward_and_time_a_forward_without_a_graph():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def forward():
        return (x**2).sum()

    for mode in ("fwd+bwd", "bwd"):
        (grad,) = runner.make_step(mode, forward, x, scale=4.0)()
        torch.testing.assert_close(grad, 8 * x.detach(), rtol=0, atol=0)
    assert not runner.make_step("fwd", forward, x)().requires_grad


@pytest.mark.parametrize(
    "provider, mode",
    [("compile", "default"), ("compile-max-autotune", "max-autotune-no-cudagraphs")],
)
def test_compile_rows_compile_the_reference_in_their_mode_and_time_the_first_call(
    monkeypatch, provider, mode
):
    """A compile row hands the reference to ``torch.compile`` with its provider's mode and
    records the first call (where compiling happens) apart from the timed ones."""
    asked = []

    def compile_(fn, **kw):
        asked.append((fn, kw))
        return lambda *a, **k: (runner.time.sleep(0.05), fn(*a, **k))[1]

    monkeypatch.setattr(runner.torch, "compile", compile_)
    monkeypatch.setattr(runner, "time_fn", lambda *a, **k: {"median_ms": 1.0})
    row = runner.run_case(_case("dice", provider), CPU, copy_gbps=1.0, reps=1)
    assert asked == [(get("dice").reference, {"mode": mode, "dynamic": False})]
    assert row["passed"] and 0.05 <= row["first_call_s"] < 5, row


def test_every_compile_row_times_compiled_code():
    """Past its recompile limit Dynamo runs a function eagerly without a word, so a sweep's
    later compile rows would time eager code; each row starts from a fresh cache. With
    the limit at 1, every one of three shapes still compiles its own graphs. (The limit
    is set through Dynamo's own ``config.patch``: pytest 9.2's ``monkeypatch`` undoes a
    setattr on torch's config modules with a ``delattr``, which hides the option from
    every later compile in the process.)"""
    from torch._dynamo.utils import counters

    with torch._dynamo.config.patch(recompile_limit=1):
        for H in (5, 6, 7):
            graphs = counters["stats"]["unique_graphs"]
            shape = (2, 1, H, 7)
            case = runner.Case("bce", "compile", shape, "fp32", "int64", "fwd", "contiguous", 0)
            row = runner.run_case(case, CPU, copy_gbps=1.0, reps=1)
            assert row["passed"] and counters["stats"]["unique_graphs"] > graphs, (H, row)


def test_compile_rows_count_their_graph_breaks():
    """OHEM keeps pixels by a data-dependent threshold, so Dynamo breaks its graph there;
    Dice compiles whole; rows of other providers carry no count."""
    rows = {
        (loss, provider): runner.run_case(_case(loss, provider), CPU, copy_gbps=1.0, reps=1)
        for loss, provider in (("ohem_cross_entropy", "compile"), ("dice", "compile"),
                               ("dice", "eager"))
    }  # fmt: skip
    assert all(row["passed"] for row in rows.values()), rows
    assert rows["ohem_cross_entropy", "compile"]["graph_breaks"] > 0
    assert rows["dice", "compile"]["graph_breaks"] == 0
    assert "graph_breaks" not in rows["dice", "eager"]


def test_speedups_compare_rows_of_the_same_case_only():
    rows = [
        bench_row("dice", provider, "2x3x4x4", dtype, ms)
        for provider, dtype, ms in (
            ("eager", "fp32", 4.0),
            ("compile", "fp32", 2.0),
            ("triton", "fp32", 1.0),
            ("eager", "bf16", 8.0),
            ("triton", "bf16", 1.0),
        )
    ]
    df = runner.add_ratios(pd.DataFrame(rows))
    assert len(df) == 5
    tri = df[df.provider == "triton"].set_index("dtype")
    assert tri.speedup_vs_eager.to_dict() == {"fp32": 4.0, "bf16": 8.0}
    assert tri.speedup_vs_compile["fp32"] == 2.0 and math.isnan(tri.speedup_vs_compile["bf16"])


def test_progress_line_counts_from_one_and_gives_an_eta(monkeypatch, capsys):
    monkeypatch.setattr(runner.time, "perf_counter", lambda: 1090.0)
    runner.progress(3, 12, 1000.0, "dice eager")
    runner.progress(0, 12, 1000.0, "dice triton")
    assert capsys.readouterr().err.splitlines() == [
        "[ 4/12] 01:30 elapsed, ETA 04:30  dice eager",
        "[ 1/12] 01:30 elapsed, ETA --:--  dice triton",
    ]


def test_saved_rows_keep_small_errors(tmp_path):
    row = _case("dice").as_row() | {"loss_rel_err": 1.2345e-12, "median_ms": 0.5}
    runner.save_rows(tmp_path, [row])
    (saved,) = runner.load_rows(tmp_path)
    assert saved["loss_rel_err"] == pytest.approx(1.2345e-12, rel=1e-3)


def test_tie_order_gradients_are_gated_through_the_loss_they_imply(tmp_path, monkeypatch):
    """A provider whose gradient is twice the right one (same loss value) fails a Dice row
    on the gradient's error and a Lovasz row, whose gradient depends on how tied errors
    are ordered, on the loss that gradient implies; the report says how each was gated.
    The right gradient passes that gate at bf16, where errors tie."""
    for dtype in ("fp32", "bf16"):
        case = runner.Case("lovasz_softmax", "triton", (2, 3, 5, 7), dtype, "int64",
                           "fwd+bwd", "contiguous", 0.2)  # fmt: skip
        row = runner.run_case(case, CPU, copy_gbps=1.0, reps=1)
        assert row["passed"] and row["grad_identity_err"] < runner.GRAD_TOL[dtype] / 10, row
    _wrapped(monkeypatch, _doubled)
    rows = []
    for loss in ("dice", "lovasz_softmax", "lovasz_hinge"):
        row = runner.run_case(_case(loss), CPU, copy_gbps=1.0, reps=1)
        assert row["loss_rel_err"] < 1e-6 and row["grad_rel_err"] > 0.5, row
        assert not row["passed"], row
        if loss != "dice":
            assert row["grad_identity_err"] == pytest.approx(1.0, rel=1e-5), row
        rows.append(row)
    runner.save_rows(tmp_path, rows)
    cli.main(["report", str(tmp_path), "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert "Rows of lovasz_hinge, lovasz_softmax are gated on their gradient" in report
