"""Square: a gradient-free random search on the margin loss (Andriushchenko et al. 2020, Square
attack: a query-efficient black-box adversarial attack via random search), from torchattacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from robustbench_sparse.perturb.attacks.base import Attack, LibraryAttack
from robustbench_sparse.perturb.attacks.registry import register
from robustbench_sparse.perturb.params import Param, integer, number


@dataclass(frozen=True)
class Square(Attack):
    """torchattacks' Square, one restart, seeded by the cell's seed (never the clock)."""

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        import torchattacks

        # Square seeds the global RNG with `seed` itself (torch.random.manual_seed, inside the
        # seeded run's forked RNG); with seed=None it would use the clock.
        return torchattacks.Square(
            model, norm="Linf", eps=params["eps"], n_queries=params["n_queries"], n_restarts=1,
            p_init=params["p_init"], loss="margin", seed=seed, verbose=False,
        )

    def batch_dependent(self, params: dict[str, Any]) -> bool:
        return True  # one batch-wide random search from the batch's seed


register(Square(
    "square", "Square", "Square attack: gradient-free random search on the margin loss",
    {
        "n_queries": Param(1000, integer(1), "an integer >= 1"),
        "p_init": Param(0.8, lambda v, _: number(0, 1)(v, _) and v > 0, "0 < p_init <= 1"),
    },
    gradients=False,
))
