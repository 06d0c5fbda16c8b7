"""A clock for pytest-benchmark that measures GPU time with CUDA events.

pytest-benchmark times a round as ``timer()`` after minus ``timer()`` before. This clock
records a CUDA event at each call and returns the GPU time elapsed since its first event,
so a round's duration is the stream time between the two events: the kernels of the call,
not the host's launch of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class CudaEventClock:
    def __init__(self) -> None:
        self._origin = torch.cuda.Event(enable_timing=True)
        self._origin.record()

    def __call__(self) -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        return self._origin.elapsed_time(event) / 1e3


def l2_flush(device: torch.device) -> Callable[[], None]:
    """A pytest-benchmark ``setup`` that overwrites 256 MiB on ``device``, so each round
    starts with a cold L2. It returns None: a setup's return value is taken as the round's
    ``(args, kwargs)``, and a returned tensor made every round fail."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device)

    def setup() -> None:
        flush.zero_()

    return setup
