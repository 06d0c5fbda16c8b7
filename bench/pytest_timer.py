"""A clock for pytest-benchmark that measures GPU time with CUDA events.

pytest-benchmark times a round as ``timer()`` after minus ``timer()`` before. This clock
records a CUDA event at each call and returns the GPU time elapsed since its first event,
so a round's duration is the stream time between the two events: the kernels of the call,
not the host's launch of them.
"""

from __future__ import annotations

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
