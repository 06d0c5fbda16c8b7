"""The ``segtriton`` command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

import segtriton


def _check(_: argparse.Namespace) -> int:
    """Print the environment and run a tiny Triton kernel where kernels can run."""
    from .env import environment

    info = environment()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value if value is not None else '-'}")
    if info["cuda_available"]:
        where = "cuda"
    elif info["triton_interpret"]:
        where = "cpu"
    else:
        print(
            "kernels: no CUDA device and TRITON_INTERPRET is not set; "
            "set TRITON_INTERPRET=1 to run the Triton kernels in the CPU interpreter"
        )
        return 0
    from segtriton.kernels import interpreter_problem, run_smoke_kernel

    try:
        err = run_smoke_kernel(where)
    except Exception as exc:  # report any failure of the toolchain, do not crash `check`
        print(f"kernels: smoke kernel FAILED on {where}: {type(exc).__name__}: {exc}")
        problem = interpreter_problem() if where == "cpu" else None
        if problem:
            print(f"kernels: {problem}")
        return 1
    status = "ok" if err < 1e-5 else f"WRONG (max error {err:g})"
    mode = "compiled" if where == "cuda" else "Triton interpreter"
    print(f"kernels: smoke kernel on {where} ({mode}): {status}")
    return 0 if err < 1e-5 else 1


def _prepare_triton() -> None:
    """Without a CUDA device, Triton kernels can only run in the interpreter, which must be
    chosen before triton is imported."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _default_out(name: str | None) -> Path:
    import datetime

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    return Path("results") / slug / (name or datetime.date.today().isoformat())


def _sweep(args: argparse.Namespace) -> int:
    _prepare_triton()
    from .report import build_report
    from .runner import run_sweep
    from .spec import ONLY_SOME, SpecError, expand, load_spec

    spec = load_spec(args.preset if args.spec is None else None, args.spec)
    for axis in ("losses", "providers", "dtypes", "label_dtypes", "modes", "memory_formats"):
        value = getattr(args, axis)
        if value:
            spec[axis] = value.split(",")
    if args.shape:
        spec["shapes"] = [list(_shape_arg(text)) for text in args.shape]
        if "cases" in spec:  # a case list gives way to the shapes; its losses stay
            named = dict.fromkeys(name for name, _, _ in spec.pop("cases"))
            spec["losses"] = list(named) if spec["losses"] == "all" else spec["losses"]
    cases = expand(spec)
    if not cases:
        some = {p: sorted(ONLY_SOME[p]) for p in spec["providers"] if p in ONLY_SOME}
        raise SpecError(
            "the spec gives no cases (no provider runs its losses at its shapes"
            + (f"; losses each of these providers has: {some}" if some else "")
            + ")"
        )
    out = Path(args.out) if args.out else _default_out(args.name)
    print(f"{len(cases)} cases -> {out}", file=sys.stderr)
    df = run_sweep(
        cases,
        out,
        spec,
        resume=args.resume,
        reps=args.reps,
        command=args.command,
        graph=args.cuda_graph,
    )
    report = build_report([out], out)
    failed = int((df.passed != True).sum())  # noqa: E712
    print(f"{len(df)} rows, {failed} failed or errored; report: {report}")
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    runs = [Path(r) for r in args.runs]
    folders = [r.parent if r.is_file() else r for r in runs]
    if args.out is None and len({f.resolve() for f in folders}) > 1:
        raise _ArgError(
            "merging runs from several folders needs --out DIR: written into the last "
            "run, the merged report would replace that run's own"
        )
    print(build_report(runs, Path(args.out) if args.out else folders[-1]))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .report import compare, compare_chart

    table, regressions = compare(Path(args.a), Path(args.b), args.threshold)
    if table.empty:  # "0 regressions" would pass two runs that share no case
        raise _ArgError(
            f"{args.a} and {args.b} have no timed case in common (loss, provider, shape, "
            "dtype, label dtype, mode, layout and ignored share): nothing to compare"
        )
    cols = [
        "loss",
        "provider",
        "shape",
        "dtype",
        "mode",
        "median_ms_a",
        "median_ms_b",
        "ratio_b_over_a",
        "graph_ratio_b_over_a",
        "why",
    ]
    print(table[[c for c in cols if c in table]].to_string(index=False))
    print(f"{regressions} regression(s): slower by more than {args.threshold:.0%}, or failing")
    if args.chart:
        a, b = Path(args.a).resolve(), Path(args.b).resolve()
        last = 2 if a.name == b.name else 1  # 'lease2/targets', not 'targets', twice
        names = ("/".join(a.parts[-last:]), "/".join(b.parts[-last:]))
        print(compare_chart(table, args.threshold, Path(args.chart), names))
    return 1 if regressions else 0


def _compile(args: argparse.Namespace) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("segtriton compile needs compiled Triton: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    import datetime

    from .aot import compile_registry, shared_limit, write_report

    if args.channels_last and not args.targets:
        print("segtriton compile: --channels-last goes with --targets", file=sys.stderr)
        return 2
    confusion = None
    if args.confusion:
        if args.targets or args.quick or args.dtypes:
            raise _ArgError("--confusion goes alone")
        confusion = list(_positive_ints(args.confusion, 1, "--confusion needs class counts"))
    dtypes = _compile_dtypes(args)
    rows, failures = compile_registry(
        args.arch,
        quick=args.quick,
        targets=args.targets,
        channels_last=args.channels_last,
        confusion=confusion,
        dtypes=dtypes,
    )
    name = datetime.date.today().isoformat() + ("-targets" if args.targets else "")
    name += "-channels-last" if args.channels_last else ""
    name += "-confusion" if confusion else ""
    name += "".join(f"-{d}" for d in dtypes or ())
    out = Path(args.out or Path("results") / f"sm{args.arch}-compile" / name)
    report = write_report(rows, failures, out, args.arch, args.command)
    limit = shared_limit(args.arch)
    too_big = [r for r in rows if r.shared_bytes > limit]
    for r in too_big:
        print(
            f"{r.kernel} needs {r.shared_bytes} B of shared memory (sm_{args.arch}: {limit}): "
            f"{r.case}",
            file=sys.stderr,
        )
    spills = sum(r.local_bytes > 0 for r in rows)
    print(
        f"{len(rows)} specialisations, {spills} spilling, {len(failures)} failed case(s); "
        f"report: {report}"
    )
    return 1 if failures or too_big else 0


class _ArgError(ValueError):
    """A command-line value the command cannot use (printed, exit status 2)."""


def _positive_ints(text: str, least: int, need: str) -> tuple[int, ...]:
    """Comma-separated positive ints, at least ``least`` of them; else an :class:`_ArgError`
    starting with ``need`` (what the flag asks for)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) < least or min(values) < 1:
        raise _ArgError(f"{need}, got {text}")
    return values


def _compile_dtypes(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``segtriton compile --dtypes``: the logits dtype names, or None where not given."""
    if not args.dtypes:
        return None
    if args.targets:
        raise _ArgError("--dtypes does not go with --targets (its cases name their dtypes)")
    from .spec import DTYPES

    names = tuple(args.dtypes.split(","))
    unknown = [n for n in names if n not in DTYPES]
    if unknown:
        raise _ArgError(f"--dtypes takes {','.join(DTYPES)}, got {','.join(unknown)}")
    return names


def _count(text: str) -> int:
    """An argparse type: a positive int (``--reps``, ``--calls``); argparse names the flag."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a positive integer, got {text!r}")
    return value


def _shape_arg(text: str) -> tuple[int, ...]:
    """``--shape B,C,spatial...`` as positive ints."""
    return _positive_ints(text, 3, "--shape needs positive integers B,C and spatial sizes")


def _kernel_names(text: str | None, extra: tuple[str, ...] = ()) -> list[str] | None:
    """``--losses a,b``: names checked by :func:`segtriton.registry.kernel_names`."""
    if not text:
        return None
    from segtriton.registry import kernel_names

    try:
        return kernel_names(text.split(","), extra)
    except ValueError as exc:
        raise _ArgError(f"--losses: {exc}") from exc


def _overhead(args: argparse.Namespace) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("segtriton overhead needs compiled Triton: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    from .aot import host_overhead

    shape = _shape_arg(args.shape)
    names = _kernel_names(args.losses)
    rows = host_overhead(names, shape, calls=args.calls, arch=args.arch)
    width = max(len(row["loss"]) for row in [{"loss": "loss"}, *rows])
    head = "host us per fwd+bwd  (through the custom-op dispatcher)  fastest call (custom op)"
    head += "  without launches"
    print(f"{'loss':<{width}} {'shape':>14}  {head}")
    for row in rows:
        print(
            f"{row['loss']:<{width}} {row['shape']:>14}  {row['host_us']:>19.1f}"
            f"  ({row['custom_op_us']:.1f})  {row['host_us_min']:>29.1f}"
            f"  ({row['custom_op_us_min']:.1f})  {row['no_launch_us']:>16.1f}"
        )
    return 0


def _traffic(args: argparse.Namespace) -> int:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from segtriton.kernels import interpreter_enabled

    if not interpreter_enabled():
        print("segtriton traffic runs in the interpreter: set TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    import datetime

    from .spec import DTYPES, LABEL_DTYPES
    from .traffic import METRICS, traffic_table, write_report

    shape = _shape_arg(args.shape)
    losses = _kernel_names(args.losses, tuple(METRICS))
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as exc:
        raise _ArgError(f"--options is not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise _ArgError("--options must be a JSON object, e.g. '{\"classes\": [1]}'")
    try:
        summary, detail = traffic_table(
            shape, DTYPES[args.dtype], LABEL_DTYPES[args.label_dtype], losses, options
        )
    except (TypeError, ValueError) as exc:  # a shape or an option a loss rejects
        raise _ArgError(str(exc)) from exc
    out = Path(args.out or Path("results") / "traffic" / datetime.date.today().isoformat())
    report = write_report(summary, detail, out, args.command)
    for row in summary:
        print(
            f"{row['loss']:<18} unique/model {row['unique_over_model']:>7.3f}  "
            f"floor bound {row['floor_bound_pct']:>5.1f}%"
        )
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .aot import SM_LIMITS

    parser = argparse.ArgumentParser(
        prog="segtriton",
        description="Triton segmentation losses and metrics: checks, sweeps and reports.",
    )
    parser.add_argument("--version", action="version", version=f"segtriton {segtriton.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="print torch/triton/GPU/interpreter status")
    check.set_defaults(func=_check)

    sweep = sub.add_parser("sweep", help="run a benchmark sweep and write rows, charts, report")
    sweep.add_argument(
        "--preset",
        default="quick",
        help="quick (default), standard, full, cityscapes, ade20k, voc, brats3d, distance, "
        "cldice, hausdorff_er, lovasz, monai, peers, targets (see "
        "segtriton.bench.spec.PRESETS)",
    )
    sweep.add_argument("--spec", help="a TOML sweep spec (see segtriton.bench.spec)")
    sweep.add_argument("--losses", help="comma-separated registry names (overrides the spec)")
    sweep.add_argument("--providers", help="comma-separated: triton,eager,compile,...")
    sweep.add_argument("--dtypes", help="comma-separated: fp32,fp16,bf16")
    sweep.add_argument(
        "--label-dtypes",
        help="comma-separated: int64,int32,int16,uint8,uint16,uint32,uint64 (integer labels; "
        "masks take the logits' dtype)",
    )
    sweep.add_argument(
        "--shape",
        action="append",
        help="B,C,spatial... to sweep instead of the spec's shapes (repeat for several; with "
        "a preset that lists cases, as 'targets' does, the losses and dtypes then multiply "
        "these shapes)",
    )
    sweep.add_argument("--modes", help="comma-separated: fwd,bwd,fwd+bwd")
    sweep.add_argument(
        "--memory-formats",
        help="comma-separated: contiguous,channels_last (the logits' layout; masks follow)",
    )
    sweep.add_argument("--out", help="output folder (default results/<device>/<date or name>)")
    sweep.add_argument("--name", help="run name for the default output folder")
    sweep.add_argument("--reps", type=_count, default=50, help="timed repetitions per case")
    sweep.add_argument("--resume", action="store_true", help="keep finished rows in --out")
    sweep.add_argument(
        "--cuda-graph",
        action="store_true",
        help="time CUDA-graph replays (no launch overhead); rows say so in 'timer'",
    )
    sweep.set_defaults(func=_sweep)

    report = sub.add_parser("report", help="rebuild charts and report.md from saved runs")
    report.add_argument(
        "runs",
        nargs="+",
        help="run folders (rows.json) or pytest-benchmark JSON files; later ones win",
    )
    report.add_argument(
        "--out", help="where to write (default: the run folder, when every run is in one)"
    )
    report.set_defaults(func=_report)

    comp = sub.add_parser("compare", help="two runs side by side, flagging regressions")
    comp.add_argument("a", help="baseline run folder")
    comp.add_argument("b", help="new run folder")
    comp.add_argument("--threshold", type=float, default=0.05, help="allowed slowdown (0.05)")
    comp.add_argument(
        "--chart", metavar="PNG", help="also draw each case's ratio of b over a into this file"
    )
    comp.set_defaults(func=_compare)

    aot = sub.add_parser(
        "compile",
        help="compile every kernel for a GPU architecture without a GPU; report registers, "
        "spills, shared memory",
    )
    aot.add_argument(
        "--arch",
        type=int,
        default=90,
        choices=sorted(SM_LIMITS),
        help="compute capability x10 (90: H100)",
    )
    aot.add_argument("--quick", action="store_true", help="fewer class counts and dtypes")
    aot.add_argument(
        "--dtypes",
        help="comma-separated logits dtypes of the cases: fp32,fp16,bf16 "
        "(default: all three; bf16,fp32 with --quick)",
    )
    aot.add_argument(
        "--targets",
        action="store_true",
        help="the targets preset's loss cases at their real shapes (uninitialised inputs)",
    )
    aot.add_argument(
        "--channels-last",
        action="store_true",
        help="with --targets: the logits (and masks) in channels_last (the other cases take turns)",
    )
    aot.add_argument(
        "--confusion",
        metavar="C,C,...",
        help="instead: the confusion matrix at these class counts, from labels and logits "
        "([8, C, 512, 1024]), with its hot loops counted",
    )
    aot.add_argument("--out", help="output folder (default results/sm<arch>-compile/<date>)")
    aot.set_defaults(func=_compile)

    overhead = sub.add_parser(
        "overhead",
        help="host time per fwd+bwd call of each loss, kernels compiled but not launched "
        "(works without a GPU)",
    )
    overhead.add_argument("--shape", default="2,19,32,32", help="B,C,spatial... (2,19,32,32)")
    overhead.add_argument("--losses", help="comma-separated registry names (default: all)")
    overhead.add_argument("--calls", type=_count, default=200, help="timed calls per path")
    overhead.add_argument("--arch", type=int, default=90, choices=sorted(SM_LIMITS))
    overhead.set_defaults(func=_overhead)

    traffic = sub.add_parser(
        "traffic",
        help="count the bytes each loss's kernels ask for (Triton interpreter) against its "
        "byte model",
    )
    traffic.add_argument("--shape", default="2,19,64,96", help="B,C,spatial... (2,19,64,96)")
    traffic.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16"))
    traffic.add_argument(
        "--label-dtype", default="int64", choices=("int64", "int32", "int16", "uint8")
    )
    traffic.add_argument(
        "--losses",
        help="comma-separated registry names, confusion_labels, confusion_logits, confusion_masks "
        "(default: all)",
    )
    traffic.add_argument(
        "--options",
        default="{}",
        help="JSON object of loss options over each default, e.g. '{\"classes\": [1]}'",
    )
    traffic.add_argument("--out", help="output folder (default results/traffic/<date>)")
    traffic.set_defaults(func=_traffic)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .spec import SpecError

    # Triton 3.9 warns that FMA contraction, on by default in every Triton so far, turns
    # off by default in 3.10: the commands keep it on, so runs under either compare alike
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    args = build_parser().parse_args(argv)
    args.command = shlex.join(["segtriton", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (SpecError, _ArgError, FileNotFoundError) as exc:  # bad input, not a bug
        print(f"segtriton {args.func.__name__[1:]}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
