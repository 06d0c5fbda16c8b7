"""The ``segtriton`` command line."""

from __future__ import annotations

import argparse
import sys

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
    from segtriton.kernels import run_smoke_kernel

    try:
        err = run_smoke_kernel(where)
    except Exception as exc:  # report any failure of the toolchain, do not crash `check`
        print(f"kernels: smoke kernel FAILED on {where}: {type(exc).__name__}: {exc}")
        return 1
    status = "ok" if err < 1e-5 else f"WRONG (max error {err:g})"
    mode = "compiled" if where == "cuda" else "Triton interpreter"
    print(f"kernels: smoke kernel on {where} ({mode}): {status}")
    return 0 if err < 1e-5 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segtriton",
        description="Triton segmentation losses and metrics: checks, sweeps and reports.",
    )
    parser.add_argument("--version", action="version", version=f"segtriton {segtriton.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="print torch/triton/GPU/interpreter status")
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
