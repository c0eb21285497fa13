"""FGSM: one signed-gradient step of size eps (Goodfellow et al. 2015, Explaining and harnessing
adversarial examples), through torchattacks or foolbox."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from robustbench_sparse.perturb.attacks.base import BACKENDS, Attack, LibraryAttack, foolbox_attack, import_foolbox
from robustbench_sparse.perturb.attacks.registry import register


@dataclass(frozen=True)
class FGSM(Attack):
    """x' = clamp(x + eps sign(grad_x CE(f(x), y)), 0, 1): deterministic, per image."""

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        if backend == "foolbox":
            return foolbox_attack(model, import_foolbox().attacks.FGSM(random_start=False), params["eps"])
        import torchattacks

        return torchattacks.FGSM(model, eps=params["eps"])


register(FGSM("fgsm", "FGSM", "one signed-gradient step of size eps", backends=BACKENDS))
