"""The iterative gradient attacks: I-FGSM (BIM), MI-FGSM and PGD.

With backend=torchattacks each runs in our loop (`loop.py`), mirroring torchattacks' BIM, MIFGSM
and PGD (v3.5) update for update; `build` gives the library's own attack, the loop's cross-check.
PGD with `loss = "margin"` climbs max_{j != y} z_j - z_y on the logits instead of the
cross-entropy and draws its random start per image. `restarts` re-runs PGD with derived seeds,
keeping per sample the first example that fools.

Madry et al. 2018, Towards deep learning models resistant to adversarial attacks (PGD);
Kurakin et al. 2017 (BIM); Dong et al. 2018 (MI-FGSM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from robustbench_sparse.perturb.attacks.base import (
    ALPHA,
    BACKENDS,
    STEPS,
    LibraryAttack,
    foolbox_attack,
    import_foolbox,
)
from robustbench_sparse.perturb.attacks.loop import IterativeAttack, step_size
from robustbench_sparse.perturb.attacks.registry import register
from robustbench_sparse.perturb.params import Param, boolean, choice, integer, number
from robustbench_sparse.runtime import UserError, generator

PGD_LOSSES = ("ce", "margin")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample max_{j != y} z_j - z_y on the logits (CW / DLR style): > 0 iff misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return others - true


@dataclass(frozen=True)
class IFGSM(IterativeAttack):
    """I-FGSM: steps of alpha sign(g) from x, each kept in the eps-ball and [0, 1] as BIM does."""

    def project(self, moved: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """x' <- min(max(x' + alpha sign(g), max(x - eps, 0)), x + eps, 1), BIM's order."""
        low, high = torch.clamp(x - eps, min=0), x + eps
        above_low = torch.where(moved >= low, moved, low)
        return torch.clamp(torch.where(above_low > high, high, above_low), max=1)

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        if backend == "foolbox":
            foolbox = import_foolbox()
            attack = foolbox.attacks.LinfBasicIterativeAttack(abs_stepsize=step_size(params), steps=params["steps"])
            return foolbox_attack(model, attack, params["eps"])
        import torchattacks

        return torchattacks.BIM(model, eps=params["eps"], alpha=step_size(params), steps=params["steps"])


@dataclass(frozen=True)
class MIFGSM(IterativeAttack):
    """MI-FGSM: g <- g / mean|g| + decay m per image, m <- g. Where the gradient is exactly zero
    this is 0 / 0 = NaN, as in the library; torch's sign(NaN) = 0, so such an image stops moving."""

    momentum: ClassVar[bool] = True

    def with_momentum(self, grad: torch.Tensor, momentum: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        grad = grad / torch.mean(torch.abs(grad), dim=tuple(range(1, grad.dim())), keepdim=True)
        return grad + momentum * params["decay"]

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        import torchattacks

        return torchattacks.MIFGSM(model, eps=params["eps"], alpha=step_size(params), steps=params["steps"],
                                   decay=params["decay"])


def _margin(params: dict[str, Any]) -> bool:
    return params.get("loss", "ce") == "margin"


def _foolbox_pgd_needs_ce(params: dict[str, Any]) -> str | None:
    if params.get("backend") == "foolbox" and params.get("loss") == "margin":
        return ("loss='margin' needs backend=torchattacks (foolbox's LinfPGD attacks cross-entropy only); "
                "valid: loss=ce with backend=foolbox, or loss=ce or margin with backend=torchattacks")
    return None


@dataclass(frozen=True)
class PGD(IterativeAttack):
    """PGD from a uniform random start in the eps-ball, on the cross-entropy or the margin."""

    def start(self, params: dict[str, Any], x: torch.Tensor, seed: int, image_seeds: list[int]) -> torch.Tensor:
        """Cross-entropy PGD: exactly torchattacks.PGD's draw, one uniform tensor for the whole
        batch from the global RNG seeded with `seed` (so a batch's images start where the library
        starts them). Margin PGD: a uniform start per image from its own seed (the result does not
        depend on the batch). Without random start: x."""
        eps = params["eps"]
        if not params.get("random_start", True):
            return x.clone()
        if _margin(params):
            noise = torch.stack([torch.rand(x.shape[1:], generator=generator(s)) for s in image_seeds]).to(x)
            return (x + (noise * (2 * eps) - eps)).clamp(0, 1)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            noise = torch.empty_like(x).uniform_(-eps, eps)
        return torch.clamp(x + noise, min=0, max=1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """The cross-entropy as the library averages it, or the margin summed over the images."""
        if _margin(params):
            return margin_loss(logits, y).sum()
        return super().loss(logits, y, scale, params)

    def batch_dependent(self, params: dict[str, Any]) -> bool:
        """The library's random start is one batch-wide draw, and restarts run on the batch's
        survivors; margin PGD draws its start per image."""
        if _margin(params):
            return False
        return bool(params.get("random_start", True)) or int(params.get("restarts", 1)) > 1

    def check_params(self, params: dict[str, Any], backend: str) -> None:
        loss = params.get("loss", "ce")
        if loss not in PGD_LOSSES:
            raise UserError(f"unknown loss {loss!r} for {self.name}; valid: {', '.join(PGD_LOSSES)}")
        if loss == "margin" and backend == "foolbox":
            raise UserError("pgd with loss=margin runs only with backend=torchattacks (foolbox attacks cross-entropy)")

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        if backend == "foolbox":
            foolbox = import_foolbox()
            attack = foolbox.attacks.LinfPGD(abs_stepsize=step_size(params), steps=params["steps"],
                                             random_start=params["random_start"])
            return foolbox_attack(model, attack, params["eps"])
        import torchattacks

        return torchattacks.PGD(model, eps=params["eps"], alpha=step_size(params), steps=params["steps"],
                                random_start=params["random_start"])


register(IFGSM(
    "ifgsm", "I-FGSM", "iterative FGSM (BIM)",
    {"steps": STEPS, "alpha": ALPHA},
    backends=BACKENDS,
))
register(MIFGSM(
    "mifgsm", "MI-FGSM", "momentum iterative FGSM",
    {"steps": STEPS, "alpha": ALPHA, "decay": Param(1.0, number(0), "decay >= 0")},
))
register(PGD(
    "pgd", "PGD", "projected gradient descent with a random start (per-sample worst case over restarts)",
    {
        "steps": Param(40, integer(1), "an integer >= 1"),
        "alpha": ALPHA,
        "random_start": Param(True, boolean(), "true or false"),
        "restarts": Param(1, integer(1), "an integer >= 1 (runs with derived seeds, worst case per sample)"),
        "loss": Param("ce", choice(*PGD_LOSSES), "ce (cross-entropy) or margin (max_{j != y} z_j - z_y on the logits)"),
    },
    backends=BACKENDS,
    own_constraints=(_foolbox_pgd_needs_ce,),
))
