"""L-inf attacks through torchattacks (default) or foolbox, with the budget enforced here.

Gradient attacks use cross-entropy on the logits, except PGD with `loss = "margin"`, which runs a
small PGD loop of our own on the margin max_{j != y} z_j - z_y. The gradient-free Square attack
comes from torchattacks. Whatever an attack returns is checked:
||x' - x||_inf <= eps + 1e-6 and x' in [0, 1], or the run stops with an error, so no number is ever
reported for an attack that left its threat model.

Adaptive options against gradient masking (REFERENCE.md section 7):
- `bpda`: k-winners layers backpropagate through a stand-in (ReLU's backward or the identity)
  while their forward values stay exactly the same (`bpda_backward`);
- `restarts`: PGD re-run with derived seeds, keeping per sample the first example that fools;
- `square`: a random search that needs no gradients at all;
- `gradient_health`: the fraction of inputs whose input gradient is zero or not finite.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_sparse.runtime import UserError, eval_mode, generator, stable_seed
from robustbench_sparse.sparse import kwinner_layers

BACKENDS = ("torchattacks", "foolbox")
ATTACKS = ("fgsm", "ifgsm", "mifgsm", "pgd", "square")
GRADIENT_ATTACKS = ("fgsm", "ifgsm", "mifgsm", "pgd")  # the kinds that take `bpda`
FOOLBOX_ATTACKS = ("fgsm", "ifgsm", "pgd")  # foolbox 3 has no MI-FGSM (nor Square)
BPDA_MODES = ("none", "relu", "identity")  # "none": the true (mask) gradient of k-winners
PGD_LOSSES = ("ce", "margin")
BOUND_TOLERANCE = 1e-6


class BudgetViolation(RuntimeError):
    """An attack returned inputs outside its eps-ball or outside [0, 1]."""


def step_size(params: dict[str, Any]) -> float:
    """The step alpha: as given, or Madry's rule 2.5 * eps / steps when `alpha = "auto"`."""
    alpha = params.get("alpha", "auto")
    return 2.5 * params["eps"] / params["steps"] if alpha == "auto" else float(alpha)


@contextlib.contextmanager
def bpda_backward(model: nn.Module, mode: str | None) -> Iterator[nn.Module]:
    """Every k-winners layer of `model` backpropagates as `mode` says while the block runs.

    "relu": the backward of ReLU; "identity": straight-through; "none" (or None): the layers' own
    mask gradient. Forward values are unchanged (the layers add the stand-in's gradient only).
    Each layer's previous setting is restored afterwards, also when the block raises.
    """
    if mode not in (*BPDA_MODES, None):
        raise ValueError(f"unknown bpda mode {mode!r}; valid: {', '.join(BPDA_MODES)}")
    value = None if mode in (None, "none") else mode
    layers = kwinner_layers(model)
    previous = [layer.bpda for layer in layers]
    try:
        for layer in layers:
            layer.bpda = value
        yield model
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.bpda = old


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample max_{j != y} z_j - z_y on the logits (CW / DLR style): > 0 iff misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return others - true


def batch_dependent(kind: str, params: dict[str, Any]) -> bool:
    """Whether the attack's result for an image depends on the other images of its batch: true
    where the library draws one batch-wide random tensor (torchattacks' and foolbox's PGD random
    start, Square's random search, restarts run on the batch's survivors). Our own margin PGD
    draws its start per image, and FGSM / I-FGSM / MI-FGSM are deterministic."""
    if kind == "square":
        return True
    if kind != "pgd":
        return False
    if params.get("loss", "ce") == "margin":
        return False
    return bool(params.get("random_start", True)) or int(params.get("restarts", 1)) > 1


def _margin_pgd(
    model: nn.Module, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, image_seeds: list[int]
) -> torch.Tensor:
    """L-inf PGD that ascends the margin loss.

    Hand-written because torchattacks.PGD hard-codes cross-entropy (and foolbox's LinfPGD too), and
    the margin is the loss that does not saturate when the softmax does. Same scheme as
    torchattacks.PGD: uniform random start in the ball, signed steps of alpha, projection onto the
    eps-ball and [0, 1] after every step. The start is drawn per image from its own seed, so the
    result does not depend on the batch.
    """
    eps, alpha, steps = params["eps"], step_size(params), params["steps"]
    x, y = x.detach(), y.detach()
    adv = x.clone()
    if params.get("random_start", True):
        start = torch.stack([
            torch.rand(x.shape[1:], generator=generator(s)) for s in image_seeds
        ]).to(x) * (2 * eps) - eps
        adv = (adv + start).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = margin_loss(model(adv), y).sum()  # a sum: each sample's gradient is its own
            (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def _torchattacks(model: nn.Module, kind: str, params: dict[str, Any], seed: int = 0) -> Any:
    import torchattacks

    eps = params["eps"]
    if kind == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if kind == "square":
        # Square seeds the global RNG with `seed` itself (torch.random.manual_seed, inside craft's
        # forked RNG); with seed=None it would use the clock.
        return torchattacks.Square(
            model, norm="Linf", eps=eps, n_queries=params["n_queries"], n_restarts=1,
            p_init=params["p_init"], loss="margin", seed=seed, verbose=False,
        )
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


def _check_combination(kind: str, params: dict[str, Any]) -> str:
    """The backend to use; combinations no backend can run are refused."""
    backend = params.get("backend", "torchattacks")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "foolbox" and kind not in FOOLBOX_ATTACKS:
        raise UserError(f"{kind} has no foolbox version; valid backend: torchattacks")
    loss = params.get("loss", "ce")
    if loss not in PGD_LOSSES:
        raise UserError(f"unknown loss {loss!r}; valid: {', '.join(PGD_LOSSES)}")
    if loss == "margin" and backend == "foolbox":
        raise UserError("pgd with loss=margin runs only with backend=torchattacks (foolbox attacks cross-entropy)")
    return backend


def _attack_once(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int, backend: str,
    image_seeds: list[int],
) -> torch.Tensor:
    """One run of the attack with every random draw seeded by `seed` or, where the attack is our
    own, by each image's seed (global RNG left untouched)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if backend == "foolbox":
            return _foolbox(model, kind, params, x, y)
        if kind == "pgd" and params.get("loss", "ce") == "margin":
            return _margin_pgd(model, params, x, y, image_seeds)
        return _torchattacks(model, kind, params, seed)(x, y)


def restart_seed(seed: int, restart: int) -> int:
    """The seed of restart r: restart 0 uses `seed` itself, so restarts=1 is the plain attack."""
    return seed if restart == 0 else stable_seed(seed, "restart", restart)


@torch.no_grad()
def _fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1) != y


def craft(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int,
    image_seeds: list[int] | None = None,
) -> torch.Tensor:
    """Adversarial versions of x (model must already be in eval mode). Every random draw is seeded:
    by `seed` for the whole batch, or per image by `image_seeds` (default: derived from `seed`)
    where the attack is our own.

    With `restarts` > 1 the attack runs again with derived seeds on the samples not yet fooled;
    each sample keeps the first example that fools the model (else the last one tried).
    """
    if image_seeds is None:
        image_seeds = [stable_seed(seed, "image", i) for i in range(len(x))]
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; valid: {', '.join(ATTACKS)}")
    backend = _check_combination(kind, params)
    if params["eps"] == 0:
        # The eps-ball is the point x: every L-inf attack returns x exactly (a test checks each
        # backend does), so the work is skipped.
        return x.clone()
    restarts = int(params.get("restarts", 1))
    with bpda_backward(model, params.get("bpda", "none")):
        adv = _attack_once(model, kind, params, x, y, restart_seed(seed, 0), backend, image_seeds).detach()
        if restarts > 1:
            fooled = _fooled(model, adv, y)
            for r in range(1, restarts):
                todo = (~fooled).nonzero().flatten()
                if len(todo) == 0:
                    break
                candidate = _attack_once(model, kind, params, x[todo], y[todo], restart_seed(seed, r), backend,
                                         [restart_seed(image_seeds[i], r) for i in todo.tolist()])
                adv[todo] = candidate.detach()  # fooled ones are kept; the rest take the newest try
                fooled[todo] = _fooled(model, candidate, y[todo])
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


def live_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (on the CPU): is the input gradient of the cross-entropy exactly zero
    everywhere, and does it contain NaN or inf? (model in eval mode; parameters, buffers, modes
    and grad flags untouched.)"""
    zero, nonfinite = [], []
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].detach().to(device).clone().requires_grad_(True)
            yb = y[start : start + batch_size].to(device)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xb), yb, reduction="sum")  # sum: no 1/B scaling
                # An output cut off from the input (e.g. a hard threshold) has gradient zero.
                (grad,) = torch.autograd.grad(loss, xb) if loss.requires_grad else (torch.zeros_like(xb),)
            flat = grad.flatten(1)
            bad = ~torch.isfinite(flat).all(dim=1)
            nonfinite.append(bad.cpu())
            zero.append(((flat == 0).all(dim=1) & ~bad).cpu())
    empty = torch.zeros(0, dtype=torch.bool)
    return (torch.cat(zero) if zero else empty), (torch.cat(nonfinite) if nonfinite else empty)


def gradient_health(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 500
) -> dict[str, float]:
    """How many inputs give a gradient attack nothing to follow: "zero" (exactly zero everywhere),
    "nonfinite" (NaN or inf), "dead" (either), each as a fraction of the n inputs. A dead
    fraction near 1 is gradient masking, not robustness."""
    zero, nonfinite = live_gradients(model, x, y, device, batch_size)
    n = len(x)
    if n == 0:
        return {"n": 0, "zero": math.nan, "nonfinite": math.nan, "dead": math.nan}
    z, nf = int(zero.sum()), int(nonfinite.sum())
    return {"n": n, "zero": z / n, "nonfinite": nf / n, "dead": (z + nf) / n}
