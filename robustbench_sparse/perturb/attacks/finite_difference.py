"""FD-PGD: PGD on the margin loss with gradients estimated from forward passes only.

The attack Tramèr, Carlini, Brendel & Madry (2020, "On Adaptive Attacks to Adversarial Example
Defenses") used to break k-winners-take-all: a k-winners net is piecewise constant in which units
win, so its true gradients point nowhere useful near the many switches of the mask, while the
loss averaged over a little Gaussian noise is smooth. Each step estimates the gradient of the
margin loss L(x) = max_{j != y} z_j - z_y (> 0 iff misclassified) from `samples` antithetic pairs

    g = 1 / (2 sigma m) * sum_i [L(x + sigma u_i) - L(x - sigma u_i)] u_i,   u_i ~ N(0, I),

and takes a signed step x' <- clip_{B(x0, eps) and [0, 1]}(x' + alpha sign(g)), from x0 itself.
With `first = "pgd"` (the default) a margin PGD with the same steps runs first and FD-PGD attacks
only the images it left correct (AutoAttack's way: the expensive attack on the points still
robust; the per-image worst case of the two is exact). With `stages` > 1 the images still correct
after `steps` steps are attacked again from x0 with 10 times the samples (their schedule: 100, then 1,000, then 20,000 samples per step), so the
expensive stages run only where the cheap ones failed.

No library has this attack (torchattacks' and foolbox's black-box attacks are Square, HopSkipJump
and boundary searches, not a finite-difference PGD), so it is written here. Every draw comes from
the image's own generator, an image stops at its first misclassified iterate, and the probes of
all images still attacked are pooled into forward passes of a few thousand inputs (the model's
output for an input does not depend on its batch in eval mode), so an image's result depends on
nothing but its own seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from robustbench_sparse.perturb.attacks.base import Attack, LibraryAttack
from robustbench_sparse.perturb.attacks.iterative import margin_loss
from robustbench_sparse.perturb.attacks.registry import register
from robustbench_sparse.perturb.params import Param, choice, integer, number
from robustbench_sparse.runtime import UserError, generator, stable_seed

GROWTH = 10  # samples per step grow tenfold from one stage to the next
MAX_INPUTS = 8192  # inputs in one forward pass of the estimate (memory bound; never changes a number)


def stage_samples(params: dict[str, Any]) -> list[int]:
    """Samples per step in each stage: samples, 10 x samples, ..."""
    return [int(params["samples"]) * GROWTH**stage for stage in range(int(params["stages"]))]


@torch.no_grad()
def _margins(model: nn.Module, inputs: torch.Tensor, y: torch.Tensor, limit: int) -> torch.Tensor:
    """The margin loss of each input (labels `y`, one per input), in forward passes of at most `limit`."""
    return torch.cat([margin_loss(model(inputs[i : i + limit]), y[i : i + limit]) for i in range(0, len(inputs), limit)])


def _estimate(model: nn.Module, cur: torch.Tensor, y: torch.Tensor, gens: list[torch.Generator], samples: int,
              sigma: float, limit: int, tile: int) -> torch.Tensor:
    """The antithetic finite-difference estimate of the margin's gradient at each row of `cur`;
    each direction is drawn per `tile` x `tile` block of pixels."""
    channels, height, width = cur.shape[1:]
    coarse = (samples, channels, height // tile, width // tile)
    noise = torch.stack([torch.randn(coarse, generator=g) for g in gens]).to(cur)
    if tile > 1:
        noise = noise.repeat_interleave(tile, dim=-2).repeat_interleave(tile, dim=-1)
    probes = torch.cat([cur[:, None] + sigma * noise, cur[:, None] - sigma * noise], dim=1)  # m, 2S, ...
    labels = y.repeat_interleave(2 * samples)
    loss = _margins(model, probes.flatten(0, 1), labels, limit).view(len(cur), 2, samples)
    weights = (loss[:, 0] - loss[:, 1]) / (2 * sigma * samples)
    return (weights.view(*weights.shape, *[1] * (cur.dim() - 1)) * noise).sum(dim=1)


def fd_pgd(model: nn.Module, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, image_seeds: list[int],
           batch_size: int) -> torch.Tensor:
    """FD-PGD on every image of x (model in eval mode): each image's iterate that first fools the
    model, else its last iterate of the last stage."""
    eps, alpha, sigma, steps = params["eps"], params["alpha"], params["sigma"], int(params["steps"])
    tile = int(params.get("tile", 1))
    if x.dim() != 4 or x.shape[-1] % tile or x.shape[-2] % tile:
        raise UserError(f"fd-pgd: tile={tile} must divide the image's height and width ({tuple(x.shape[1:])})")
    adv = x.clone()
    todo = torch.arange(len(x), device=x.device)
    if params.get("first", "none") == "pgd":
        from robustbench_sparse.perturb.attacks.crafting import craft_batches  # crafting imports the families

        pgd = {"eps": eps, "steps": steps, "alpha": alpha, "random_start": True, "restarts": 1, "loss": "margin",
               "backend": "torchattacks", "bpda": "none", "early_stop": True}
        seeds = [stable_seed(s, "fd-pgd", "pgd") for s in image_seeds]
        adv = craft_batches(model, "pgd", pgd, x, y, [0] * math.ceil(len(x) / batch_size), seeds, batch_size)
        with torch.no_grad():
            hit = torch.cat([model(adv[i : i + batch_size]).argmax(dim=1) != y[i : i + batch_size]
                             for i in range(0, len(x), batch_size)])
        adv[~hit] = x[~hit]
        todo = todo[~hit]
    for stage, samples in enumerate(stage_samples(params)):
        if len(todo) == 0:
            break
        chunk = max(1, MAX_INPUTS // (2 * samples))  # images per estimate
        limit = max(MAX_INPUTS, 2 * samples)
        gens = {int(i): generator(stable_seed(image_seeds[int(i)], "fd-pgd", stage)) for i in todo}
        x0, y0, at = x[todo], y[todo], todo
        cur = x0.clone()
        for step in range(steps + 1):
            with torch.no_grad():
                hit = torch.cat([model(cur[i : i + batch_size]).argmax(dim=1) != y0[i : i + batch_size]
                                 for i in range(0, len(cur), batch_size)])
            adv[at[hit]] = cur[hit]
            keep = ~hit
            x0, y0, at, cur = x0[keep], y0[keep], at[keep], cur[keep]
            if len(at) == 0 or step == steps:
                break
            grads = [_estimate(model, cur[i : i + chunk], y0[i : i + chunk], [gens[int(j)] for j in at[i : i + chunk]],
                               samples, sigma, limit, tile) for i in range(0, len(cur), chunk)]
            moved = cur + alpha * torch.cat(grads).sign()
            cur = torch.clamp(x0 + torch.clamp(moved - x0, -eps, eps), 0, 1)
        adv[at] = cur
        todo = at
    return adv


@dataclass(frozen=True)
class FDPGD(Attack):
    """Finite-difference PGD on the margin loss (forward passes only), seeded per image."""

    stops_early: ClassVar[bool] = True

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> LibraryAttack:
        """The attack on one batch, its images seeded from `seed` (`craft` seeds them per image)."""
        return lambda x, y: fd_pgd(model, params, x, y, [stable_seed(seed, "image", i) for i in range(len(x))],
                                   max(len(x), 1))

    def run_images(self, model: nn.Module, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor,
                   image_seeds: list[int], batch_size: int) -> torch.Tensor:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the global RNG is never drawn from, nor touched
            return fd_pgd(model, params, x, y, image_seeds, batch_size)


def forward_passes(params: dict[str, Any]) -> int:
    """Forward passes one image costs at most (every stage, every step): the attack's price."""
    return sum((2 * s + 1) * int(params["steps"]) + 1 for s in stage_samples(params))


register(FDPGD(
    "fd-pgd", "FD-PGD",
    "PGD with signed steps on the margin loss, its gradient estimated by finite differences over "
    "antithetic Gaussian samples (forward passes only; Tramer et al. 2020's attack on k-WTA)",
    {
        "steps": Param(50, integer(1), "an integer >= 1 (steps per stage)"),
        "alpha": Param(0.01, lambda v, _: number(1e-9, 1)(v, _), "0 < alpha <= 1 (the signed step)"),
        "sigma": Param(0.05, lambda v, _: number(1e-6, 1)(v, _), "0 < sigma <= 1 (the finite-difference radius)"),
        "samples": Param(50, lambda v, _: integer(1)(v, _) and v <= 100_000,
                         "1 <= samples <= 100000 (antithetic pairs per step in the first stage)"),
        "tile": Param(2, lambda v, _: integer(1)(v, _) and v <= 14,
                      "1 to 14, dividing the image's height and width (each direction is drawn per tile x tile "
                      "block of pixels: fewer dimensions, a less noisy estimate from the same samples)"),
        "first": Param("pgd", choice("pgd", "none"),
                       "pgd (a margin PGD with the same steps and step size, true gradients, runs first; FD-PGD "
                       "attacks only the images it left correct, as AutoAttack runs each attack on the points still "
                       "robust) or none (FD-PGD on every image)"),
        "stages": Param(1, lambda v, _: integer(1)(v, _) and v <= 4,
                        f"1 to 4 (stage s: samples x {GROWTH}^s per step, on the images still correct)"),
    },
    backends=(),
    gradients=False,
))

