"""What every L-inf attack is: an `Attack` definition, and the invariants no attack can skip.

An attack family subclasses `Attack` and writes `build` (the attack of one backend, called on a
batch as `attack(x, y)`), plus `batch_dependent` or `check_params` where it needs them. The base
owns the rest: the parameters every attack shares (eps, backend, bpda, early_stop), the backend
checks, the seeded run (`run`: every random draw from the cell's seed, the global RNG left
untouched) and the budget (`check_budget`: ||x' - x||_inf <= eps + 1e-6 and x' in [0, 1], or the
run stops with `BudgetViolation`, so no number is reported for an attack that left its threat
model).
"""

from __future__ import annotations

import abc
import functools
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robustbench_sparse.perturb.attacks.bpda import valid_bpda
from robustbench_sparse.perturb.backends import BACKENDS
from robustbench_sparse.perturb.params import Param, boolean, choice, integer, number
from robustbench_sparse.runtime import BudgetViolation, UserError, stable_seed
from robustbench_sparse.zoo.sparse import SURROGATE_TEMPERATURE

BOUND_TOLERANCE = 1e-6

# One attack call on a batch: (images, labels) -> adversarial images (a torchattacks attack is one).
LibraryAttack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# A check across parameters: the message when the combination is refused, else None.
Constraint = Callable[[dict[str, Any]], str | None]

EPS = Param(0.0, number(0, 1), "0 <= eps <= 1 (L-inf, pixel space)")
STEPS = Param(10, integer(1), "an integer >= 1")
ALPHA = Param("auto", lambda v, _: v == "auto" or number(1e-9)(v, _), '"auto" (2.5 eps / steps) or > 0')
BACKEND = Param("torchattacks", choice(*BACKENDS), " or ".join(BACKENDS))
BPDA = Param(
    "none", lambda v, _: valid_bpda(v),
    "none, relu, identity, sigmoid or sigmoid:T with 0 < T <= 100 (k-winners backward: own mask, ReLU's, "
    f"straight-through, or a smooth surrogate of the mask at temperature T, default {SURROGATE_TEMPERATURE:g})",
)
EARLY_STOP = Param(
    True, boolean(),
    "true (each image stops at its first misclassified iterate; our loop, torchattacks' steps) or false "
    "(every image for every step, ending where the library's attack ends; default with backend=foolbox)",
)
_NAME = re.compile(r"[a-z][a-z0-9_-]*")  # what a spec string can name
OWN = "own"  # the backend of an attack written in this project (no library has it)



def check_budget(x: torch.Tensor, adv: torch.Tensor, eps: float) -> None:
    """Refuse an attack's output that left the eps-ball around x or the [0, 1] pixel range."""
    if adv.shape != x.shape:
        raise BudgetViolation(f"attack changed the input shape {tuple(x.shape)} -> {tuple(adv.shape)}")
    if len(x) and not bool(torch.isfinite(adv).all()):
        raise BudgetViolation("attack returned NaN or infinite pixels")
    dist = (adv - x).abs().amax().item() if len(x) else 0.0
    if dist > eps + BOUND_TOLERANCE:
        raise BudgetViolation(f"attack exceeded its budget: ||x' - x||_inf = {dist:.6g} > eps = {eps}")
    if len(x) and (adv.min().item() < 0 or adv.max().item() > 1):
        raise BudgetViolation("attack left the [0, 1] pixel range")


def early_stop_needs_torchattacks(params: dict[str, Any]) -> str | None:
    """The constraint of an iterative attack that foolbox can run too."""
    if params.get("backend") == "foolbox" and params.get("early_stop"):
        return ("early_stop=true runs our loop with torchattacks' update rule; with backend=foolbox set "
                "early_stop=false (the default there)")
    return None


@dataclass(frozen=True)
class Attack(abc.ABC):
    """One L-inf attack: its name in suites, its label in tables, its parameters, its backends.

    `own_params` are the attack's parameters besides the shared ones, which `params` adds: eps,
    backend (the `backends` it has), bpda (`gradients`: it follows input gradients) and early_stop
    (`iterative`: our loop runs it, `loop.IterativeAttack`).
    """

    name: str
    label: str
    description: str
    own_params: Mapping[str, Param] = field(default_factory=dict)
    # The libraries it runs through; () for an attack no library has, written here (`OWN`): it
    # then takes no `backend` parameter.
    backends: tuple[str, ...] = ("torchattacks",)
    gradients: bool = True
    own_constraints: tuple[Constraint, ...] = ()

    iterative: ClassVar[bool] = False
    stops_early: ClassVar[bool] = False  # always stops each image at its first misclassified iterate

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"attack name {self.name!r} cannot appear in a spec string; use [a-z][a-z0-9_-]*")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"{self.name}: backends {self.backends!r}; valid: one or more of {', '.join(BACKENDS)}")

    @functools.cached_property
    def params(self) -> dict[str, Param]:
        """Every parameter the attack takes, with its default and valid range, in listing order."""
        params = {"eps": EPS, **self.own_params}
        if self.backends:
            params["backend"] = self._backend_param()
        if self.gradients:
            params["bpda"] = BPDA
        if self.iterative:
            params["early_stop"] = EARLY_STOP
        return params

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        """The checks across parameters of a resolved evaluation (the attack's own first)."""
        shared = (early_stop_needs_torchattacks,) if self.iterative and "foolbox" in self.backends else ()
        return (*self.own_constraints, *shared)

    def _backend_param(self) -> Param:
        if self.backends == BACKENDS:
            return BACKEND
        missing = " and ".join(b for b in BACKENDS if b not in self.backends)
        return Param(self.backends[0], choice(*self.backends),
                     f"{' or '.join(self.backends)} ({missing} has no {self.label})")

    def check(self, params: dict[str, Any]) -> str:
        """The backend to craft with; combinations no backend can run are refused (UserError)."""
        if not self.backends:
            self.check_params(params, OWN)
            return OWN
        backend = params.get("backend", self.backends[0])
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if backend not in self.backends:
            raise UserError(f"{self.name} has no {backend} version; valid backend: {', '.join(self.backends)}")
        self.check_params(params, backend)
        if backend == "foolbox" and self.iterative and params.get("early_stop") is True:
            raise UserError("early_stop=true runs our torchattacks-mirroring loop; with backend=foolbox use early_stop=false")
        return backend

    def check_params(self, params: dict[str, Any], backend: str) -> None:
        """A family's own refusals at crafting time (raise UserError); none by default."""
        return None

    @abc.abstractmethod
    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        """The attack of `backend` (one of `backends`) on `model` (in eval mode) with these parameters."""

    def run_images(self, model: nn.Module, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor,
                   image_seeds: list[int], batch_size: int) -> torch.Tensor | None:
        """An attack seeded per image runs every image of x here at once (`image_seeds`: one per
        image; `batch_size`: how many inputs a forward pass may hold), so its result for an image
        depends on nothing else. None (the default): the attack is called per batch (`run`)."""
        return None

    def batch_dependent(self, params: dict[str, Any]) -> bool:
        """Whether an image's result depends on the other images of its batch (a batch-wide
        random draw): such an attack is called on whole batches."""
        return False

    def run(self, model: nn.Module, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int,
            backend: str) -> torch.Tensor:
        """One run on the batch x with every random draw seeded by `seed` (global RNG left untouched)."""
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self.build(backend, model, params, seed)(x, y)


def restart_seed(seed: int, restart: int) -> int:
    """The seed of restart r: restart 0 uses `seed` itself, so restarts=1 is the plain attack."""
    return seed if restart == 0 else stable_seed(seed, "restart", restart)


@torch.no_grad()
def fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1) != y


def import_foolbox() -> Any:
    """foolbox, imported without its DeprecationWarnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox
    return foolbox


def foolbox_attack(model: nn.Module, attack: Any, eps: float) -> LibraryAttack:
    """A foolbox attack as a call on a batch: the clipped examples at `eps` in [0, 1] pixels."""
    foolbox = import_foolbox()

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
        _, clipped, _ = attack(fmodel, x, y, epsilons=eps)
        return clipped

    return run
