"""``segtriton.kernels`` has every ``nn.Module`` form of ``segtriton.reference`` around its
Triton function: same options, tensor options as buffers, picklable. Its functions have
their references' signatures (plus ``validate``: the same names, kinds and defaults) and
take every argument by name."""

from __future__ import annotations

import ast
import inspect
import io
from pathlib import Path

import pytest
import torch
from kernel_checks import DEVICE, LABEL_METRICS, label_metric

from segtriton import kernels as ker
from segtriton import reference as ref
from segtriton.reference.modules import LossModule, loss_modules
from segtriton.registry import LOSSES, make_inputs

REFERENCE_FORMS = loss_modules()


def test_every_reference_module_has_a_kernel_form():
    assert len(REFERENCE_FORMS) == len({e.reference for e in LOSSES})
    for name, cls in REFERENCE_FORMS.items():
        form = getattr(ker, name)
        assert name in ker.__all__ and issubclass(form, LossModule)
        assert form.fn is getattr(ker, cls.fn.__name__)
        assert form.__module__ == "segtriton.kernels"
        for module_form in (cls, form):
            assert module_form.fn.__doc__ and module_form.fn.__doc__ in module_form.__doc__


def test_type_checkers_see_every_kernel_form():
    """The forms are made at import; ``kernels/__init__.py`` names them all for type
    checkers in its ``if TYPE_CHECKING:`` import (the package ships ``py.typed``)."""
    tree = ast.parse((Path(ker.__file__).parent / "__init__.py").read_text())
    typing_block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    named = {alias.name for node in typing_block.body for alias in node.names}
    assert named == set(REFERENCE_FORMS)


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_kernel_module_equals_kernel_function(entry, gen):
    C = 1 if entry.is_binary(entry.variants[-1]) else 3
    opts = {**entry.variants[-1], "reduction": entry.reductions[0]}
    x, t = make_inputs(entry, (2, C, 5, 6), opts, torch.float32, gen, device=DEVICE)
    tensors = {
        k: torch.tensor(v) if isinstance(v, list) and k != "classes" else v for k, v in opts.items()
    }
    name = next(n for n, cls in REFERENCE_FORMS.items() if cls.fn is entry.reference)
    module = getattr(ker, name)(**tensors).to(DEVICE)
    assert torch.equal(module(x, t), entry.kernel(x, t, **opts))
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(module) and torch.equal(loaded(x, t), module(x, t))


def test_kernel_docs_carry_the_reference_docs():
    """``help()`` on a kernel shows the formulas and options, written once in the
    reference of its name, after the kernel's own notes (``validate`` and the like)."""
    shown = 0
    for name in ker.__all__:
        fn, ref_fn = getattr(ker, name), getattr(ref, name, None)
        if inspect.isfunction(fn) and ref_fn is not None and inspect.isfunction(ref_fn):
            doc, ref_doc = inspect.getdoc(fn), inspect.cleandoc(ref_fn.__doc__)
            assert doc.endswith(f"From ``segtriton.reference.{name}``:\n\n{ref_doc}"), name
            shown += 1
    assert shown >= 30 and "D = (2 I + smooth_nr)" in inspect.getdoc(ker.DiceLoss)


def test_kernel_functions_have_their_reference_signatures():
    named = [n for n in ker.__all__ if inspect.isfunction(getattr(ker, n)) and hasattr(ref, n)]
    assert len(named) > 30
    for name in named:
        params = dict(inspect.signature(getattr(ker, name)).parameters)
        params.pop("validate")
        ref_params = inspect.signature(getattr(ref, name)).parameters
        assert list(params) == list(ref_params), name
        for p, r in zip(params.values(), ref_params.values(), strict=True):
            assert (p.kind, p.default) == (r.kind, r.default), (name, p.name)


@pytest.mark.parametrize("entry", LOSSES, ids=lambda e: e.name)
def test_losses_take_their_inputs_by_name(entry, gen):
    opts = dict(entry.variants[0])
    shape = entry.fit_shape((2, 3, 5, 6), opts)
    x, y = make_inputs(entry, shape, opts, torch.float32, gen, device=DEVICE)
    assert torch.equal(entry.kernel(logits=x, target=y, **opts), entry.kernel(x, y, **opts))


@pytest.mark.parametrize("name", LABEL_METRICS)
def test_metrics_take_their_inputs_by_name(name, gen):
    y = torch.randint(0, 3, (2, 5, 6), generator=gen).to(DEVICE)
    fn = label_metric(ker, name, 3)
    by_name, positional = fn(preds=y.flip(1), target=y), fn(y.flip(1), y)
    torch.testing.assert_close(by_name, positional, rtol=0, atol=0, equal_nan=True)
