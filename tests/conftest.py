"""Test configuration: Triton's interpreter on machines without a GPU, and logged seeds.

``TRITON_INTERPRET=1`` must be set before triton is first imported, so it is decided here,
before any test module imports segtriton.kernels.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (printed, so a failure shows it); SEGTRITON_SEED fixes it."""
    value = int(os.environ.get("SEGTRITON_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={value} (rerun with SEGTRITON_SEED={value})")
    return value


@pytest.fixture
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark tests (tests/test_benchmarks.py) with pytest-benchmark",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-xdist (bench/gpu_run.sh uses it on the GPU) needs the same test ids in every
    # worker: an id built from an object's repr holds its address and differs per process
    unstable = [item.nodeid for item in items if " at 0x" in item.nodeid]
    if unstable:
        raise pytest.UsageError(f"test ids hold memory addresses (give ids=): {unstable[:3]}")
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="a benchmark: run with pytest --benchmark")
    for item in items:
        if any(name.startswith("benchmark_case") for name in item.fixturenames):
            item.add_marker(skip)
