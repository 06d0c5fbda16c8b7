"""Custom ops that skip the dispatcher in eager mode.

Every loss is a ``torch.library`` custom op with a fake implementation, so that
``torch.compile(fullgraph=True)`` sees one opaque node. The dispatcher and the autograd
wrapper of a custom op cost hundreds of microseconds of host time per call, more than the
GPU needs for a Cityscapes-sized loss, and an eager training step pays them every call.
:func:`op` registers the custom op as usual and returns an :class:`Op` that, outside
tracing, runs the same Python implementation directly: through a ``torch.autograd.Function``
made from the op's ``setup_context`` and ``backward`` when an input requires grad, else as
a plain call. Under tracing (Dynamo, or the fake and functional tensors of AOTAutograd)
and for meta tensors, calls go through the custom op, and so does every call when the
environment sets ``SEGTRITON_EAGER_OPS=0`` (or the module's ``fast_eager`` is False).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch

from ._runtime import release

# torch.library before 2.7 cannot read these ops' schemas from their type hints (kept as
# strings, or list[int]): importing the kernels would fail inside its infer_schema
MIN_TORCH = (2, 7)


def check_torch(version: str) -> None:
    """An ImportError naming ``version`` where it is older than :data:`MIN_TORCH`."""
    if release(version) < MIN_TORCH:
        raise ImportError(
            f"segtriton.kernels needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (older "
            f"torch.library cannot read its custom ops' schemas); found torch {version}"
        )


check_torch(torch.__version__)

fast_eager = os.environ.get("SEGTRITON_EAGER_OPS", "1") not in ("", "0")


def _eager(first: torch.Tensor) -> bool:
    """Outside Dynamo, with a plain tensor on a real device as the op's first argument (the
    logits, or the labels: under AOTAutograd every tensor is a fake or functional one), the
    implementation can run as is."""
    if not fast_eager or torch.compiler.is_compiling():
        return False
    return type(first) is torch.Tensor and first.device.type != "meta"


def first_order(name: str, backward: Callable) -> Callable:
    """``backward`` that refuses ``create_graph=True`` (grad mode on in a backward): its
    gradient comes from Triton kernels and cannot be differentiated again, and a graph
    built around it would leave out the op's second-order terms without a word."""

    def guarded(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{name} is differentiable once (its gradient comes from a Triton kernel): "
                "create_graph=True would build a second-order graph without this op's "
                "terms; segtriton.reference gives higher-order gradients"
            )
        return backward(ctx, *grads)

    return guarded


class Op:
    """A custom op and its Python implementation; call it with positional arguments."""

    def __init__(self, name: str, impl: Callable, mutates_args: Iterable[str] = ()) -> None:
        self.name = name
        self.impl = impl
        self.custom_op = torch.library.custom_op(name, impl, mutates_args=tuple(mutates_args))
        self.function: type[torch.autograd.Function] | None = None

    def register_fake(self, fn: Callable) -> Callable:
        return self.custom_op.register_fake(fn)

    def register_autograd(self, backward: Callable, setup_context: Callable) -> None:
        """The custom op's autograd, and the same pair as an autograd.Function for eager;
        both refuse second derivatives (:func:`first_order`)."""
        backward = first_order(self.name, backward)
        self.custom_op.register_autograd(backward, setup_context=setup_context)
        impl = self.impl

        class _Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                output = impl(*args)
                setup_context(ctx, args, output)
                return output

            @staticmethod
            def backward(ctx, *grads):
                return backward(ctx, *grads)

        self.function = _Function

    def __call__(self, *args):
        if not _eager(args[0]):
            return self.custom_op(*args)
        if (
            self.function is not None
            and torch.is_grad_enabled()
            and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        ):
            return self.function.apply(*args)
        return self.impl(*args)


def op(name: str, mutates_args: Iterable[str] = ()) -> Callable[[Callable], Op]:
    """Decorator: ``@op("segtriton::name")`` on the implementation gives an :class:`Op`."""
    return lambda impl: Op(name, impl, mutates_args)
