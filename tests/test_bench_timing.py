"""The timer, the copy-bandwidth floor and the environment stamp. On a CPU the wall-clock
path runs against a fake clock, so the medians and quantiles are exact; the CUDA-event
and CUDA-graph timers are checked where a GPU is present."""

from __future__ import annotations

import datetime
import importlib.metadata
import subprocess
import sys
import types

import pytest
import torch

from segtriton.bench import env, timing

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA timer needs CUDA")


def test_quantiles_interpolate_between_sorted_values():
    assert timing._quantile([5.0, 1.0, 4.0, 2.0, 3.0], 0.2) == pytest.approx(1.8)
    assert timing._quantile([5.0, 1.0, 4.0, 2.0, 3.0], 0.8) == pytest.approx(4.2)
    assert timing._quantile([1.0, 2.0], 0.5) == 1.5
    assert timing._quantile([7.0], 0.2) == 7.0


class FakeClock:
    """``perf_counter`` that moves only when the timed function runs: call ``i`` of
    ``step`` takes ``durations_ms[i]``."""

    def __init__(self, durations_ms: list[float]):
        self.now, self.durations, self.calls = 100.0, durations_ms, 0

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += self.durations[self.calls] / 1e3
        self.calls += 1


def test_wall_clock_times_each_call_after_the_warmup(monkeypatch):
    clock = FakeClock([50.0, 60.0, 5.0, 1.0, 4.0, 2.0, 13.0])  # two warm-up calls first
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    for graph in (False, True):  # a CPU has no graphs: the same wall clock, labelled so
        clock.now, clock.calls = 100.0, 0
        got = timing.time_fn(clock.step, CPU, reps=5, warmup=2, graph=graph)
        assert clock.calls == 7
        assert got["reps"] == 5 and got["timer"] == "wall-clock (cpu)"
        assert got["median_ms"] == pytest.approx(4.0)  # the mean is 5
        assert got["p20_ms"] == pytest.approx(1.8) and got["p80_ms"] == pytest.approx(6.6)


@pytest.mark.parametrize(("budget_s", "kept"), [(0.5, 5), (6.5, 7), (100.0, 20)])
def test_repetitions_stop_once_the_budget_is_spent_keeping_at_least_five(
    monkeypatch, budget_s, kept
):
    clock = FakeClock([1000.0] * 20)
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    got = timing.time_fn(clock.step, CPU, reps=20, warmup=0, budget_s=budget_s)
    assert got["reps"] == kept == clock.calls


def test_copy_bandwidth_counts_the_bytes_read_and_written(monkeypatch):
    seen = {}

    def timed(fn, device, reps, warmup):
        seen["out"] = fn()
        return {"median_ms": 2.0}

    monkeypatch.setattr(timing, "time_fn", timed)
    gbps = timing.copy_bandwidth(CPU)
    n = seen["out"].numel()
    assert n == 2**24 and seen["out"].dtype == torch.float32
    assert gbps == pytest.approx(2 * 4 * n / 2e-3 / 1e9)


def test_peak_memory_is_not_reported_on_a_cpu():
    assert timing.peak_memory(lambda: torch.ones(1000), CPU) is None


@CUDA
def test_cuda_timers_say_which_one_ran_and_peak_memory_counts_an_allocation():
    dev = torch.device("cuda")
    x = torch.randn(1 << 20, device=dev)
    plain = timing.time_fn(lambda: x * 2, dev, reps=10)
    graph = timing.time_fn(lambda: x * 2, dev, reps=10, graph=True)
    assert plain["timer"] == "cuda-events+l2-flush" and graph["timer"] == "cuda-graph+l2-flush"
    assert plain["median_ms"] > 0 and graph["median_ms"] > 0
    peak = timing.peak_memory(lambda: torch.empty(1 << 22, dtype=torch.uint8, device=dev), dev)
    assert peak >= 1 << 22
    assert timing.copy_bandwidth(dev) > 100  # GB/s: any GPU this project targets


def test_kernel_times_lists_each_op_per_call_slowest_first():
    """On a CPU the profiler sees ops, not kernels: a matrix product of 384^2 per call, and
    an add, each once per call."""
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    rows = timing.kernel_times(lambda: (a @ b) + 1.0, CPU, steps=4)
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)
    by_name = {name: (ms, n) for ms, n, name in rows}
    assert by_name["aten::mm"][1] == 1 and by_name["aten::add"][1] == 1
    assert rows[0][2] == "aten::mm" and by_name["aten::mm"][0] > 0


@CUDA
def test_kernel_times_name_the_kernels_of_a_call():
    dev = torch.device("cuda")
    x = torch.randn(1 << 22, device=dev)
    rows = timing.kernel_times(lambda: x.exp().sum(), dev)
    assert len(rows) >= 2 and all(ms > 0 and n >= 1 for ms, n, _ in rows)


@CUDA
def test_the_pytest_benchmark_clock_reads_stream_time_in_seconds():
    from segtriton.bench.pytest_timer import CudaEventClock

    clock = CudaEventClock()
    before = clock()
    torch.cuda._sleep(200_000_000)  # cycles: about 0.1 s at 2 GHz, spent on the GPU
    after = clock()
    assert 0.02 < after - before < 2.0


def test_the_l2_flush_setup_hands_pytest_benchmark_no_arguments(monkeypatch):
    """pytest-benchmark takes what ``setup`` returns as the round's ``(args, kwargs)``: a
    flush that returned its buffer failed every round of the GPU benchmarks (2026-12-04)."""
    from segtriton.bench.timing import l2_flush

    calls = []
    monkeypatch.setattr(torch.Tensor, "zero_", lambda self: calls.append(self.numel()) or self)
    setup = l2_flush(torch.device("cpu"))
    assert setup() is None
    assert calls == [256 * 2**20]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_the_probe_refuses_a_machine_without_cuda():
    """``bench/probe.py`` times CUDA kernels; without a device it says so and fails."""
    argv = [sys.executable, "-m", "segtriton.bench.probe"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr


def test_environment_names_versions_commit_and_the_peers():
    info = env.environment()
    assert info["torch"] == torch.__version__
    assert info["triton"] == importlib.metadata.version("triton")
    assert info["cuda_available"] == torch.cuda.is_available()
    for peer in env.PEERS:  # installed or not (the GPU image may lack them)
        try:
            want = importlib.metadata.version(peer)
        except importlib.metadata.PackageNotFoundError:
            want = None
        assert info[f"peer:{peer}"] == want, peer
    here = env.os.path.dirname(env.__file__)
    try:  # a copy of the tree without .git, or a machine without git, has no commit
        run = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here)
        head = run.stdout.strip() if run.returncode == 0 else ""
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=here).returncode == 1
    except OSError:
        head = ""
    assert info["git_commit"] == ((head + "-dirty" * dirty) if head else None)


def test_a_checkout_with_changes_is_stamped_dirty(monkeypatch):
    """Tracked files that differ from HEAD (``git diff --quiet`` exits 1) mark the commit,
    so a run of uncommitted code is not credited to it."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd[:3])
        changed = cmd[1] == "diff"
        return types.SimpleNamespace(stdout="" if changed else "abc123\n", returncode=int(changed))

    monkeypatch.setattr(env.subprocess, "run", run)
    assert env._git_commit() == "abc123-dirty"
    assert calls == [["git", "rev-parse", "HEAD"], ["git", "diff", "--quiet"]]


def test_environment_describes_the_gpu_where_there_is_one(monkeypatch):
    props = types.SimpleNamespace(name="GPU X", total_memory=80 * 2**30, multi_processor_count=132)
    monkeypatch.setattr(env.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(env.torch.cuda, "get_device_properties", {0: props}.__getitem__)
    monkeypatch.setattr(env, "_driver_version", lambda: "550.1")
    info = env.environment()
    assert (info["gpu"], info["gpu_memory_gib"], info["sm_count"]) == ("GPU X", 80.0, 132)
    assert info["driver"] == "550.1" and info["cuda"] == torch.version.cuda
    assert info["cuda_available"] is True


@pytest.mark.parametrize(
    ("stdout", "want"), [("550.54.15\n535.1\n", "550.54.15"), ("\n", None), (None, None)]
)
def test_driver_version_reads_the_first_gpu_and_lookups_survive_a_missing_tool(
    monkeypatch, stdout, want
):
    def run(cmd, **kwargs):
        if cmd[0] == "nvidia-smi":  # str output, and a failing tool raises
            assert kwargs["text"] and kwargs["check"]
        if stdout is None:
            raise FileNotFoundError("nvidia-smi")
        return types.SimpleNamespace(stdout=stdout, returncode=0)

    monkeypatch.setattr(env.subprocess, "run", run)
    assert env._driver_version() == want
    assert env._git_commit() == (stdout.strip() or None if stdout else None)


def test_provenance_names_the_command_versions_and_date():
    line = env.provenance("segtriton sweep --preset quick")
    assert line.startswith("Command: `segtriton sweep --preset quick` (SEGTRITON_MAX_TILE=")
    tiles = env._tiles  # every knob the lease varies, as this process read it
    assert f"SEGTRITON_UNROLL={tiles.UNROLL[0]},{tiles.UNROLL[1]}," in line
    assert f"SEGTRITON_WRITE_ROWS={tiles.WRITE_ROWS}," in line
    assert f"SEGTRITON_COLUMN={tiles.COLUMN_CLASSES}," in line
    assert f"SEGTRITON_COLUMN_PIXELS={tiles.COLUMN_PIXELS}," in line
    assert f"SEGTRITON_FLAT={int(tiles.FLAT)}," in line
    assert f"SEGTRITON_HIST_BINS={tiles.HIST_BINS})" in line
    assert f"torch {torch.__version__}" in line
    stamp = line.rsplit(", ", 1)[1].rstrip(".")
    assert datetime.datetime.fromisoformat(stamp).tzinfo is not None
