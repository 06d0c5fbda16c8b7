"""Multi-scale training feeds the loss a new resolution and batch size every few steps.
Under ``torch.compile(dynamic=True, fullgraph=True)`` each loss must compile once for
all of them: a Python float or int made from a shape and handed to a custom op would be
specialised, every new shape would compile again, and past Dynamo's recompile limit
(8) ``fullgraph=True`` fails. The compiled loss and gradient equal eager's."""

from __future__ import annotations

import functools

import pytest
import torch
from kernel_checks import DEVICE, KERNELS, light_options
from torch._dynamo.testing import CompileCounterWithBackend

from segtriton import kernels, reference
from segtriton.reference.modules import loss_modules
from segtriton.registry import make_inputs

SHAPES = [(2, 3, 9, 11), (3, 3, 12, 7), (2, 3, 10, 13)]
VARIANTS = [
    pytest.param(entry, i, id=f"{entry.name}-{i}")
    for entry in KERNELS
    for i in range(1, len(entry.variants))
]

FORMS = loss_modules()
WITH_LISTS = [  # option sets whose lists become buffers of the nn.Module form, per library
    pytest.param(entry, i, lib, id=f"{entry.name}-{i}-{lib}")
    for entry in KERNELS
    for i, v in enumerate(entry.variants)
    if any(isinstance(x, list) and k != "classes" for k, x in v.items())
    for lib in ("kernel", "reference")
    # the OHEM reference keeps pixels by boolean indexing, as mmseg does: a shape that
    # depends on the data, so no whole graph with or without tensor options
    if lib == "kernel" or entry.name != "ohem_cross_entropy"
]


def _over_shapes(
    entry, options, backend, gen, check, loss=None, once=True, labels=torch.int64
) -> None:
    """Compile ``loss`` (default: the entry's kernel with ``options``) with
    ``dynamic=True, fullgraph=True`` on ``backend``, call ``check(step, x, t)`` at each of
    SHAPES (integer labels in ``labels``) and, with ``once``, assert nothing compiled after
    the first (which may count twice: Dynamo restarts once to specialise a float option)."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    loss = loss or functools.partial(entry.kernel, **options)
    step = torch.compile(loss, backend=counter, dynamic=True, fullgraph=True)
    compiles = []
    for shape in SHAPES:
        shape = entry.fit_shape(shape, options)
        x, t = make_inputs(entry, shape, options, torch.float32, gen, 0.2, label_dtype=labels)
        check(step, x.to(DEVICE), t.to(DEVICE))
        compiles.append(counter.frame_count)
    assert not once or compiles[1:] == compiles[:1] * (len(SHAPES) - 1), compiles


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_one_compile_for_every_shape(entry, gen):
    options = light_options(entry)

    def check(step, x, t):
        results = []
        for fn in (step, lambda x, t: entry.kernel(x, t, **options)):
            xi = x.detach().requires_grad_(True)
            loss = fn(xi, t)
            results.append((loss, *torch.autograd.grad(loss.sum(), xi)))
        for got, want in zip(*results, strict=True):
            _close(got, want)

    _over_shapes(entry, options, "aot_eager", gen, check)


@pytest.mark.parametrize(("entry", "variant"), VARIANTS)
def test_options_stay_valid_under_dynamic_shapes(entry, variant, gen):
    """Every other option set, forward only: a Python list of class weights, alpha or
    distances is symbolic under ``dynamic=True`` (``math.isfinite`` cannot check it).
    Labels come as uint16 here, a dtype torch only partly implements, through the traced
    custom ops and option checks."""
    options = light_options(entry, variant)

    def check(step, x, t):
        _close(step(x, t), entry.kernel(x, t, **options))

    _over_shapes(entry, options, "eager", gen, check, labels=torch.uint16)


@pytest.mark.parametrize(("entry", "variant", "lib"), WITH_LISTS)
def test_module_forms_with_tensor_options_compile_whole(entry, variant, lib, gen):
    """The ``nn.Module`` forms hold list options as tensor buffers (another path through
    the option checks than a list). The kernels' compile once. The references' (the
    `compile` provider's code, compiled as a user would) compile whole, as they leave
    tensor options unread under ``torch.compile``, where the check would be a host sync;
    how often they compile is torch's business (torch 2.11's ``F.cross_entropy`` with a
    probability target and class weights specialises every size)."""
    options = light_options(entry, variant)
    buffers = {k: torch.tensor(v) if isinstance(v, list) and k != "classes" else v
               for k, v in options.items()}  # fmt: skip
    name = next(n for n, cls in FORMS.items() if cls.fn is entry.reference)
    module = getattr(kernels if lib == "kernel" else reference, name)(**buffers).to(DEVICE)
    loss = getattr(entry, lib)

    def check(step, x, t):
        _close(step(x, t), loss(x, t, **options))

    _over_shapes(entry, options, "eager", gen, check, loss=module, once=lib == "kernel")
