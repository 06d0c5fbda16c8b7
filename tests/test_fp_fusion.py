"""FMA contraction at launch: Triton up to 3.9 contracts ``a * b + c`` into FMA unless
``TRITON_DEFAULT_FP_FUSION=0``, and 3.10 turns it off by default. The `segtriton`
commands and the tests set the variable to 1 where it is unset; a training script that
imports the kernels sets nothing, so each launch asks for it itself (``kernel_jit``), but
for the erosion Hausdorff kernels, which ask for none.
These tests record the options every launch passes to Triton, with the variable unset
and with it set."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from kernel_checks import DEVICE, KERNELS, light_case

import segtriton.kernels as kernels
from segtriton.kernels import _runtime

VARIABLE = "TRITON_DEFAULT_FP_FUSION"
# the erosion Hausdorff loss's kernels compare for exact ties, and ask for no contraction
# (kernels/hausdorff_er.py), whatever the variable says
EXACT = {"_erosion_level_kernel", "_extrema_kernel", "_erosion_grad_kernel", "_tie_coef_kernel"}


@pytest.fixture
def launches(monkeypatch) -> list[tuple[str, object]]:
    """``(kernel name, enable_fp_fusion option or None)`` of every launch from here on."""
    cls = type(_runtime._axpy_kernel)  # JITFunction, or the interpreter's function
    launch = cls.run
    seen: list[tuple[str, object]] = []

    def record(self, *args, **kwargs):
        seen.append((self.__name__, kwargs.get("enable_fp_fusion")))
        return launch(self, *args, **kwargs)

    monkeypatch.setattr(cls, "run", record)
    return seen


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_every_loss_launch_asks_for_fma_when_the_variable_is_unset(
    entry, launches, monkeypatch, gen
):
    monkeypatch.delenv(VARIABLE, raising=False)
    options, logits, target = light_case(entry, (2, 3, 6, 7), gen)
    logits.requires_grad_(True)
    entry.kernel(logits, target, **options).sum().backward()
    assert launches, f"{entry.name}: no Triton launch recorded"
    exact = EXACT if entry.name == "hausdorff_er" else set()
    assert all(option is (name not in exact) for name, option in launches), launches
    assert exact <= {name for name, _ in launches}


def test_metric_launches_ask_for_fma_when_the_variable_is_unset(launches, monkeypatch, gen):
    monkeypatch.delenv(VARIABLE, raising=False)
    logits = torch.randn(2, 3, 9, 10, generator=gen).to(DEVICE)
    labels = torch.randint(0, 3, (2, 9, 10), generator=gen).to(DEVICE)
    kernels.segmentation_metrics(logits, labels, 3)
    kernels.surface_metrics(logits, labels, 3, tolerance=1.0)
    assert {name for name, _ in launches} >= {"_confusion_kernel", "_edt_first_kernel"}
    assert all(option is True for _, option in launches), launches


@pytest.mark.parametrize("value", ["0", "1"])
def test_a_set_variable_is_left_to_triton(value, launches, monkeypatch):
    monkeypatch.setenv(VARIABLE, value)
    assert _runtime.run_smoke_kernel(DEVICE) < 1e-5
    assert launches == [("_axpy_kernel", None)]


def test_every_kernel_in_the_package_is_made_by_kernel_jit():
    """A kernel defined with plain ``triton.jit`` would skip the option (the helpers
    they call are inlined, not launched: those may use it)."""
    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"segtriton.kernels.{info.name}")
        for name, obj in vars(module).items():
            if name.endswith("_kernel") and hasattr(obj, "fn"):
                found.append(name)
                run = vars(obj).get("run")
                assert run is not None and run.__qualname__.startswith("kernel_jit."), name
    assert len(found) >= 40, found
