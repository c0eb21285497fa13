"""Random perturbations in [0, 1] pixel space.

Every function takes one private generator per image and draws that image's noise from it alone,
so an image's noise depends on its own seed, never on the batch it happens to be evaluated in (a
GPU run with large batches gives the numbers of a CPU run with small ones).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Generators = list[torch.Generator]


def _per_image(x: torch.Tensor, gens: Generators, draw: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
    if len(gens) != len(x):
        raise ValueError(f"{len(x)} images but {len(gens)} generators: one generator per image")
    if not gens:
        return torch.zeros((0,), device=x.device)
    return torch.stack([draw(g) for g in gens]).to(x.device)


def gaussian_noise(x: torch.Tensor, sigma: float, gens: Generators) -> torch.Tensor:
    """x' = clamp(x + sigma * N(0, 1), 0, 1)."""
    if not len(x):
        return x.clone()
    noise = _per_image(x, gens, lambda g: torch.randn(x.shape[1:], generator=g))
    return (x + sigma * noise).clamp(0, 1)


def blend_noise(x: torch.Tensor, eta: float, gens: Generators) -> torch.Tensor:
    """The paper's audio protocol on images: x' = (1 - eta) x + eta u, u uniform white noise."""
    if not len(x):
        return x.clone()
    return (1 - eta) * x + eta * _per_image(x, gens, lambda g: torch.rand(x.shape[1:], generator=g))


def pixel_noise(x: torch.Tensor, eta: float, value: torch.Tensor, gens: Generators, fill: str = "paper") -> torch.Tensor:
    """The paper's MNIST protocol: per image, exactly floor(eta * H * W) positions chosen without
    replacement are set to `value` (per channel: the dataset's mean + 2 std). The forum's variants:
    `fill = "uniform"` sets each chosen pixel (each channel) to U(0, 1), drawn after the positions
    from the same per-image generator; `fill = "half"` sets them to 0.5."""
    b, c, h, w = x.shape
    count = int(eta * h * w + 1e-9)
    if count == 0 or b == 0:
        return x.clone()
    order = _per_image(x, gens, lambda g: torch.randperm(h * w, generator=g)[:count])
    hit = torch.zeros(b, h * w, dtype=torch.bool, device=x.device).scatter_(1, order, True)
    hit = hit.view(b, 1, h, w)
    if fill == "uniform":
        filler = _per_image(x, gens, lambda g: torch.rand(x.shape[1:], generator=g)).to(x)
    elif fill == "half":
        filler = torch.full_like(x, 0.5)
    elif fill == "paper":
        filler = value.view(1, c, 1, 1).to(x).expand_as(x)
    else:
        raise ValueError(f"unknown fill {fill!r}; valid: paper, uniform, half")
    return torch.where(hit, filler, x)


def uniform_ball(x: torch.Tensor, eps: float, gens: Generators) -> torch.Tensor:
    """x + U(-eps, eps) per pixel, clipped to [0, 1]: where a PGD-style attack starts."""
    if not len(x) or eps == 0:
        return x.clone()
    return (x + eps * (2 * _per_image(x, gens, lambda g: torch.rand(x.shape[1:], generator=g)) - 1)).clamp(0, 1)


def occlusion(x: torch.Tensor, size: int, gens: Generators, fill: str = "zero") -> torch.Tensor:
    """A size x size square at a uniformly random position per image, filled with 0 or uniform noise."""
    b, _, h, w = x.shape
    if size == 0 or b == 0:
        return x.clone()
    corner = _per_image(x, gens, lambda g: torch.stack([
        torch.randint(0, h - size + 1, (), generator=g), torch.randint(0, w - size + 1, (), generator=g)]))
    top, left = corner[:, 0], corner[:, 1]
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= top.view(b, 1, 1)) & (rows < (top + size).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1)) & (cols < (left + size).view(b, 1, 1))
    ).unsqueeze(1)
    if fill == "noise":
        # Drawn after the corner from the same per-image generator.
        filler = _per_image(x, gens, lambda g: torch.rand(x.shape[1:], generator=g))
    else:
        filler = torch.zeros_like(x)
    return torch.where(inside, filler, x)
