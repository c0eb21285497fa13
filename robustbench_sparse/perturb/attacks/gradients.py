"""Gradient health: how many inputs give a gradient attack nothing to follow (gradient masking)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_sparse.runtime import eval_mode


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
