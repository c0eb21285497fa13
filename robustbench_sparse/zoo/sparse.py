"""Sparse building blocks from Ahmad & Scheinkman (2019): k-winners activations and sparse weights.

k-winners keep, per sample, the k units with the largest *boosted* activations and pass their
*unboosted* values on; every other unit outputs 0. Boosting multiplies each unit's activation by
exp(beta * (target_density - duty_cycle)) when ranking, so rarely active units win more often.
The gradient is 1 at the winners and 0 elsewhere, like ReLU's mask.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _KWinnersBase(nn.Module):
    """Shared state and bookkeeping of the 1-d and 2-d layers."""

    def __init__(
        self,
        n: int,
        k: int,
        duty_units: int,
        k_inference_factor: float = 1.5,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 0.9,
        duty_cycle_period: int = 1000,
    ) -> None:
        super().__init__()
        if not k > 0:
            raise ValueError(f"k must be positive, got {k}")
        if boost_strength < 0 or not 0 <= boost_strength_factor <= 1:
            raise ValueError("boost_strength must be >= 0 and boost_strength_factor in [0, 1]")
        if duty_cycle_period < 1:
            raise ValueError(f"duty_cycle_period must be >= 1, got {duty_cycle_period}")
        self.n = n
        self.k = min(k, n)
        self.k_inference = min(round(k * k_inference_factor), n)
        self.k_inference_factor = k_inference_factor
        self.boost_strength_factor = boost_strength_factor
        self.duty_cycle_period = duty_cycle_period
        # Buffers so that the state an evaluation depends on travels with the checkpoint.
        self.register_buffer("boost_strength", torch.tensor(float(boost_strength)))
        self.register_buffer("duty_cycle", torch.zeros(duty_units))
        self.register_buffer("learning_iterations", torch.zeros((), dtype=torch.long))
        # Backward pass used by BPDA attacks: None (true mask gradient), "relu", "identity" or
        # "sigmoid[:T]" (the smooth surrogate, `soft_winners`).
        self.bpda: str | None = None

    @property
    def target_density(self) -> float:
        return self.k / self.n

    @property
    def dense(self) -> bool:
        """k >= n: the paper's way of writing a plain ReLU layer."""
        return self.k >= self.n

    def current_k(self) -> int:
        return self.k if self.training else self.k_inference

    def boost_factors(self) -> torch.Tensor:
        return torch.exp(self.boost_strength * (self.target_density - self.duty_cycle))

    def update_boost_strength(self) -> None:
        """Per-epoch decay of the boost strength."""
        self.boost_strength.mul_(self.boost_strength_factor)

    def _update_duty_cycle(self, active_per_unit: torch.Tensor, batch: int) -> None:
        """d = (d * (p - B) + sum_batch active) / p, p = min(period, iterations)."""
        self.learning_iterations += batch
        period = min(self.duty_cycle_period, int(self.learning_iterations))
        self.duty_cycle.mul_(period - batch).add_(active_per_unit).div_(period)

    def _with_backward(self, x: torch.Tensor, out: torch.Tensor, boost: torch.Tensor, k: int,
                       dim_of_units: bool) -> torch.Tensor:
        """Forward value `out`; backward through the chosen stand-in when BPDA is on: ReLU's,
        the identity's, or the smooth surrogate's (`soft_winners`, "sigmoid:T"), whose units
        compete along dim 1 (`dim_of_units`) or over all of a sample's units."""
        if self.bpda is None:
            return out
        if self.bpda.startswith("sigmoid"):
            temperature = float(self.bpda.partition(":")[2] or SURROGATE_TEMPERATURE)
            surrogate = soft_winners(x, x * boost, k, temperature, dim_of_units)
        else:
            surrogate = torch.relu(x) if self.bpda == "relu" else x
        return surrogate + (out - surrogate).detach()

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, k={self.k}, k_inference={self.k_inference}, "
            f"boost_strength={float(self.boost_strength):.4g}, "
            f"boost_strength_factor={self.boost_strength_factor}"
        )


SURROGATE_TEMPERATURE = 0.1  # bpda = "sigmoid": the temperature chosen by benchmarks/surrogate_sweep.py


def soft_winners(x: torch.Tensor, ranking: torch.Tensor, k: int, temperature: float,
                 dim_of_units: bool) -> torch.Tensor:
    """A differentiable relaxation of k-winners, for the backward pass of an attack only:
    x * sigmoid((r - tau) / (T s)), with r the (boosted) ranking values, tau halfway between the
    k-th and (k+1)-th largest of a sample's r (the mask's switching point), s their standard
    deviation over the sample (so T is unitless) and T the temperature: T -> 0 is the hard mask
    again, a large T lets every unit pass half its gradient. Units compete along dim 1
    (`dim_of_units`: the 1-d layer, or the local 2-d one), else over all of a sample's units."""
    flat = ranking if dim_of_units else ranking.reshape(ranking.shape[0], -1)
    fixed = flat.detach()
    n = fixed.shape[1]
    top = fixed.topk(min(k + 1, n), dim=1).values
    tau = top.narrow(1, k - 1, 1) if k >= n else (top.narrow(1, k - 1, 1) + top.narrow(1, k, 1)) / 2
    scale = fixed.std(dim=1, keepdim=True).clamp_min(1e-12)
    soft = torch.sigmoid((flat - tau) / (temperature * scale))
    return x * soft.reshape(x.shape)


def _keep_top(x: torch.Tensor, ranking: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """x where `ranking` is among the k largest along `dim`, 0 elsewhere (gradient masked alike)."""
    winners = ranking.topk(k, dim=dim, sorted=False).indices
    mask = torch.zeros_like(x).scatter_(dim, winners, 1.0)
    return x * mask


class KWinners(_KWinnersBase):
    """k-winners over the n units of a (batch, n) input."""

    def __init__(
        self,
        n: int,
        k: int,
        k_inference_factor: float = 1.5,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 0.9,
        duty_cycle_period: int = 1000,
    ) -> None:
        super().__init__(
            n, k, n, k_inference_factor, boost_strength, boost_strength_factor, duty_cycle_period
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return torch.relu(x)
        boost = self.boost_factors()
        out = _keep_top(x, x.detach() * boost, self.current_k(), dim=1)
        if self.training:
            with torch.no_grad():
                self._update_duty_cycle((out > 0).sum(dim=0), x.shape[0])
        return self._with_backward(x, out, boost, self.current_k(), dim_of_units=True)


class KWinners2d(_KWinnersBase):
    """k-winners for (batch, C, H, W) feature maps, one duty cycle per channel.

    Global (default): the top k over the flattened C*H*W of each sample, target density k/(C*H*W).
    Local: the top k across channels at each position, target density k/C.
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        k: int,
        local: bool = False,
        k_inference_factor: float = 1.5,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 0.9,
        duty_cycle_period: int = 1000,
    ) -> None:
        n = channels if local else channels * height * width
        super().__init__(
            n, k, channels, k_inference_factor, boost_strength, boost_strength_factor,
            duty_cycle_period,
        )
        self.channels, self.height, self.width, self.local = channels, height, width, local

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return torch.relu(x)
        boost = self.boost_factors().view(1, -1, 1, 1)
        boosted = x.detach() * boost
        k = self.current_k()
        if self.local:
            out = _keep_top(x, boosted, k, dim=1)
        elif x.is_contiguous(memory_format=torch.channels_last):
            # The global top-k ignores element order: rank in memory order (NHWC), so nothing is copied.
            b, nhwc = x.shape[0], x.permute(0, 2, 3, 1)
            flat = _keep_top(nhwc.reshape(b, -1), boosted.permute(0, 2, 3, 1).reshape(b, -1), k, dim=1)
            out = flat.view(nhwc.shape).permute(0, 3, 1, 2)
        else:
            b = x.shape[0]
            out = _keep_top(x.reshape(b, -1), boosted.reshape(b, -1), k, dim=1).view_as(x)
        if self.training:
            with torch.no_grad():
                per_channel = (out > 0).sum(dim=(0, 2, 3)) / (x.shape[2] * x.shape[3])
                self._update_duty_cycle(per_channel, x.shape[0])
        return self._with_backward(x, out, boost, k, dim_of_units=self.local)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, local={self.local}, " + super().extra_repr()


class SparseWeights(nn.Module):
    """Wraps a Linear or Conv layer so that each output unit keeps a fixed random subset of inputs.

    `density` is the fraction of *non-zero* weights per output unit (the paper's 0.3 = 30% on).
    The mask is a buffer; call `rezero()` after every optimiser step (see `rezero_weights`).
    """

    def __init__(self, module: nn.Linear | nn.Conv2d, density: float) -> None:
        super().__init__()
        if not 0 < density <= 1:
            raise ValueError(f"weight density must be in (0, 1], got {density}")
        self.module = module
        self.density = density
        out_units = module.weight.shape[0]
        fan_in = math.prod(module.weight.shape[1:])
        keep = max(1, round(density * fan_in))
        # Initialise for the inputs a unit really has: torch's default bound 1/sqrt(fan_in) would
        # shrink a 30%-dense layer's activations to ~55% (nupic.torch normalises the same way).
        bound = 1 / math.sqrt(keep)
        with torch.no_grad():
            module.weight.uniform_(-bound, bound)
            if module.bias is not None:
                module.bias.uniform_(-bound, bound)
        order = torch.rand(out_units, fan_in).argsort(dim=1)
        mask = (order < keep).float().view_as(module.weight)
        self.register_buffer("mask", mask)
        self.rezero()

    @torch.no_grad()
    def rezero(self) -> None:
        self.module.weight.mul_(self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def extra_repr(self) -> str:
        return f"density={self.density}"


def rezero_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, SparseWeights):
            m.rezero()


def update_boost_strength(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _KWinnersBase):
            m.update_boost_strength()


def kwinner_layers(model: nn.Module) -> list[_KWinnersBase]:
    return [m for m in model.modules() if isinstance(m, _KWinnersBase)]
