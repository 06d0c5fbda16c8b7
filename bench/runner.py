"""Run sweep cases: inputs, provider, timing, memory, correctness, one row per case.

Rows are written after every case (atomically: a temporary file, then a rename), so a
killed sweep keeps what it finished and ``--resume`` continues from there. A case that
fails (out of memory, a compile error, a missing kernel) becomes a row with its error.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch._functorch.config

from segtriton.reference._common import value_checks
from segtriton.registry import KINK_SHARE, LossEntry, get, make_inputs, minimal_bytes

from .baselines import BASELINES, PEERS
from .env import environment
from .spec import DTYPES, LABEL_DTYPES, Case, channels_last, provider_options
from .timing import copy_bandwidth, peak_memory, time_fn

# Largest relative error (max |a - b| / max |b|) a row may show against float64 and pass.
LOSS_TOL = 1e-4
GRAD_TOL = {"fp32": 1e-4, "fp16": 4e-3, "bf16": 3e-2}
IGNORE_INDEX = 255
# fp16 rows backpropagate the loss times GradScaler's initial scale, as fp16 training does:
# unscaled, a mean's fp16 gradient over more than about 16K pixels is subnormal for every
# provider and cannot be checked against float64
LOSS_SCALE = {"fp16": 65536.0}


def loss_scale(dtype: str) -> float:
    """The grad_output of a row's backward (see ``LOSS_SCALE``)."""
    return LOSS_SCALE.get(dtype, 1.0)


# torch.compile donates saved buffers to the backward, which forbids retain_graph ('bwd')
torch._functorch.config.donated_buffer = False


def make_provider(case: Case, entry: LossEntry) -> Callable:
    """``fn(logits, target, **options)`` for the case's provider (a peer's matching options
    are bound into it: it ignores the ones passed)."""
    if case.provider == "triton":
        return entry.triton()
    if case.provider in PEERS:
        peer = PEERS[case.provider][case.loss]
        if why := peer.refusal(case.shape, case.ignore_frac):
            raise NotImplementedError(f"{case.provider}'s {case.loss} {why}")
        loss = peer.factory()
        return lambda x, t, **_: loss(x, t)
    if case.provider in BASELINES:
        fn = BASELINES[case.provider][case.loss]
    elif case.provider == "eager":
        fn = entry.reference
    else:
        # past recompile_limit (8 cache entries per function) Dynamo runs a function
        # eagerly without a word: a fresh cache per row keeps every row compiled
        torch._dynamo.reset()
        # max-autotune's kernel search without Inductor's CUDA graphs: their private pool
        # hides allocations from the memory column, a 'bwd' row replays one backward many
        # times, and --cuda-graph captures every provider alike
        mode = "max-autotune-no-cudagraphs" if case.provider.endswith("autotune") else "default"
        fn = torch.compile(entry.reference, mode=mode, dynamic=False)

    def unchecked(*args, **kwargs):  # baselines timed without the reference's value checks
        with value_checks(False):
            return fn(*args, **kwargs)

    return unchecked


def _max_rel(a: torch.Tensor, b: torch.Tensor, scale: float = 0.0) -> float:
    """``max |a - b|`` over the larger of ``max |b|`` and ``scale`` (NaN on one side only,
    or another shape: infinite)."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    both_nan = torch.isnan(a) & torch.isnan(b)
    if bool((torch.isnan(a) ^ torch.isnan(b)).any()):
        return math.inf
    a, b = a.masked_fill(both_nan, 0), b.masked_fill(both_nan, 0)
    return float((a - b).abs().max() / b.abs().max().clamp_min(max(scale, 1e-30)))


def _off_share(a: torch.Tensor, b: torch.Tensor, tol: float) -> float:
    """The share of entries of ``a`` off ``b`` by more than ``tol`` times ``b``'s largest
    magnitude (NaN on one side only counts as off)."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    off = (a - b).abs() > tol * b.abs().max().clamp_min(1e-30)
    off |= torch.isnan(a) ^ torch.isnan(b)
    return float(off.double().mean())


def _graph_breaks() -> int:
    """The graph breaks Dynamo has counted in this process, over all their reasons (none
    where nothing has imported Dynamo: importing it takes 1.5 s)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    return sum(torch._dynamo.utils.counters["graph_break"].values())


def case_inputs(
    case: Case,
    entry: LossEntry,
    options: dict,
    device: torch.device,
    cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's ``(logits, target)``, drawn on ``device`` from a seed that names the case
    but not the provider, so every provider is timed and checked on the same numbers.
    Labels have the case's label dtype; masks the logits' dtype, as a training loop has
    them. ``cache`` keeps the last inputs for the next provider of the same case."""
    key = (case.inputs_key, repr(options))
    if cache is not None and key in cache:
        return cache[key]
    if cache is not None:
        cache.clear()  # free the last case's inputs before drawing new ones
    gen = torch.Generator(device).manual_seed(zlib.crc32(case.inputs_key.encode()))
    inputs = make_inputs(
        entry,
        case.shape,
        options,
        DTYPES[case.dtype],
        gen,
        case.ignore_frac,
        IGNORE_INDEX,
        LABEL_DTYPES[case.label_dtype],
        device=device,
        mask_dtype=DTYPES[case.dtype],
    )
    if cache is not None:
        cache[key] = inputs
    return inputs


def run_case(
    case: Case,
    device: torch.device,
    copy_gbps: float,
    reps: int,
    graph: bool = False,
    cache: dict | None = None,
) -> dict:
    """Measure one case; return its row (errors are recorded, not raised). ``graph``:
    time CUDA-graph replays (see :func:`time_fn`); ``cache``: see :func:`case_inputs`."""
    row = case.as_row()
    entry = get(case.loss)
    options = entry.ignoring(provider_options(case.provider, entry), IGNORE_INDEX)
    row["options"] = repr(options)
    dtype = DTYPES[case.dtype]
    fn = make_provider(case, entry)  # before the inputs: a provider may refuse the case
    x, t = case_inputs(case, entry, options, device, cache)
    if case.memory_format == "channels_last":
        x, t = channels_last(x, t)
    need_grad = case.mode != "fwd"
    xg = x.detach().requires_grad_(need_grad)

    def forward():
        return fn(xg, t, **options)

    row["loss_scale"] = scale = loss_scale(case.dtype)
    breaks = _graph_breaks()
    t0 = time.perf_counter()
    loss = forward()
    grad = None  # of the loss times scale
    if need_grad:
        grad = torch.autograd.grad(loss * scale if scale != 1.0 else loss, xg)[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row["first_call_s"] = time.perf_counter() - t0  # compile / JIT time included
    if case.provider.startswith("compile"):
        row["graph_breaks"] = _graph_breaks() - breaks  # the code between them ran eagerly

    xd = x.detach().double().requires_grad_(need_grad)
    ref_loss = entry.reference(xd, t, **options)  # one float64 pass serves loss and gradient
    size = 0.0 if entry.magnitude is None else float(entry.magnitude(xd.detach(), t, **options))
    row["loss_rel_err"] = _max_rel(loss, ref_loss, size)
    row["grad_rel_err"] = math.nan
    grad_ok = True
    if grad is not None:
        (ref_grad,) = torch.autograd.grad(ref_loss, xd)
        row["grad_rel_err"] = _max_rel(grad, ref_grad * scale)
        grad_ok = row["grad_rel_err"] <= GRAD_TOL[case.dtype]
        if entry.grad_weights is not None:
            # a tie-order-dependent gradient (Lovasz) differs from the reference's where
            # errors tie, common at bf16 over millions of pixels: gate on the loss it
            # implies instead
            row["grad_identity_err"] = entry.grad_identity_err(
                x, t, grad, ref_loss * scale, options
            )
            grad_ok = row["grad_identity_err"] <= GRAD_TOL[case.dtype]
        if entry.kinked:
            # isolated pixels on the other side of a kink in float32: gate on their share
            row["grad_off_share"] = _off_share(grad, ref_grad * scale, GRAD_TOL[case.dtype])
            grad_ok = row["grad_off_share"] <= KINK_SHARE
        del ref_grad
    row["passed"] = bool(row["loss_rel_err"] <= LOSS_TOL and grad_ok)
    # the loss's graph holds xg's gradient accumulator, made on the default stream. On the
    # H200 the first CUDA-graph capture of each sweep process failed, after PyTorch warned
    # that such a node, kept alive, runs on another stream than the capture: a likely
    # cause, released here (not yet checked on a GPU)
    del ref_loss, grad, loss

    row["bytes"] = minimal_bytes(entry, case.shape, dtype, t.dtype, case.mode, options)
    if case.provider == "triton" and device.type != "cuda":
        row["timer"] = "not measured (Triton interpreter)"
        return row
    step = make_step(case.mode, forward, xg, scale)
    row.update(time_fn(step, device, reps=reps, graph=graph))
    row["gbps"] = gbps(row["bytes"], row["median_ms"])
    row["pct_of_copy_bw"] = 100 * row["gbps"] / copy_gbps
    extra = peak_memory(step, device)
    if extra is not None:
        grad_bytes = x.numel() * x.element_size() if need_grad else 0
        row["extra_mem_mb"] = extra / 2**20
        row["extra_mem_beyond_grad_mb"] = (extra - grad_bytes) / 2**20
    if case.provider == "triton" and device.type == "cuda" and not graph:
        row.update(graph_columns(step, device, reps, row["bytes"], copy_gbps))
    return row


def graph_columns(
    step: Callable, device: torch.device, reps: int, nbytes: int, copy_gbps: float
) -> dict:
    """Triton rows are also timed as CUDA-graph replays of the same step: the GPU work
    without Python and launch overhead, which a call of a few tens of microseconds cannot
    hide behind the L2 flush. ``graph_median_ms`` and ``graph_pct_of_copy_bw``, or
    ``graph_error`` when the step cannot be captured (the sweep goes on)."""
    try:
        timed = time_fn(step, device, reps=reps, graph=True)
    except Exception as exc:  # a capture failure is a finding for this row only
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:240]}"
        if device.type == "cuda":
            # what the allocator holds: on the H200 every graph timing from one row on ran
            # out of memory with 1-7 GiB allocated and 139.6 GiB in use by the process,
            # after the process's first capture had failed; the OOM text's own figures
            # were cut off
            error += (
                f" [allocated {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB, "
                f"reserved {torch.cuda.memory_reserved(device) / 2**30:.2f} GiB]"
            )
        return {"graph_error": error}
    pct = 100 * gbps(nbytes, timed["median_ms"]) / copy_gbps
    return {"graph_median_ms": timed["median_ms"], "graph_pct_of_copy_bw": pct}


def gbps(nbytes: int, median_ms: float) -> float:
    """GB/s of ``nbytes`` moved in ``median_ms``."""
    return nbytes / (median_ms * 1e-3) / 1e9


def make_step(mode: str, forward: Callable, x: torch.Tensor, scale: float = 1.0) -> Callable:
    """The timed call: the forward alone, forward and backward, or the backward alone
    (through a graph built once and retained); the backward is of the loss times
    ``scale``, as ``torch.amp.GradScaler.scale`` gives it (see ``LOSS_SCALE``)."""

    def scaled():
        return forward() * scale if scale != 1.0 else forward()

    if mode == "fwd":

        def step():
            with torch.no_grad():
                return forward()
    elif mode == "fwd+bwd":

        def step():
            return torch.autograd.grad(scaled(), x)
    else:
        held = scaled()

        def step():
            return torch.autograd.grad(held, x, retain_graph=True)

    return step


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Speedup of each row over eager and over compile on the same case."""
    if df.empty or "median_ms" not in df:
        return df
    keys = ["loss", "shape", "dtype", "label_dtype", "mode", "memory_format", "ignore_frac"]
    for base in ("eager", "compile"):
        ref = df[df.provider == base][keys + ["median_ms"]].rename(
            columns={"median_ms": f"_{base}_ms"}
        )
        df = df.drop(columns=[f"speedup_vs_{base}"], errors="ignore").merge(
            ref, on=keys, how="left"
        )
        df[f"speedup_vs_{base}"] = df[f"_{base}_ms"] / df["median_ms"]
        df = df.drop(columns=[f"_{base}_ms"])
    return df


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_rows(out: Path, rows: list[dict]) -> pd.DataFrame:
    """``rows`` with their speedups, written to rows.json and rows.csv. The JSON keeps 15
    decimals (pandas' default of 10 saved an error of 1e-12 as 0)."""
    df = add_ratios(pd.DataFrame(rows))
    _write_atomic(out / "rows.json", df.to_json(orient="records", indent=1, double_precision=15))
    _write_atomic(out / "rows.csv", df.to_csv(index=False))
    return df


def load_rows(out: Path) -> list[dict]:
    path = out / "rows.json"
    return json.loads(path.read_text()) if path.exists() else []


def _clock(seconds: float) -> str:
    return "--:--" if math.isnan(seconds) else f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def progress(i: int, n: int, started: float, label: str) -> None:
    """One progress line on stderr: item ``i`` of ``n`` (``label``), elapsed time and ETA."""
    elapsed = time.perf_counter() - started
    eta = elapsed / i * (n - i) if i else float("nan")
    print(
        f"[{i + 1:>{len(str(n))}}/{n}] {_clock(elapsed)} elapsed, ETA {_clock(eta)}  {label}",
        file=sys.stderr,
        flush=True,
    )


def case_of(row: dict) -> Case:
    """The case a saved row measured."""
    fields = {k: row[k] for k in Case.__dataclass_fields__}
    fields["shape"] = tuple(int(v) for v in str(row["shape"]).split("x"))
    return Case(**fields)


def run_sweep(
    cases: list[Case],
    out: Path,
    spec: dict,
    resume: bool = False,
    reps: int = 50,
    command: str = "",
    graph: bool = False,
) -> pd.DataFrame:
    """Run ``cases`` into ``out`` (rows.json, rows.csv, meta.json) and return the rows.
    ``graph``: time CUDA-graph replays instead of eager calls (GPU only)."""
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = load_rows(out) if resume else []
    done = {case_of(r).key for r in rows}
    copy_gbps = copy_bandwidth(device)
    meta_path = out / "meta.json"
    earlier = json.loads(meta_path.read_text()) if resume and meta_path.exists() else {}
    meta = {
        **environment(),
        "device": str(device),
        "copy_bandwidth_gbps": copy_gbps,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "commands": [
            *earlier.get("commands", [earlier.get("command")] if earlier else []),
            command,
        ],
        "spec": spec,
        "cuda_graph": graph and device.type == "cuda",
    }
    _write_atomic(out / "meta.json", json.dumps(meta, indent=1, default=str))
    todo = [c for c in cases if c.key not in done]
    started = time.perf_counter()
    cache: dict = {}
    for i, case in enumerate(todo):
        progress(i, len(todo), started, case.describe())
        try:
            row = run_case(case, device, copy_gbps, reps, graph, cache)
        except Exception as exc:  # an OOM or compile failure is a row, and the sweep goes on
            cache.clear()
            row = {
                **case.as_row(),
                "passed": False,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            }
            if os.environ.get("SEGTRITON_DEBUG"):
                traceback.print_exc()
        if device.type == "cuda":
            # every row, not only after an error: on the H200 (2026-12-04) the lease's
            # sweep ran out of memory timing graphs from its 18th Triton row on, with 1-7 GiB
            # allocated and 139.8 GiB held by the process
            torch.cuda.empty_cache()
        rows.append(row)
        save_rows(out, rows)
    return save_rows(out, rows)
