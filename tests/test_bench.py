"""The benchmark pipeline on a CPU: spec expansion, byte models, a small sweep through the
CLI (rows, resume, error rows, report with charts) and the comparison of two runs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from bench_rows import bench_row, save_run
from kernel_checks import NO_KORNIA, needs_kornia

from segtriton.bench import runner
from segtriton.bench.cli import main
from segtriton.bench.report import compare
from segtriton.bench.spec import (
    FORMATS,
    PRESETS,
    SpecError,
    expand,
    load_spec,
    provider_options,
)
from segtriton.registry import get, make_inputs, minimal_bytes


def _sweep(tmp_path, spec_toml: str) -> tuple[int, pd.DataFrame]:
    """``segtriton sweep --reps 2`` of a TOML spec into ``tmp_path``: exit code and rows."""
    spec, out = tmp_path / "spec.toml", tmp_path / "run"
    spec.write_text(spec_toml)
    code = main(["sweep", "--spec", str(spec), "--out", str(out), "--reps", "2"])
    return code, pd.read_json(out / "rows.json")


def test_presets_expand_and_adapt_binary_losses():
    for name in PRESETS:
        assert expand(load_spec(name))
    cases = expand({**load_spec("quick"), "losses": ["lovasz_hinge"], "providers": ["eager"]})
    assert {c.shape[1] for c in cases} == {1}
    with pytest.raises(ValueError, match="unknown preset"):
        load_spec("huge")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"losses": ["dise"]}, r"losses: unknown \['dise'\]"),
        ({"dtypes": ["fp8"]}, r"dtypes: unknown \['fp8'\]"),
        ({"providers": "eager"}, "providers must be a non-empty list"),
        ({"shapes": [[2, 3]]}, "is not \\[B, C, \\*spatial\\]"),
        ({"shapes": [[2, 3, 0, 4]]}, "positive ints"),
        ({"ignore_frac": 1.5}, r"ignore_frac must be a number in \[0, 1\)"),
        ({"ignore_frac": 1.0}, r"ignore_frac must be a number in \[0, 1\)"),
        ({"ignore_frac": False}, r"ignore_frac must be a number in \[0, 1\), got False"),
        ({"dtypes": []}, r"dtypes must be a non-empty list of names, got \[\]"),
        ({"shapes": [[2, True, 4, 4]]}, "positive ints"),
        ({"shape": [[2, 3, 4, 4]]}, r"unknown keys \['shape'\]"),
    ],
)
def test_bad_specs_are_named(change, message):
    with pytest.raises(SpecError, match=message):
        expand({**load_spec("quick"), **change})


def test_a_spec_needs_losses_and_shapes():
    with pytest.raises(SpecError, match="give a preset or a spec file"):
        load_spec()
    quick = load_spec("quick")
    del quick["shapes"]
    with pytest.raises(SpecError, match="a spec needs 'losses' and 'shapes'"):
        expand(quick)


def test_expand_leaves_out_cases_a_loss_cannot_run_and_repeats():
    spec = {**load_spec("quick"), "providers": ["eager"], "ignore_frac": 0.1}

    def cases(losses, shapes, **more):
        return expand({**spec, "losses": losses, "shapes": shapes, **more})

    assert cases(["boundary"], [[2, 1, 8, 8]]) == []  # it needs two classes
    layouts = cases(["dice"], [[2, 3, 16], [2, 3, 4, 4]], memory_formats=FORMATS)
    assert [(len(c.shape), c.memory_format) for c in layouts] == [
        (3, "contiguous"), (4, "contiguous"), (4, "channels_last")
    ]  # fmt: skip
    # a binary loss takes C = 1 from both shapes: one case, not two
    hinge = cases(["lovasz_hinge"], [[2, 3, 8, 8], [2, 5, 8, 8]])
    assert [c.shape for c in hinge] == [(2, 1, 8, 8)]
    # no pixel of a loss without ignore_index is ignored, and its rows say so
    fracs = {c.loss: c.ignore_frac for c in cases(["dice", "cross_entropy_probs"], [[2, 3, 4, 4]])}
    assert fracs == {"dice": 0.1, "cross_entropy_probs": 0.0}
    # a loss on masks runs once over several label dtypes (its masks take the logits' dtype)
    both = cases(["bce", "dice"], [[2, 3, 4, 4]], label_dtypes=["uint16", "int64"])
    assert [(c.loss, c.label_dtype) for c in both] == [
        ("bce", "uint16"), ("dice", "uint16"), ("dice", "int64")
    ]  # fmt: skip
    assert both[1].describe() == "dice eager fp32 [2, 3, 4, 4] fwd+bwd uint16 labels"


def test_cli_reports_a_bad_spec_file(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('losses = ["dice"]\nshapes = "abc"\n')
    assert main(["sweep", "--spec", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "shapes must be a list of [B, C, *spatial] lists" in capsys.readouterr().err
    spec.write_text("losses = [\n")
    assert main(["sweep", "--spec", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read spec file" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "segtriton report: error: no rows.json in" in capsys.readouterr().err
    # a peer without the loss asked for: no cases, said before any folder is made
    spec.write_text('losses = ["jaccard"]\nproviders = ["kornia"]\nshapes = [[2, 3, 8, 8]]\n')
    assert main(["sweep", "--spec", str(spec), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert (
        "the spec gives no cases" in err
        and "{'kornia': ['dice', 'hausdorff_er', 'softmax_focal']}" in err
    )
    assert not (tmp_path / "none").exists()


def test_sweep_takes_shapes_and_label_dtypes_on_the_command_line(tmp_path, capsys):
    """``--shape`` (repeated) and ``--label-dtypes`` replace the spec's axes; with a preset
    that lists cases (targets) the shapes replace the list; a bad shape is refused before
    any folder is made."""
    base = ["sweep", "--losses", "dice", "--providers", "eager", "--reps", "1"]
    shapes = ["--shape", "2,3,5,7", "--shape", "1,2,3,4,5"]
    out = tmp_path / "flags"
    assert main([*base, *shapes, "--label-dtypes", "uint8,int32", "--out", str(out)]) == 0
    rows = json.loads((out / "rows.json").read_text())
    assert {(r["shape"], r["label_dtype"]) for r in rows} == {
        (s, d) for s in ("2x3x5x7", "1x2x3x4x5") for d in ("uint8", "int32")
    }
    out = tmp_path / "targets"
    targets = ["--preset", "targets", "--providers", "eager", "--reps", "1", *shapes[:2]]
    assert main(["sweep", *targets, "--out", str(out)]) == 0
    rows = json.loads((out / "rows.json").read_text())
    assert {r["loss"] for r in rows} == {name for name, _, _ in load_spec("targets")["cases"]}
    assert {r["shape"] for r in rows} <= {"2x3x5x7", "2x1x5x7"}  # binary losses: C = 1
    assert {r["dtype"] for r in rows} == {"bf16", "fp32"}
    assert main([*base, "--shape", "2,3", "--out", str(tmp_path / "bad")]) == 2
    assert "--shape needs positive integers B,C and spatial sizes, got 2,3" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "bad").exists()


def test_byte_models():
    ce, dice = get("cross_entropy"), get("dice")
    shape = (8, 19, 512, 1024)
    logits = 8 * 19 * 512 * 1024 * 2
    labels = 8 * 512 * 1024 * 8
    bf16, i64 = torch.bfloat16, torch.int64
    assert minimal_bytes(ce, shape, bf16, i64, "fwd+bwd") == 2 * logits + labels
    assert minimal_bytes(ce, shape, bf16, i64, "fwd") == logits + labels
    assert minimal_bytes(dice, shape, bf16, i64, "fwd+bwd") == 3 * logits + 2 * labels
    assert minimal_bytes(ce, shape, bf16, i64, "bwd") == logits  # the gradient, written
    assert minimal_bytes(dice, shape, bf16, i64, "bwd") == 2 * logits + labels  # pass 2
    masks = logits  # bf16 masks, one per logit
    assert minimal_bytes(get("bce"), shape, bf16, bf16, "fwd+bwd") == 2 * logits + masks
    multilabel = {"mode": "multilabel"}
    assert minimal_bytes(dice, shape, bf16, bf16, "fwd", multilabel) == logits + masks


def test_sweep_report_resume_and_errors(tmp_path, capsys, monkeypatch):
    real = runner.make_provider

    def failing_boundary_kernel(case, entry):  # a provider that fails, as a compile error would
        if case.provider == "triton" and case.loss == "boundary":
            raise RuntimeError("simulated failure")
        return real(case, entry)

    monkeypatch.setattr(runner, "make_provider", failing_boundary_kernel)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'losses = ["dice", "boundary"]\nproviders = ["triton", "eager"]\n'
        'shapes = [[2, 3, 9, 11]]\ndtypes = ["fp32"]\nmodes = ["fwd+bwd", "fwd"]\n'
    )
    out = tmp_path / "run"
    code = main(["sweep", "--spec", str(spec), "--out", str(out), "--reps", "3"])
    rows = pd.read_json(out / "rows.json")
    assert len(rows) == 8 and code == 1  # the failing provider: two error rows
    errors = rows[rows.error.notna()]
    assert set(errors.provider) == {"triton"} and set(errors.loss) == {"boundary"}
    ok = rows[rows.error.isna()]
    assert ok.passed.all()
    triton = ok[ok.provider == "triton"]
    if not torch.cuda.is_available():
        assert triton.median_ms.isna().all() and triton.timer.str.contains("not measured").all()
    eager = ok[ok.provider == "eager"]
    assert (eager.median_ms > 0).all() and (eager.pct_of_copy_bw > 0).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["copy_bandwidth_gbps"] > 0 and meta["torch"] == torch.__version__
    floor = 100 * eager.gbps / meta["copy_bandwidth_gbps"]
    assert eager.pct_of_copy_bw.tolist() == pytest.approx(floor.tolist(), rel=1e-6)
    report = (out / "report.md").read_text()
    assert "## Recommendation" in report and "failed correctness or errored" in report
    assert (out / "time.png").stat().st_size > 0
    assert pd.read_csv(out / "rows.csv").shape[0] == 8
    # a resumed sweep keeps finished rows and runs nothing new
    args = ["sweep", "--spec", str(spec), "--out", str(out), "--reps", "3", "--resume"]
    main([*args, "--cuda-graph"])
    assert "0 cases" not in capsys.readouterr().err
    assert len(pd.read_json(out / "rows.json")) == 8
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cuda_graph"] is torch.cuda.is_available()  # a GPU timer; the CPU ignores it
    assert len(meta["commands"]) == 2 and "--resume" in meta["commands"][1]
    assert "`, then `" in (out / "report.md").read_text()
    assert main(["report", str(out)]) == 0
    # without --resume, the folder's rows are replaced; --dtypes, --modes and
    # --memory-formats narrow the spec
    args = ["--losses", "dice", "--dtypes", "bf16", "--modes", "fwd"]
    main(["sweep", "--spec", str(spec), "--out", str(out), "--reps", "3", *args])
    rows = pd.read_json(out / "rows.json")
    assert len(rows) == 2 and set(rows.dtype + " " + rows["mode"]) == {"bf16 fwd"}
    args += ["--memory-formats", "channels_last", "--resume"]
    main(["sweep", "--spec", str(spec), "--out", str(out), "--reps", "3", *args])
    rows = pd.read_json(out / "rows.json")
    assert sorted(rows.memory_format) == ["channels_last"] * 2 + ["contiguous"] * 2
    assert rows.passed.all()


def _run(path, ms):
    return save_run(path, [bench_row("dice", p, "2x3x4x4", "fp32", v) for p, v in ms.items()])


@pytest.mark.parametrize("reps", ["0", "-3", "x"])
def test_repetitions_must_be_positive(tmp_path, capsys, reps):
    """``--reps 0`` once ran the whole sweep and failed every timed row at the end."""
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--preset", "quick", "--reps", reps, "--out", str(tmp_path / "r")])
    assert stop.value.code == 2 and not (tmp_path / "r").exists()
    assert f"argument --reps: needs a positive integer, got '{reps}'" in capsys.readouterr().err


def test_merging_runs_needs_an_out_folder(tmp_path, capsys):
    """``segtriton report A B`` would write the merged report into B over B's own: it asks
    for ``--out`` instead; one run rebuilds in place."""
    a = _run(tmp_path / "a", {"eager": 1.0, "compile": 1.2})
    b = _run(tmp_path / "b", {"eager": 2.0, "compile": 1.5})
    assert main(["report", str(a), str(b)]) == 2
    assert "merging runs from several folders needs --out DIR" in capsys.readouterr().err
    assert sorted(p.name for p in b.iterdir()) == ["rows.json"]
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    assert (tmp_path / "both" / "report.md").exists()
    assert main(["report", str(b)]) == 0
    assert (b / "report.md").exists()


def test_compare_flags_regressions(tmp_path):
    a = _run(tmp_path / "a", {"eager": 1.0, "compile": 1.0})
    b = _run(tmp_path / "b", {"eager": 1.02, "compile": 1.3})
    table, regressions = compare(a, b, threshold=0.05)
    assert regressions == 1
    assert table.set_index("provider").regression.to_dict() == {"eager": False, "compile": True}
    assert main(["compare", str(a), str(b)]) == 1


def test_compare_refuses_runs_without_a_case_in_common(tmp_path, capsys):
    """Two runs of different cases would compare as '0 regressions' and exit 0."""
    a = _run(tmp_path / "a", {"eager": 1.0})
    b = save_run(tmp_path / "b", [bench_row("dice", "eager", "2x3x8x8", "fp32", 1.0)])
    assert main(["compare", str(a), str(b)]) == 2
    assert "have no timed case in common" in capsys.readouterr().err


def test_compare_flags_cases_that_stop_passing(tmp_path, capsys):
    """A case that passed in the old run and fails its check, or errors, in the new one is
    a regression whatever its time; one failing in both, or not checked (pytest-benchmark
    rows), is compared on time alone."""
    shape, oom = "2x3x4x4", "OutOfMemoryError"
    old = [
        bench_row("dice", "triton", shape, "fp32", 1.0),
        bench_row("dice", "compile", shape, "fp32", 1.0),
        bench_row("dice", "eager", shape, "fp32", 1.0, passed=False),
        bench_row("dice", "smp", shape, "fp32", 1.0, passed=None),
        bench_row("dice", "monai", shape, "fp32", 1.0),
    ]
    new = [
        bench_row("dice", "triton", shape, "fp32", 0.5, passed=False),
        bench_row("dice", "compile", shape, "fp32", math.nan, passed=False, error=oom),
        bench_row("dice", "eager", shape, "fp32", 1.0, passed=False),
        bench_row("dice", "smp", shape, "fp32", 1.0, passed=False),
        bench_row("dice", "monai", shape, "fp32", 1.0, passed=None),
    ]
    a, b = save_run(tmp_path / "a", old), save_run(tmp_path / "b", new)
    table, regressions = compare(a, b, threshold=0.05)
    assert regressions == 2
    assert table.set_index("provider").why.to_dict() == {
        "triton": "failed the check in b",
        "compile": "error in b: OutOfMemoryError",
        "eager": "",
        "smp": "",
        "monai": "",
    }
    assert main(["compare", str(a), str(b)]) == 1
    assert "error in b: OutOfMemoryError" in capsys.readouterr().out


@pytest.mark.parametrize("per_image", [None, False, True], ids=["default", "pooled", "per-image"])
def test_berman_baselines_equal_the_reference(per_image, gen):
    """Each Berman loop against our reference, pooled and per image, and with neither
    given: the sweep passes the default variant's options, so the defaults must agree."""
    from segtriton.bench.baselines import BASELINES

    for name in ("lovasz_softmax", "lovasz_hinge"):
        entry = get(name)
        C = entry.fit_classes(4)
        x, t = make_inputs(entry, (2, C, 5, 6), {}, torch.float32, gen, ignore_frac=0.2)
        opts = {"ignore_index": 255} | ({} if per_image is None else {"per_image": per_image})
        absent = torch.where(t == 3, 2, t)  # class 3 absent: left out of the mean
        for xi, ti in ((x, t), (x.bfloat16(), t), (x, absent), (x, torch.full_like(t, 255))):
            got = BASELINES["berman"][name](xi, ti, **opts)
            want = entry.reference(xi, ti, **opts)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, check_dtype=False)
    with pytest.raises(NotImplementedError, match="no options"):
        BASELINES["berman"]["lovasz_softmax"](x, t, classes="all")
    cases = expand(load_spec("lovasz"))
    assert {c.loss for c in cases if c.provider == "berman"} == {"lovasz_softmax", "lovasz_hinge"}
    assert not [c for c in expand(load_spec("standard")) if c.provider == "berman"]


def test_peer_providers_run_where_their_semantics_match(tmp_path):
    providers = ["monai", "smp"] + ([] if NO_KORNIA else ["kornia"])
    code, rows = _sweep(
        tmp_path,
        'preset = "peers"\nlosses = ["dice", "tversky", "softmax_focal", "sigmoid_focal_ovr"]\n'
        f"providers = {json.dumps(['eager', *providers])}\nshapes = [[2, 5, 9, 11]]\n",
    )
    assert code == 0
    peers = rows[rows.provider.isin(providers)]
    want = {
        ("monai", "dice"),
        ("smp", "dice"),
        ("kornia", "dice"),
        ("smp", "tversky"),
        ("monai", "tversky"),
        ("smp", "sigmoid_focal_ovr"),
        ("monai", "sigmoid_focal_ovr"),
        ("monai", "softmax_focal"),
        ("kornia", "softmax_focal"),
    }
    assert set(zip(peers.provider, peers.loss, strict=True)) == {
        row for row in want if row[0] in providers
    }
    assert peers.passed.all() and (peers.median_ms > 0).all()
    assert peers.options.str.contains("scope").any()


def test_monai_preset_checks_monai_without_ignored_pixels(tmp_path):
    code, rows = _sweep(
        tmp_path,
        'preset = "monai"\nproviders = ["eager", "monai"]\nshapes = [[2, 5, 9, 11]]\n'
        'dtypes = ["fp32"]\n',
    )
    assert code == 0
    assert set(rows.provider) == {"eager", "monai"}
    assert set(rows[rows.provider == "monai"].loss) == {
        "dice", "tversky", "softmax_focal", "sigmoid_focal_ovr", "generalized_dice",
        "ce_dice", "focal_dice", "mcc", "wasserstein_dice",
    }  # fmt: skip
    assert rows.passed.all() and (rows.ignore_frac == 0).all()


@needs_kornia
def test_hausdorff_er_preset_checks_kornia_and_gates_on_the_share_off(tmp_path):
    """kornia's HausdorffERLoss (2-D) and HausdorffERLoss3D rows beside ours pass the float64
    check; the erosion loss's rows carry ``grad_off_share`` (the share of gradient entries
    off the tolerance), its gate."""
    code, rows = _sweep(
        tmp_path,
        'preset = "hausdorff_er"\nproviders = ["eager", "kornia", "triton"]\n'
        'shapes = [[2, 2, 9, 11], [1, 2, 4, 5, 6]]\ndtypes = ["fp32"]\n',
    )
    assert code == 0
    assert len(rows) == 6 and rows.groupby("provider")["shape"].nunique().to_dict() == {
        "eager": 2, "kornia": 2, "triton": 2
    }  # fmt: skip
    assert rows.passed.all() and (rows.grad_off_share == 0).all()
    assert "grad_off_share" in (tmp_path / "run" / "report.md").read_text()


def test_off_share_counts_isolated_misses():
    from segtriton.bench.runner import _off_share

    ref_grad = torch.linspace(-1, 1, 10_000, dtype=torch.float64)
    grad = ref_grad.clone()
    assert _off_share(grad, ref_grad, 1e-4) == 0
    grad[[3, 4000]] += 0.5
    grad[7] = torch.nan
    assert _off_share(grad, ref_grad, 1e-4) == 3 / 10_000


def test_targets_preset_lists_the_cases_its_targets_read():
    from segtriton.bench.targets import TARGETS

    cases = expand(load_spec("targets"))
    swept = {(c.loss, c.shape, c.dtype) for c in cases}
    for t in TARGETS:
        if t.loss.startswith(("confusion", "edt")):
            continue  # pytest --benchmark times these
        assert (t.loss, t.shape, t.dtype) in swept, t.describe()
        if t.kind == "ratio":
            assert (t.versus, t.shape, t.dtype) in swept
        if t.kind == "speedup":
            assert any(c.provider == t.versus and c.loss == t.loss for c in cases)
    assert {c.loss for c in cases if c.provider == "berman"} == {"lovasz_softmax"}
    # --dtypes and --losses narrow the listed cases
    narrow = expand({**load_spec("targets"), "dtypes": ["bf16"], "losses": ["dice"]})
    assert {(c.loss, c.dtype) for c in narrow} == {("dice", "bf16")}
    assert {c.shape for c in narrow} == {(8, 19, 512, 1024), (16, 150, 512, 512)}


def test_targets_are_judged_from_rows_and_benchmark_json(tmp_path):
    from segtriton.bench.targets import ADE20K, CITYSCAPES, bench_extras, evaluate

    rows = [
        bench_row(
            "cross_entropy",
            "triton",
            CITYSCAPES,
            "bf16",
            1.0,
            pct_of_copy_bw=85.0,
            extra_mem_beyond_grad_mb=3.0,
        ),
        # an earlier run's row: the later one below judges the target
        bench_row("cross_entropy", "triton", CITYSCAPES, "fp32", 1.0, pct_of_copy_bw=90.0),
        bench_row("cross_entropy", "triton", CITYSCAPES, "fp32", 1.0, pct_of_copy_bw=60.0),
        bench_row("sigmoid_focal_ovr", "triton", CITYSCAPES, "bf16", 1.0, pct_of_copy_bw=80.0),
        # the timed row of another mode or layout must not stand in for the target's
        bench_row("cross_entropy", "triton", ADE20K, "bf16", 1.0, pct_of_copy_bw=99.0, mode="fwd"),
        bench_row(
            "cross_entropy",
            "triton",
            ADE20K,
            "bf16",
            1.0,
            pct_of_copy_bw=99.0,
            memory_format="channels_last",
        ),  # fmt: skip
        bench_row("dice", "triton", ADE20K, "fp32", 1.0, passed=False),
        bench_row(
            "dice",
            "triton",
            CITYSCAPES,
            "bf16",
            2.0,
            pct_of_copy_bw=80.0,
            extra_mem_beyond_grad_mb=4096.0,
        ),
        bench_row("ce_dice", "triton", CITYSCAPES, "bf16", 2.2),
        bench_row("dice", "triton", CITYSCAPES, "fp32", 2.0),
        bench_row("ce_dice", "triton", CITYSCAPES, "fp32", 2.3),  # the bar itself
        bench_row("lovasz_softmax", "triton", CITYSCAPES, "bf16", 10.0),
        bench_row("lovasz_softmax", "berman", CITYSCAPES, "bf16", 500.0),
        bench_row("lovasz_softmax", "eager", CITYSCAPES, "bf16", 40.0),
    ]
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "benchmarks": [
                    {
                        "group": "edt 8x512x512",
                        "stats": {"median": 2e-3},
                        "extra_info": {"provider": "triton", "shape": "8x512x512"},
                    },
                    {
                        "group": "edt 8x512x512",
                        "stats": {"median": 0.5},
                        "extra_info": {"provider": "scipy", "shape": "8x512x512"},
                    },
                    {
                        "group": "confusion_matrix labels 8x19x1024x2048",
                        "stats": {"median": 1e-3},
                        "extra_info": {
                            "provider": "triton",
                            "preds": "labels",
                            "shape": "8x19x1024x2048",
                            "pct_of_copy_bw": 30.0,  # the host's launch time, mostly
                            "graph_median_ms": 0.33,
                            "graph_pct_of_copy_bw": 91.0,
                        },
                    },
                    {
                        "group": "confusion_matrix logits 16x150x512x512",
                        "stats": {"median": 1e-3},
                        "extra_info": {
                            "provider": "triton",
                            "preds": "logits",
                            "shape": "16x150x512x512",
                            "pct_of_copy_bw": 76.0,
                        },
                    },
                ]
            }
        )
    )
    extras = bench_extras(bench)
    assert {r["loss"] for r in extras} == {"edt", "confusion_labels", "confusion_logits"}
    assert [r["median_ms"] for r in extras] == [2.0, 500.0, 1.0, 1.0]  # pytest-benchmark: s
    table = evaluate(pd.concat([pd.DataFrame(rows), pd.DataFrame(extras)], ignore_index=True))
    status = dict(zip(table.target, table.status, strict=True))

    def of(prefix, what):
        (hit,) = [s for t, s in status.items() if t.startswith(prefix) and what in t]
        return hit

    assert of("cross_entropy 8x19x512x1024 bf16", "copy bandwidth") == "met"
    assert of("cross_entropy 8x19x512x1024 fp32", "copy bandwidth") == "missed"
    assert of("sigmoid_focal_ovr 8x19x512x1024 bf16", "copy bandwidth") == "met"  # 80% of 80%
    assert of("cross_entropy 8x19x512x1024 bf16", "memory") == "met"
    assert of("cross_entropy 16x150x512x512 bf16", "copy bandwidth") == "not measured"
    assert of("dice 16x150x512x512 fp32", "copy bandwidth") == "failed check"
    assert of("dice 8x19x512x1024 bf16", "memory") == "missed"
    assert of("ce_dice 8x19x512x1024 bf16", "dice") == "met"  # 1.1x the time of Dice
    assert of("ce_dice 8x19x512x1024 fp32", "dice") == "met"  # 1.15x
    assert of("lovasz_softmax 8x19x512x1024 bf16", "berman") == "met"  # 50x
    assert of("lovasz_softmax 8x19x512x1024 bf16", "eager") == "met"  # 4x
    assert of("lovasz_softmax 16x150x512x512 bf16", "eager") == "not measured"
    assert of("edt 8x512x512", "scipy") == "met"  # 250x
    assert of("confusion_labels 8x19x1024x2048", "copy") == "met"
    assert of("confusion_labels 16x150x512x512", "copy") == "not measured"
    assert of("confusion_logits 16x150x512x512 bf16", "copy") == "met"
    measured = dict(zip(table.target, table.measured, strict=True))
    assert measured["ce_dice 8x19x512x1024 bf16: <= 1.15x the time of dice"] == "1.1x"
    # the confusion matrix is judged on its graph replays where the benchmark timed them
    labels = "confusion_labels 8x19x1024x2048 -: >= 80% of copy bandwidth"
    assert measured[labels] == "91% graph (30% events)"
    assert measured["confusion_logits 16x150x512x512 bf16: >= 75% of copy bandwidth"] == "76%"


def test_memory_targets_state_their_bound_and_bf16_cases_come_first():
    from segtriton.bench.targets import CITYSCAPES, SLACK_BYTES, Target, sweep_cases

    pixels = 8 * 512 * 1024
    ce = Target(3, "cross_entropy", CITYSCAPES, "bf16", "memory", 0, per_pixel=8, per_unit=8)
    assert ce.memory_bound_mb() == (8 * pixels + 8 * 8 * 19 + SLACK_BYTES) / 2**20
    assert ce.describe() == (
        "cross_entropy 8x19x512x1024 bf16: extra memory <= 8 B/pixel + 8 B/(image, class) + 16 MiB"
    )
    lovasz = Target(7, "lovasz_softmax", CITYSCAPES, "bf16", "memory", 0, per_logit=12)
    assert lovasz.memory_bound_mb() == (12 * pixels * 19 + SLACK_BYTES) / 2**20
    # a sweep of the targets cut short by its time cap keeps the bf16 rows
    dtypes = [dtype for _, _, dtype in sweep_cases()]
    assert dtypes == sorted(dtypes, key=lambda d: d != "bf16") and set(dtypes) == {"bf16", "fp32"}


def test_targets_prefer_graph_replays_for_floor_and_ratio():
    """A Triton row's CUDA-graph time judges the floor and the compound ratio (both rows
    timed so); speedups stay on event-timed calls; a row without one falls back."""
    from segtriton.bench.targets import ADE20K, CITYSCAPES, evaluate

    nan = float("nan")
    rows = [
        bench_row(
            "cross_entropy", "triton", CITYSCAPES, "bf16", 1.0,
            pct_of_copy_bw=60.0, graph_pct_of_copy_bw=85.0, graph_median_ms=0.7,
        ),
        bench_row(
            "cross_entropy", "triton", ADE20K, "bf16", 1.0,
            pct_of_copy_bw=70.0, graph_pct_of_copy_bw=nan, graph_error="capture failed",
        ),
        bench_row("dice", "triton", CITYSCAPES, "bf16", 2.0, graph_median_ms=1.9),
        bench_row("ce_dice", "triton", CITYSCAPES, "bf16", 2.6, graph_median_ms=2.0),
        bench_row("lovasz_softmax", "triton", CITYSCAPES, "bf16", 10.0, graph_median_ms=1.0),
        bench_row("lovasz_softmax", "eager", CITYSCAPES, "bf16", 20.0),
    ]  # fmt: skip
    table = evaluate(pd.DataFrame(rows)).set_index("target")
    ce = "cross_entropy 8x19x512x1024 bf16: >= 80% of copy bandwidth"
    assert table.loc[ce, "status"] == "met"
    assert table.loc[ce, "measured"] == "85% graph (60% events)"
    ce_ade = "cross_entropy 16x150x512x512 bf16: >= 80% of copy bandwidth"
    assert (table.loc[ce_ade, "status"], table.loc[ce_ade, "measured"]) == ("missed", "70%")
    ratio = "ce_dice 8x19x512x1024 bf16: <= 1.15x the time of dice"
    assert (table.loc[ratio, "status"], table.loc[ratio, "measured"]) == ("met", "1.05x graph")
    eager = "lovasz_softmax 8x19x512x1024 bf16: >= 3x faster than eager"
    assert (table.loc[eager, "status"], table.loc[eager, "measured"]) == ("missed", "2x")


def test_every_provider_of_a_case_gets_the_same_inputs():
    entry = get("dice")
    options = {**entry.variants[0], "ignore_index": runner.IGNORE_INDEX}
    cases = expand({**load_spec("quick"), "losses": ["dice"], "shapes": [[2, 3, 5, 7]]})
    device = torch.device("cpu")
    first = [runner.case_inputs(c, entry, options, device) for c in cases]
    assert len(first) == 3
    for x, t in first[1:]:
        assert torch.equal(x, first[0][0]) and torch.equal(t, first[0][1])
    cache: dict = {}
    x, _ = runner.case_inputs(cases[0], entry, options, device, cache)
    assert runner.case_inputs(cases[1], entry, options, device, cache)[0] is x
    # a provider whose options take masks (a peer's option set) gets masks, not the cache's
    masks = {**options, "mode": "multilabel"}
    _, t = runner.case_inputs(cases[2], entry, masks, device, cache)
    assert t.shape == x.shape and t.is_floating_point()


def test_masks_take_the_logits_dtype_and_the_byte_model_follows():
    spec = {**load_spec("quick"), "losses": ["bce", "dice"], "shapes": [[2, 3, 5, 7]]}
    spec |= {"providers": ["eager"], "dtypes": ["bf16"], "label_dtypes": ["uint8"]}
    device = torch.device("cpu")
    for case in expand(spec):
        entry = get(case.loss)
        options = {**provider_options(case.provider, entry), "ignore_index": runner.IGNORE_INDEX}
        x, t = runner.case_inputs(case, entry, options, device)
        assert t.dtype == (torch.bfloat16 if case.loss == "bce" else torch.uint8), case
        row = runner.run_case(case, device, copy_gbps=1.0, reps=1)
        assert row["passed"], row
        assert row["bytes"] == minimal_bytes(entry, case.shape, x.dtype, t.dtype, case.mode)


def test_graph_columns_record_a_capture_failure_and_go_on(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(runner, "time_fn", refuse)
    cols = runner.graph_columns(lambda: None, torch.device("cpu"), 5, 10**9, 1000.0)
    assert cols == {"graph_error": "RuntimeError: operation not permitted when stream is capturing"}
    monkeypatch.setattr(runner, "time_fn", lambda *a, **k: {"median_ms": 2.0})
    cols = runner.graph_columns(lambda: None, torch.device("cpu"), 5, 10**9, 1000.0)
    assert cols == {"graph_median_ms": 2.0, "graph_pct_of_copy_bw": 50.0}  # 500 of 1000 GB/s


def test_floor_chart_adds_the_graph_figures_as_their_own_bars(tmp_path):
    from segtriton.bench.report import _chart_bars, _with_graph_rows

    df = pd.DataFrame(
        [
            {**bench_row("dice", "triton", (2, 3, 8, 8), "bf16", 1.0), "pct_of_copy_bw": 40.0,
             "graph_pct_of_copy_bw": 90.0},
            {**bench_row("dice", "eager", (2, 3, 8, 8), "bf16", 3.0), "pct_of_copy_bw": 10.0,
             "graph_pct_of_copy_bw": float("nan")},
        ]
    )  # fmt: skip
    rows = _with_graph_rows(df)
    assert sorted(rows.provider) == ["eager", "triton", "triton (CUDA graph)"]
    assert rows.set_index("provider").pct_of_copy_bw["triton (CUDA graph)"] == 90.0
    assert _chart_bars(rows, "pct_of_copy_bw", "%", tmp_path / "floor.png")
    assert (tmp_path / "floor.png").stat().st_size > 0
    assert not _chart_bars(df.drop(columns="graph_pct_of_copy_bw"), "graph_pct_of_copy_bw", "%",
                           tmp_path / "none.png")  # fmt: skip


def test_fp16_rows_backpropagate_a_scaled_loss():
    """fp16 rows train as GradScaler does (loss times 65536): unscaled, a mean's fp16
    gradient over 20480 pixels is subnormal and cannot be checked; scaled, the Triton
    and eager rows match float64 to fp16's precision. bf16 rows are not scaled."""
    for dtype, scale in (("fp16", 65536.0), ("bf16", 1.0)):
        for provider in ("triton", "eager"):
            case = runner.Case("cross_entropy", provider, (1, 2, 128, 160), dtype, "int64",
                               "fwd+bwd", "contiguous", 0.1)  # fmt: skip
            row = runner.run_case(case, torch.device("cpu"), copy_gbps=1.0, reps=1)
            assert row["loss_scale"] == scale and row["passed"], row
            if dtype == "fp16":
                assert row["grad_rel_err"] < 1e-3, row
