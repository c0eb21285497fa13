"""BPDA: k-winners layers backpropagate through a stand-in while their forward values stay the same.

"relu": the backward of ReLU; "identity": straight-through; "sigmoid" (or "sigmoid:T", T the
temperature): a smooth surrogate of the top-k mask (`sparse.soft_winners`); "none": the layers'
own mask gradient.
A layer takes part either by applying BPDA itself (`handles_bpda`) or by looking like a k-winners
layer (`looks_like_kwinners`), which then gets a forward hook (docs/own-model.md#bpda-layers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from robustbench_sparse.runtime import UserError
from robustbench_sparse.zoo.sparse import SURROGATE_TEMPERATURE, _KWinnersBase, soft_winners

BPDA_MODES = ("none", "relu", "identity", "sigmoid")  # "none": the true (mask) gradient of k-winners


def valid_bpda(value: object) -> bool:
    """One of `BPDA_MODES`, or "sigmoid:T" with a temperature 0 < T <= 100."""
    if value in BPDA_MODES:
        return True
    if not isinstance(value, str) or not value.startswith("sigmoid:"):
        return False
    try:
        temperature = float(value.partition(":")[2])
    except ValueError:
        return False
    return 0 < temperature <= 100


def temperature_of(mode: str) -> float:
    """The surrogate's temperature in a "sigmoid[:T]" mode."""
    return float(mode.partition(":")[2] or SURROGATE_TEMPERATURE)


def handles_bpda(module: nn.Module) -> bool:
    """A layer that applies BPDA itself: our k-winners, or a layer declaring `rbs_bpda = True`
    whose forward honours its `bpda` attribute (None, "relu" or "identity")."""
    return isinstance(module, _KWinnersBase) or getattr(type(module), "rbs_bpda", False) is True


def looks_like_kwinners(module: nn.Module) -> bool:
    """A k-winners layer from another library, found by duck typing: it says so (`rbs_kwinners =
    True`), or it carries the k-winners state of nupic.torch's `KWinners` / `KWinners2d` (the
    paper's code): a `k_inference_factor` and a `duty_cycle`. Layers that apply BPDA themselves
    (`handles_bpda`) are not counted here."""
    if handles_bpda(module):
        return False
    if getattr(module, "rbs_kwinners", False) is True:
        return True
    return hasattr(module, "k_inference_factor") and hasattr(module, "duty_cycle")


def bpda_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The layers BPDA acts on: (those that apply it themselves, the duck-typed foreign k-winners
    that get a forward hook)."""
    own = [m for m in model.modules() if handles_bpda(m)]
    foreign = [m for m in model.modules() if looks_like_kwinners(m)]
    return own, foreign


def _stand_in_hook(mode: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    """A forward hook that keeps a layer's output value and gives it the stand-in's backward:
    out' = s(x) + (out - s(x)).detach(), s = ReLU or the identity on the layer's input x. This is
    what our layers do inside (`sparse._KWinnersBase._with_backward`) for a layer we cannot edit."""

    def hook(module: nn.Module, inputs: tuple[Any, ...], out: Any) -> Any:
        x = inputs[0]
        if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor) or x.shape != out.shape:
            raise UserError(f"BPDA needs the k-winners layer {type(module).__name__} to return one tensor of its "
                            f"input's shape (got {type(out).__name__}); see docs/own-model.md#bpda-layers")
        if mode.startswith("sigmoid"):
            # The layer's k: how many units of each sample it let through (all of them compete).
            k = int((out.detach().reshape(len(out), -1) != 0).sum(dim=1).max().clamp_min(1))
            surrogate = soft_winners(x, x, k, temperature_of(mode), dim_of_units=False)
        else:
            surrogate = torch.relu(x) if mode == "relu" else x
        return surrogate + (out - surrogate).detach()

    return hook


@contextlib.contextmanager
def bpda_backward(model: nn.Module, mode: str | None) -> Iterator[nn.Module]:
    """Every k-winners layer of `model` backpropagates as `mode` says while the block runs
    (`BPDA_MODES`; None is "none"). Forward values are unchanged. Each layer's previous setting
    is restored (hooks removed) afterwards, also when the block raises."""
    if mode is not None and not valid_bpda(mode):
        raise ValueError(f"unknown bpda mode {mode!r}; valid: {', '.join(BPDA_MODES)} or sigmoid:T")
    value = None if mode in (None, "none") else mode
    layers, foreign = bpda_layers(model)
    if value is not None and value.startswith("sigmoid"):
        theirs = [type(m).__name__ for m in layers if not isinstance(m, _KWinnersBase)
                  and getattr(type(m), "rbs_surrogate", False) is not True]
        if theirs:
            raise UserError(f"bpda={value}: the layer {theirs[0]} applies BPDA itself but does not declare the smooth "
                            "surrogate (rbs_surrogate = True); see docs/own-model.md#bpda-layers")
    previous = [layer.bpda for layer in layers]
    hooks = []
    try:
        for layer in layers:
            layer.bpda = value
        if value is not None:
            hooks = [layer.register_forward_hook(_stand_in_hook(value)) for layer in foreign]
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for layer, old in zip(layers, previous, strict=True):
            layer.bpda = old
