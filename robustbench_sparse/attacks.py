"""L-inf gradient attacks through torchattacks (default) or foolbox, with the budget enforced here.

Both libraries attack with cross-entropy on the logits. Whatever the backend returns is checked:
||x' - x||_inf <= eps + 1e-6 and x' in [0, 1], or the run stops with an error, so no number is ever
reported for an attack that left its threat model.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

BACKENDS = ("torchattacks", "foolbox")
ATTACKS = ("fgsm", "ifgsm", "mifgsm", "pgd")
FOOLBOX_ATTACKS = ("fgsm", "ifgsm", "pgd")  # foolbox 3 has no MI-FGSM
BOUND_TOLERANCE = 1e-6


class BudgetViolation(RuntimeError):
    """An attack returned inputs outside its eps-ball or outside [0, 1]."""


def step_size(params: dict[str, Any]) -> float:
    """The step alpha: as given, or Madry's rule 2.5 * eps / steps when `alpha = "auto"`."""
    alpha = params.get("alpha", "auto")
    return 2.5 * params["eps"] / params["steps"] if alpha == "auto" else float(alpha)


def _torchattacks(model: nn.Module, kind: str, params: dict[str, Any]) -> Any:
    import torchattacks

    eps = params["eps"]
    if kind == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    alpha, steps = step_size(params), params["steps"]
    if kind == "ifgsm":
        return torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)
    if kind == "mifgsm":
        return torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps, decay=params["decay"])
    return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=params["random_start"])


def _foolbox(model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
    if kind == "fgsm":
        attack: Any = foolbox.attacks.FGSM(random_start=False)
    elif kind == "ifgsm":
        attack = foolbox.attacks.LinfBasicIterativeAttack(abs_stepsize=step_size(params), steps=params["steps"])
    else:
        attack = foolbox.attacks.LinfPGD(
            abs_stepsize=step_size(params), steps=params["steps"], random_start=params["random_start"]
        )
    _, clipped, _ = attack(fmodel, x, y, epsilons=params["eps"])
    return clipped


def craft(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int
) -> torch.Tensor:
    """Adversarial versions of x (model must already be in eval mode). Random starts are seeded."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; valid: {', '.join(ATTACKS)}")
    if params["eps"] == 0:
        # The eps-ball is the point x: every L-inf attack returns x exactly (a test checks each
        # backend does), so the gradient steps are skipped.
        return x.clone()
    backend = params.get("backend", "torchattacks")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if backend == "foolbox":
            adv = _foolbox(model, kind, params, x, y)
        else:
            adv = _torchattacks(model, kind, params)(x, y)
    check_budget(x, adv, params["eps"])
    return adv.detach()


def check_budget(x: torch.Tensor, adv: torch.Tensor, eps: float) -> None:
    if adv.shape != x.shape:
        raise BudgetViolation(f"attack changed the input shape {tuple(x.shape)} -> {tuple(adv.shape)}")
    dist = (adv - x).abs().amax().item() if len(x) else 0.0
    if dist > eps + BOUND_TOLERANCE:
        raise BudgetViolation(f"attack exceeded its budget: ||x' - x||_inf = {dist:.6g} > eps = {eps}")
    if len(x) and (adv.min().item() < 0 or adv.max().item() > 1):
        raise BudgetViolation("attack left the [0, 1] pixel range")
