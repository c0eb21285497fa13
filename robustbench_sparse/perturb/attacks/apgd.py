"""APGD and the standard AutoAttack, from torchattacks (Croce & Hein 2020, Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks).

APGD: PGD with an adaptive step size, on the cross-entropy or the DLR loss. AutoAttack: APGD-CE,
APGD-T, FAB-T and Square, each later attack only on the images still robust, with the original's
100 iterations and 5,000 queries, and a seed per cell (never the clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustbench_sparse.perturb.attacks.base import Attack, LibraryAttack
from robustbench_sparse.perturb.attacks.registry import register
from robustbench_sparse.perturb.params import Param, choice, integer
from robustbench_sparse.runtime import UserError

APGD_LOSSES = ("ce", "dlr")


@dataclass(frozen=True)
class APGD(Attack):
    """torchattacks' APGD (L-inf, one restart, rho = 0.75)."""

    def check_params(self, params: dict[str, Any], backend: str) -> None:
        loss = params.get("loss", "ce")
        if loss not in APGD_LOSSES:
            raise UserError(f"unknown loss {loss!r} for {self.name}; valid: {', '.join(APGD_LOSSES)}")

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        import torchattacks

        return torchattacks.APGD(model, norm="Linf", eps=params["eps"], steps=params["steps"], n_restarts=1,
                                 seed=seed, loss=params["loss"], rho=0.75, verbose=False)

    def batch_dependent(self, params: dict[str, Any]) -> bool:
        return True  # one batch-wide random start from the batch's seed


@dataclass(frozen=True)
class AutoAttack(Attack):
    """The standard AutoAttack, composed here: torchattacks.AutoAttack(version="standard") builds
    its four attacks with 10 iterations (the original uses 100) and seeds from the clock."""

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        if "n_classes" not in params:  # APGD-T and FAB-T target every other class
            def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    n_classes = model(x[:1]).shape[1]
                return self.build(backend, model, {**params, "n_classes": n_classes}, seed)(x, y)

            return run
        import torchattacks

        # MultiAttack runs each later attack only on the images every earlier one left correct,
        # so the result is the per-image worst case.
        eps, steps, n_classes = params["eps"], params["steps"], int(params["n_classes"])
        return torchattacks.MultiAttack([
            torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce",
                              rho=0.75, verbose=False),
            torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, rho=0.75,
                               verbose=False, n_classes=n_classes),
            torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                             multi_targeted=True, n_classes=n_classes, verbose=False),
            torchattacks.Square(model, norm="Linf", eps=eps, n_queries=params["n_queries"], n_restarts=1,
                                p_init=0.8, loss="margin", seed=seed, verbose=False),
        ])

    def batch_dependent(self, params: dict[str, Any]) -> bool:
        return True  # APGD's start and Square's search are batch-wide draws from the batch's seed


register(APGD(
    "apgd", "APGD",
    "APGD (Croce & Hein 2020; torchattacks): PGD with an adaptive step size, cross-entropy or DLR loss",
    {
        "steps": Param(100, integer(1), "an integer >= 1 (AutoAttack's APGD: 100)"),
        "loss": Param("ce", choice(*APGD_LOSSES), "ce (cross-entropy) or dlr (difference of "
                      "logits ratio, scale-invariant; needs >= 3 classes)"),
    },
))
register(AutoAttack(
    "autoattack", "AutoAttack",
    "standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square; each later attack on the images still "
    "correct, robust accuracy = the per-image worst case",
    {
        "steps": Param(100, integer(1), "an integer >= 1: iterations of APGD, APGD-T and FAB-T (original: 100)"),
        "n_queries": Param(5000, integer(1), "an integer >= 1: Square's queries (original: 5000)"),
    },
))
