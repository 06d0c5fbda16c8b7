"""Triton implementations of the segtriton losses and metrics (same signatures as
``segtriton.reference``)."""

from ._runtime import interpreter_enabled, run_smoke_kernel

__all__ = ["interpreter_enabled", "run_smoke_kernel"]
