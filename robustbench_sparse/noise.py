"""Random perturbations in [0, 1] pixel space. Each draws only from the generator it is given."""

from __future__ import annotations

import torch


def _uniform(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape, generator=g, device=g.device).to(x.device)


def gaussian_noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """x' = clamp(x + sigma * N(0, 1), 0, 1)."""
    noise = torch.randn(x.shape, generator=g, device=g.device).to(x.device)
    return (x + sigma * noise).clamp(0, 1)


def blend_noise(x: torch.Tensor, eta: float, g: torch.Generator) -> torch.Tensor:
    """The paper's audio protocol on images: x' = (1 - eta) x + eta u, u uniform white noise."""
    return (1 - eta) * x + eta * _uniform(x, g)


def pixel_noise(x: torch.Tensor, eta: float, value: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The paper's MNIST protocol: per image, exactly floor(eta * H * W) positions chosen without
    replacement are set to `value` (per channel: the dataset's mean + 2 std)."""
    b, c, h, w = x.shape
    count = int(eta * h * w + 1e-9)
    if count == 0:
        return x.clone()
    order = torch.rand(b, h * w, generator=g, device=g.device).argsort(dim=1)[:, :count].to(x.device)
    hit = torch.zeros(b, h * w, dtype=torch.bool, device=x.device).scatter_(1, order, True)
    hit = hit.view(b, 1, h, w)
    return torch.where(hit, value.view(1, c, 1, 1).to(x), x)


def occlusion(x: torch.Tensor, size: int, g: torch.Generator, fill: str = "zero") -> torch.Tensor:
    """A size x size square at a uniformly random position per image, filled with 0 or uniform noise."""
    b, _, h, w = x.shape
    if size == 0:
        return x.clone()
    top = torch.randint(0, h - size + 1, (b,), generator=g, device=g.device).to(x.device)
    left = torch.randint(0, w - size + 1, (b,), generator=g, device=g.device).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= top.view(b, 1, 1)) & (rows < (top + size).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1)) & (cols < (left + size).view(b, 1, 1))
    ).unsqueeze(1)
    filler = _uniform(x, g) if fill == "noise" else torch.zeros_like(x)
    return torch.where(inside, filler, x)
