"""Input validation and small helpers shared by every reference loss and metric.

Conventions (all losses):
- ``logits`` is ``[B, C, *spatial]`` (one or more spatial dims), any floating dtype.
  Arithmetic runs in float32, or float64 when the logits are float64.
- multiclass targets are integer labels ``[B, *spatial]`` (any of ``LABEL_DTYPES``: 8 to 64
  bits, signed or not; ``ignore_index`` any int64 but ``RESERVED_IGNORE``);
  binary / multilabel targets are ``{0, 1}`` or soft masks ``[B, C, *spatial]``
  (for C = 1 a ``[B, *spatial]`` mask is accepted too).
- ``ignore_index`` marks target values that take no part in the loss.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, ParamSpec, TypeGuard, TypeVar, cast, overload

import numpy as np
import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

MODES = ("multiclass", "binary", "multilabel")


_VALUE_CHECKS = [True]


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn the reads of label / mask values that validate them on or off (they are on by
    default). The benchmark turns them off so that eager and torch.compile baselines are
    timed without the host sync they cost; torch.compile tracing skips them anyway."""
    before = _VALUE_CHECKS[0]
    _VALUE_CHECKS[0] = enabled
    try:
        yield
    finally:
        _VALUE_CHECKS[0] = before


def _checking_values() -> bool:
    return _VALUE_CHECKS[0] and not torch.compiler.is_compiling()


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool: True or False (a NumPy bool too); anything else, such as the
    string 'yes', None or 1, is a TypeError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool (True or False), got {value!r}")


P = ParamSpec("P")
R = TypeVar("R")


def checks_flags(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a loss or metric so that every option annotated ``bool`` passes
    :func:`check_flag` (and reaches ``fn`` as a Python bool) before ``fn`` runs. The
    signature stays ``fn``'s, for type checkers too."""
    params = list(inspect.signature(fn).parameters.values())
    flags = [(i, p.name) for i, p in enumerate(params) if p.annotation in (bool, "bool")]

    @functools.wraps(fn)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        args_ = list(args)
        for i, name in flags:
            if i < len(args_):
                args_[i] = check_flag(name, args_[i])
            elif name in kwargs:
                kwargs[name] = check_flag(name, kwargs[name])
        return fn(*args_, **kwargs)  # type: ignore[arg-type]  # the same arguments, checked

    return checked


def is_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is one real number (Python or NumPy scalar, or the symbolic one
    torch.compile passes), as opposed to a per-class vector."""
    return isinstance(value, (numbers.Real, torch.SymFloat, torch.SymInt))


def is_finite(v: float) -> bool:
    """Whether the number ``v`` is finite, also for a symbolic float under torch.compile
    (``math.isfinite`` cannot take one): ``v - v`` is NaN for inf and NaN."""
    return v - v == 0


@overload
def check_number(
    name: str, value: object, low: float = ..., high: float = ..., none_ok: Literal[False] = ...
) -> float: ...
@overload
def check_number(
    name: str, value: object, low: float = ..., high: float = ..., none_ok: bool = ...
) -> float | None: ...
def check_number(
    name: str, value: object, low: float = 0.0, high: float = math.inf, none_ok: bool = False
) -> float | None:
    """``value`` as a float (a symbolic one under torch.compile stays symbolic): a finite
    real number (a Python or NumPy scalar; not a bool, tensor or list) in ``[low, high]``,
    or None when ``none_ok``. Otherwise a TypeError or ValueError that names ``name``."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not is_number(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    # a symbolic number stays symbolic (comparisons become guards)
    v = cast(float, value) if isinstance(value, (torch.SymFloat, torch.SymInt)) else float(value)
    if not (is_finite(v) and low <= v <= high):
        bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f"finite and >= {low:g}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return v


def check_numbers(name: str, values: object) -> list[float]:
    """``values`` as a list of floats: a sequence (list, tuple, 1-D array) of real numbers,
    else a TypeError naming ``name`` (their range is the caller's to check)."""
    numbers_ = None if isinstance(values, (str, bytes)) else _python_numbers(values)
    if numbers_ is None or _holds_bools(values):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}")
    return numbers_


def check_class_indices(name: str, values: object, C: int) -> list[int]:
    """``values`` as a non-empty list of class indices in ``[0, C)``: a sequence of
    integers (not bools) or a 1-D integer CPU tensor, else a TypeError or ValueError naming
    ``name``. A GPU tensor is refused: reading it inside a loss would synchronise."""
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            raise TypeError(
                f"{name} must be a list or a CPU tensor, got a tensor on {values.device} "
                "(reading it would synchronise with the device every call)"
            )
        values = values.tolist()
    seq = None if isinstance(values, (str, bytes)) else values
    if not isinstance(seq, (Sequence, np.ndarray)) or not all(
        isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in seq
    ):
        raise TypeError(f"{name} must be a sequence of integer class indices, got {values!r}")
    idx = [int(c) for c in seq]
    if not idx or any(not 0 <= c < C for c in idx):
        raise ValueError(f"{name} must be a non-empty list of indices in [0, {C}), got {idx}")
    return idx


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, (numbers.Integral, torch.SymInt)) and not isinstance(value, bool)


def check_num_classes(num_classes: object, what: str = "") -> int:
    """``num_classes`` as an int >= 1 (a TypeError or ValueError naming it otherwise);
    ``what`` names the caller in the message."""
    if num_classes is None and what:
        raise ValueError(f"{what} needs num_classes >= 1")
    if not _is_int(num_classes):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


RESERVED_IGNORE = -(2**31)  # the kernels' stand-in for ignore_index=None on labels


def check_ignore_index(ignore_index: object, labels: bool) -> None:
    """``ignore_index`` is None, an int64 other than ``RESERVED_IGNORE`` (-2^31) for integer
    labels, or a real number for masks (a float such as 2.5 would match no label, or be
    truncated to one)."""
    if ignore_index is None:
        return
    if labels and _is_int(ignore_index):
        if not -(2**63) <= ignore_index < 2**63:
            raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
        if ignore_index == RESERVED_IGNORE:
            raise ValueError(
                f"ignore_index={RESERVED_IGNORE} is reserved (the kernels' stand-in for "
                "None): use None or another value"
            )
        return
    if not labels and is_number(ignore_index) and not isinstance(ignore_index, bool):
        return
    kind = "an int (labels are integers)" if labels else "a number"
    raise TypeError(f"ignore_index must be None or {kind}, got {ignore_index!r}")


def check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got dtype {logits.dtype}")
    if logits.dim() < 3:
        raise ValueError(
            f"logits must be [B, C, *spatial] with at least one spatial dim, "
            f"got shape {tuple(logits.shape)}"
        )
    if logits.numel() == 0:
        raise ValueError(f"logits is empty (shape {tuple(logits.shape)})")


LABEL_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
)
# torch only stores, copies and views these (no ``>=``, ``max`` or indexing on every device):
# the host compares them widened to int64 or moves them as their signed twin, the kernels
# read them as they are.
SIGNED_TWIN = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def check_label_dtype(target: torch.Tensor) -> None:
    """Integer labels of any dtype in ``LABEL_DTYPES``, not empty. uint64 labels are read as
    int64 (by the reference and the kernels alike): a value from 2^63 up reads negative."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class labels, got dtype {target.dtype}")
    if target.dtype not in LABEL_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in LABEL_DTYPES)
        raise TypeError(f"target dtype {target.dtype} is not supported: use one of {names}")
    if target.numel() == 0:
        raise ValueError(f"target is empty (shape {tuple(target.shape)})")


def comparable(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` in a dtype torch compares on every device and release: uint16/32/64
    (see ``SIGNED_TWIN``) widened to int64 (a copy); the others as they are."""
    return labels.long() if labels.dtype in SIGNED_TWIN else labels


def valid_labels(target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Integer labels as int64, 0 where not ``valid``: ready to gather, index or one-hot
    with (widened first: torch's ``where`` takes no uint16/32/64 on every release, and a
    uint8 index would select as a mask)."""
    return torch.where(valid, target.long(), 0)


def not_ignored(target: torch.Tensor, ignore_index: float | None) -> torch.Tensor:
    """Where integer labels are not ``ignore_index``, compared as numbers (in int64): an
    ignore_index outside the label dtype's range matches no label, where torch's ``!=``
    would wrap it (uint8 labels equal -100 at 156)."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target.long() != ignore_index


def in_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Where integer labels lie in ``[0, num_classes)``, compared as numbers: past the label
    dtype's range the bound is its largest value, where torch's ``<`` would wrap it
    (uint8 labels against 300 classes compare with 44)."""
    labels = comparable(labels)
    top = min(num_classes - 1, torch.iinfo(labels.dtype).max)
    return (labels >= 0) & (labels <= top)


def label_mask(target: torch.Tensor, num_classes: int, ignore_index: float | None) -> torch.Tensor:
    """Check integer labels lie in ``[0, num_classes)`` or equal ``ignore_index``; return the
    valid (not ignored) mask. Reads the values (a host sync on a GPU)."""
    check_label_dtype(target)
    check_ignore_index(ignore_index, labels=True)
    valid = not_ignored(target, ignore_index)
    bad = valid & ~in_classes(target, num_classes)
    if _checking_values() and bool(bad.any()):
        value = int(comparable(target)[bad].flatten()[0])
        raise ValueError(
            f"target holds label {value} outside [0, {num_classes}) "
            f"that is not ignore_index={ignore_index}"
        )
    return valid


def check_label_shape(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Logits and label tensor agree in shape, device and dtype kind (no value reads). A
    target of the logits' shape (one-hot maps, MONAI's ``to_onehot_y=False`` form) is
    refused with a hint on what to pass instead."""
    check_logits(logits)
    if isinstance(target, torch.Tensor) and target.shape == logits.shape and logits.shape[1] > 1:
        raise (TypeError if target.is_floating_point() else ValueError)(
            f"target has the logits' shape {tuple(target.shape)}, but this loss takes integer "
            f"class labels [B, *spatial]: for one-hot maps pass target.argmax(1); for "
            "independent per-class masks use mode='multilabel' where the loss has it"
        )
    check_label_dtype(target)
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected labels of shape {expected}"
        )
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits on {logits.device}")


def check_labels(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: float | None
) -> torch.Tensor:
    """Validate integer labels ``[B, *spatial]`` against ``logits``; return the valid mask."""
    check_label_shape(logits, target)
    return label_mask(target, logits.shape[1], ignore_index)


def check_real_tensor(name: str, x: object) -> None:
    """``x`` must be a real (not complex) tensor: masks, probabilities or logits."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")


def mask_shape(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary/multilabel target as ``[B, C, *S]`` (a ``[B, *S]`` mask for C = 1 gains the
    channel dim), checked against the logits without reading values."""
    check_logits(logits)
    check_real_tensor("target", target)
    if logits.shape[1] == 1 and target.dim() == logits.dim() - 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            "binary/multilabel masks and class probabilities have the logits' shape"
        )
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits on {logits.device}")
    return target


def check_masks(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate binary/multilabel masks; return ``(target [B, C, *S] float, valid mask)``.

    Values must lie in [0, 1] (soft targets allowed) or equal ``ignore_index``.
    """
    target = mask_shape(logits, target)
    check_ignore_index(ignore_index, labels=False)
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = target != ignore_index
    t = target.to(acc_dtype(logits))
    bad = valid & ((t < 0) | (t > 1) | torch.isnan(t))
    if _checking_values() and bool(bad.any()):
        value = float(t[bad].flatten()[0])
        raise ValueError(
            f"target mask holds {value}, outside [0, 1] and not ignore_index={ignore_index}"
        )
    return torch.where(valid, t, torch.zeros((), dtype=t.dtype)), valid


def checked_target(
    logits: torch.Tensor,
    target: torch.Tensor,
    labels: bool,
    ignore_index: float | None,
    read_values: bool,
) -> torch.Tensor:
    """Integer labels (``labels``) or masks (returned as ``[B, C, *S]``) checked against the
    logits for a kernel; their values are read (a host sync) only with ``read_values``. A
    mask that requires grad is refused: the kernels give the target no gradient."""
    check_ignore_index(ignore_index, labels)
    if labels:
        check_label_shape(logits, target)
        if read_values:
            label_mask(target, logits.shape[1], ignore_index)
        return target
    target = mask_shape(logits, target)
    check_constant("target", target)
    if read_values:
        check_masks(logits, target, ignore_index)
    return target


def check_constant(name: str, value: torch.Tensor) -> None:
    """A kernel input that gets no gradient must not require one (it would silently get
    None where the reference gives a gradient)."""
    if value.requires_grad:
        raise ValueError(
            f"{name} requires grad, but the Triton kernels give it no gradient: pass "
            f"{name}.detach(), or use segtriton.reference for a gradient with respect to it"
        )


def check_mode(mode: str, logits: torch.Tensor) -> None:
    """``mode`` is one of ``MODES`` and the logits (checked first) have one channel for
    'binary'."""
    check_logits(logits)
    check_choice("mode", mode, MODES)
    if mode == "binary" and logits.shape[1] != 1:
        raise ValueError(
            f"mode='binary' needs logits with C=1 channel, got C={logits.shape[1]}; "
            "use mode='multilabel' for several independent sigmoid channels"
        )


_CONSTANTS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_CONSTANTS_KEPT = 64
_CAPTURED: dict[tuple, torch.Tensor] = {}  # read by a captured CUDA graph: never freed


def _capturing(device: torch.device) -> bool:
    """Whether work on ``device`` is being captured into a CUDA graph now."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def device_constant(
    values: Sequence[float] | Sequence[int] | Sequence[bool],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A read-only 1-D tensor of Python numbers on ``device``.

    It is copied to the device once per distinct ``(values, dtype, device)`` and reused by
    later calls (the last 64 are kept), so a loss given a Python list makes no host-to-device
    copy after its first call. Callers must not write into it. While torch.compile traces,
    a fresh tensor is returned (a constant of the graph), and so it is under a dispatch
    mode such as ``FakeTensorMode`` (a fake tensor kept would reach later real calls).
    While a CUDA graph is captured, the copy a warm-up call made is returned and kept for
    the life of the process (the graph reads it at every replay); with no warm-up there is
    no copy to return, and copying from the host during a capture is not allowed, so it
    raises RuntimeError.
    """
    device = torch.device(device)
    if torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
        return torch.tensor(list(values), dtype=dtype, device=device)
    key = (tuple(values), dtype, device)
    hit = _CONSTANTS.get(key, _CAPTURED.get(key))
    if _capturing(device):
        if hit is None:
            raise RuntimeError(
                f"{list(values)} must reach the device before CUDA graph capture: call the "
                "loss once with the same options before capturing it"
            )
        _CAPTURED[key] = hit
        return hit
    if hit is None:
        hit = torch.tensor(key[0], dtype=dtype, device=device)
    _CONSTANTS[key] = hit
    _CONSTANTS.move_to_end(key)
    if len(_CONSTANTS) > _CONSTANTS_KEPT:
        _CONSTANTS.popitem(last=False)
    return hit


def _holds_bools(value: object) -> bool:
    """Whether ``value`` is a bool tensor or array, or a sequence holding a bool: a bool is
    not a number here (torch refuses a bool ``weight``, and ``[True, False]`` is more
    likely a class mask than weights)."""
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bool
    if isinstance(value, np.ndarray):
        return value.dtype == np.bool_
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return any(isinstance(v, (bool, np.bool_)) for v in value)
    return False


def _python_numbers(value: object) -> list[float] | None:
    """``value`` as a list of floats when it is a sequence of Python/NumPy reals, else None."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            return None
    elif not isinstance(value, Sequence):
        return None
    if not all(isinstance(v, numbers.Real) for v in value):
        return None
    return [float(v) for v in value]


def reads_values(check_values: bool | None) -> bool:
    """Whether a tensor option's values are read (a host sync for a device tensor):
    ``check_values``, where None means outside ``torch.compile`` only, since a graph
    cannot branch on them. The references leave it None; the kernels pass ``validate``."""
    return not torch.compiler.is_compiling() if check_values is None else check_values


ClassVector = torch.Tensor | Sequence[float] | float


@overload
def check_class_vector(
    name: str,
    value: None,
    C: int,
    like: torch.Tensor,
    check_values: bool | None = ...,
    high: float = ...,
) -> None: ...
@overload
def check_class_vector(
    name: str,
    value: ClassVector,
    C: int,
    like: torch.Tensor,
    check_values: bool | None = ...,
    high: float = ...,
) -> torch.Tensor: ...
def check_class_vector(
    name: str,
    value: ClassVector | None,
    C: int,
    like: torch.Tensor,
    check_values: bool | None = None,
    high: float = math.inf,
) -> torch.Tensor | None:
    """Per-class vector (class weights, alpha, pos_weight) as a contiguous ``[C]`` tensor of
    ``like``'s dtype and device, its entries finite and in ``[0, high]``.

    ``value``: C numbers, or one for every class (a number, a one-element list or tensor,
    as torch broadcasts ``pos_weight``); a tensor may also be shaped ``[C, 1, ..., 1]``,
    the per-class form that broadcasts against ``[B, C, *spatial]`` in torch; bools, in a
    list or as a bool tensor, are refused, as torch refuses a bool ``weight``. A list of
    numbers is checked on the host (an entry out of range is rejected, at no cost) and
    becomes a cached :func:`device_constant`. A tensor's values are read only as
    :func:`reads_values` says."""
    if value is None:
        return None
    if is_number(value) and not isinstance(value, bool):
        value = [value]
    numbers_ = _python_numbers(value)  # None unless a sequence or array of numbers
    if _holds_bools(value):
        raise TypeError(f"{name} must hold numbers, got bools in a {type(value).__name__}")
    if isinstance(value, (str, bytes)) or not isinstance(
        value, (torch.Tensor, np.ndarray, Sequence)
    ):
        raise TypeError(
            f"{name} must be a tensor, a number or a sequence of numbers, "
            f"got {type(value).__name__}"
        )
    # the message is made only to raise: formatting a symbolic C would specialise it
    wanted = "one entry per class (C={}) or one for all"
    bound = "finite and non-negative" if math.isinf(high) else f"in [0, {high:g}]"
    if numbers_ is not None:
        if len(numbers_) != 1 and len(numbers_) != C:  # not `in (1, C)`: Dynamo finds no
            # symbolic C (torch.compile(dynamic=True)) in a tuple
            raise ValueError(f"{name} must have {wanted.format(C)}, got {len(numbers_)} entries")
        if any(not (is_finite(v) and 0 <= v <= high) for v in numbers_):
            raise ValueError(f"{name} must be {bound}, got {numbers_}")
        return device_constant(numbers_ * (C // len(numbers_)), like.dtype, like.device)
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.numel() == 1:
        v = v.reshape(1).expand(C)
    elif v.shape[0] != C or v.numel() != C:
        raise ValueError(
            f"{name} must have {wanted.format(C)}, or shape (C, 1, ..., 1); "
            f"got shape {tuple(v.shape)}"
        )
    v = v.reshape(C).contiguous()
    if reads_values(check_values) and not bool(((v >= 0) & (v <= high) & torch.isfinite(v)).all()):
        raise ValueError(f"{name} must be {bound}")
    return v


def flat(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, *S] -> [B, C, N]``."""
    return x.reshape(*x.shape[:2], -1)


def flat_labels(t: torch.Tensor) -> torch.Tensor:
    """``[B, *S] -> [B, N]``."""
    return t.reshape(t.shape[0], -1)


def holds_probabilities(target: object) -> TypeGuard[torch.Tensor]:
    """Whether ``target`` is a tensor of a dtype that can hold class probabilities:
    floating, or bool (a one-hot map, read as 0 and 1)."""
    return isinstance(target, torch.Tensor) and (
        target.is_floating_point() or target.dtype == torch.bool
    )


def probability_target(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: float | None
) -> bool:
    """Whether a multiclass region loss reads ``target`` as class probabilities: a floating
    (or bool) tensor of the logits' shape, one-hot or soft (MONAI's ``to_onehot_y=False``
    form), for C > 1. Such a target has no ignore_index (ValueError): leave the pixels out
    by labelling them instead."""
    probs = holds_probabilities(target) and target.shape == logits.shape and logits.shape[1] > 1
    if probs:
        check_no_ignore(target, ignore_index)
    return probs


def check_no_ignore(target: torch.Tensor, ignore_index: object) -> None:
    """A class-probability ``target`` has no labels to ignore: ValueError unless
    ``ignore_index`` is None."""
    if ignore_index is not None:
        raise ValueError(
            "ignore_index applies to integer labels; a class-probability target "
            f"{tuple(target.shape)} takes none (pass labels to ignore pixels)"
        )


def bad_probabilities(x: torch.Tensor, valid: torch.Tensor, read_values: bool) -> torch.Tensor:
    """Where ``x``, an input of probabilities (``from_logits=False``), lies outside [0, 1]
    (NaN included) at a counted entry (``valid``, broadcast to ``x``); with
    ``read_values`` (a host sync), a ValueError naming such a value."""
    bad = valid & ~((x >= 0) & (x <= 1))
    if read_values and bool(bad.any()):
        value = float(x.detach()[bad].flatten()[0])
        raise ValueError(
            f"from_logits=False reads the input as probabilities, but it holds {value}, "
            "outside [0, 1] (pass logits with from_logits=True)"
        )
    return bad


def check_probability_input(
    logits: torch.Tensor, target: torch.Tensor, labels: bool, ignore_index: float | None
) -> None:
    """A kernel's ``validate=True`` for ``from_logits=False``: ValueError unless every entry
    that ``target`` (checked: labels ``[B, *S]``, else ``[B, C, *S]`` masks or class
    probabilities) counts lies in [0, 1]. A host sync."""
    valid = not_ignored(target, ignore_index)
    if labels:
        valid = valid.unsqueeze(1)
    elif ignore_index is not None:  # masks: compared as they are, not as integers
        valid = target != ignore_index
    bad_probabilities(logits, valid, True)


def activate(
    x: torch.Tensor, valid: torch.Tensor, softmax: bool, from_logits: bool
) -> torch.Tensor:
    """``softmax(x)`` over dim 1 or ``sigmoid(x)``; ``x`` itself when not ``from_logits``,
    0 where not ``valid``, NaN where it lies outside [0, 1] (or a ValueError when values
    are checked)."""
    if not from_logits:
        p = torch.where(valid, x, 0.0)
        return p.masked_fill(bad_probabilities(x, valid, _checking_values()), math.nan)
    return torch.softmax(x, dim=1) if softmax else torch.sigmoid(x)


def region_inputs(
    logits: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: float | None,
    from_logits: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, one-hot/soft target and valid mask, each ``[B, C, N]``, masked.

    multiclass: ``p = softmax(logits)``, ``g = one_hot(target)`` (or ``g = target`` for
    class probabilities, see :func:`probability_target`); binary/multilabel:
    ``p = sigmoid(logits)``, ``g = target``. With ``from_logits=False`` the input is ``p``
    itself. Ignored positions have p = g = 0.
    """
    check_mode(mode, logits)
    x = flat(logits).to(acc_dtype(logits))
    multiclass = mode == "multiclass"
    if multiclass and probability_target(logits, target, ignore_index):
        t, valid = check_masks(logits, target, None)
        valid = flat(valid)
        return activate(x, valid, True, from_logits), flat(t).to(x.dtype), valid
    if multiclass:
        valid = check_labels(logits, target, ignore_index)
        labels = flat_labels(valid_labels(target, valid))
        valid = flat_labels(valid).unsqueeze(1)
        g = torch.nn.functional.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(x.dtype)
    else:
        t, valid = check_masks(logits, target, ignore_index)
        valid = flat(valid)
        g = flat(t)
    p = activate(x, valid, multiclass, from_logits)
    return p * valid, g * valid, valid.expand_as(p)


def reduce_pixels(loss: torch.Tensor, reduction: str, count: torch.Tensor) -> torch.Tensor:
    """'none' keeps ``loss``; 'sum' sums it; 'mean' divides the sum by ``count``."""
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    if reduction == "none":
        return loss
    total = loss.sum()
    return total if reduction == "sum" else total / count


def class_mean(loss: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean over the last (class) dim: ``sum w l / sum w`` per unit, and whether the
    unit has any weight (a unit with none gets 0, with zero gradient)."""
    den = weight.sum(-1)
    has = den > 0
    return (weight * loss).sum(-1) / torch.where(has, den, torch.ones_like(den)), has
