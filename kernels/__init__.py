"""Triton implementations of the segtriton losses and metrics (same signatures as
``segtriton.reference``)."""

from ._runtime import interpreter_enabled, run_smoke_kernel
from .pixelwise import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    sigmoid_focal_loss,
    softmax_focal_loss,
)

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "interpreter_enabled",
    "run_smoke_kernel",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
