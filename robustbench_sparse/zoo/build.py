"""Building a model from its spec: normalisation inside the model, then the family's layers (the
paper's CNNs and a small VGG here, or a builder of one's own; `zoo/families.py`)."""

from __future__ import annotations

import torch
from torch import nn

from robustbench_sparse.data.datasets import DatasetInfo
from robustbench_sparse.runtime import UserError
from robustbench_sparse.zoo.families import family_builder
from robustbench_sparse.zoo.layers import InputConv2d
from robustbench_sparse.zoo.sparse import KWinners, KWinners2d, SparseWeights
from robustbench_sparse.zoo.spec import ModelSpec


class Normalize(nn.Module):
    """Per-channel normalisation inside the model, so attacks and noise work in pixel space."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _activation2d(spec: ModelSpec, percent_on: float, shape: tuple[int, int, int]) -> nn.Module:
    c, h, w = shape
    if percent_on >= 1:
        return nn.ReLU()
    n = c if spec.local else c * h * w
    return KWinners2d(
        c, h, w, k=max(1, round(percent_on * n)), local=spec.local,
        k_inference_factor=spec.k_inference_factor, boost_strength=spec.boost_strength,
        boost_strength_factor=spec.boost_strength_factor, duty_cycle_period=spec.duty_cycle_period,
    )


def _conv_blocks(spec: ModelSpec, info: DatasetInfo, padding: int) -> tuple[list[nn.Module], int]:
    """Conv -> [BatchNorm] -> MaxPool 2 -> ReLU or k-winners2d, per entry of `channels`."""
    layers: list[nn.Module] = []
    c, h, w = info.shape
    for i, (out, percent_on) in enumerate(zip(spec.channels, spec.conv_percent_on, strict=True)):
        # The first conv computes attacks' input gradients faster on CPU (layers.py); same weights.
        conv = InputConv2d if i == 0 else nn.Conv2d
        layers.append(conv(c, out, spec.kernel_size, padding=padding))
        if spec.batchnorm:
            layers.append(nn.BatchNorm2d(out))
        h = (h + 2 * padding - spec.kernel_size + 1) // 2
        w = (w + 2 * padding - spec.kernel_size + 1) // 2
        if h < 1 or w < 1:
            raise UserError(f"model {spec.name!r}: too many conv blocks for {info.name}'s {info.shape} input")
        c = out
        layers += [nn.MaxPool2d(2), _activation2d(spec, percent_on, (c, h, w))]
    return layers, c * h * w


def _classifier(spec: ModelSpec, info: DatasetInfo, features: int) -> list[nn.Module]:
    """Flatten -> Linear (sparse weights) -> [BatchNorm] -> ReLU or k-winners -> [Dropout] -> Linear."""
    linear: nn.Module = nn.Linear(features, spec.hidden)
    if spec.weight_density < 1:
        linear = SparseWeights(linear, spec.weight_density)
    layers: list[nn.Module] = [nn.Flatten(), linear]
    if spec.batchnorm:
        layers.append(nn.BatchNorm1d(spec.hidden))
    if spec.hidden_percent_on >= 1:
        layers.append(nn.ReLU())
    else:
        layers.append(
            KWinners(
                spec.hidden, k=max(1, round(spec.hidden_percent_on * spec.hidden)),
                k_inference_factor=spec.k_inference_factor, boost_strength=spec.boost_strength,
                boost_strength_factor=spec.boost_strength_factor, duty_cycle_period=spec.duty_cycle_period,
            )
        )
    if spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(spec.hidden, info.num_classes))
    return layers


def cnn_layers(spec: ModelSpec, info: DatasetInfo) -> list[nn.Module]:
    """The paper's CNN-1/CNN-2: unpadded 5x5 convs (Ahmad & Scheinkman 2019)."""
    convs, features = _conv_blocks(spec, info, padding=0)
    return convs + _classifier(spec, info, features)


def vgg_layers(spec: ModelSpec, info: DatasetInfo) -> list[nn.Module]:
    """Small VGG-style net for 32x32 colour images: padded 3x3 convs, each block halving the size."""
    convs, features = _conv_blocks(spec, info, padding=spec.kernel_size // 2)
    return convs + _classifier(spec, info, features)


def _layers(spec: ModelSpec, info: DatasetInfo) -> list[nn.Module]:
    """The family's layers after normalisation; an import-path builder's result checked."""
    built = family_builder(spec.family, spec.name)(spec, info)
    if isinstance(built, nn.Module):
        return [built]
    if isinstance(built, list | tuple) and built and all(isinstance(m, nn.Module) for m in built):
        return list(built)
    raise UserError(f"model {spec.name!r}: family {spec.family!r} returned {type(built).__name__}; a builder returns "
                    "an nn.Module (taking normalised inputs, returning logits) or a list of modules")


def build_model(spec: ModelSpec, info: DatasetInfo) -> nn.Sequential:
    """A freshly initialised model (draws from torch's global RNG: seed it first)."""
    if info.name not in spec.datasets:
        raise UserError(f"model {spec.name!r} is not declared for {info.name!r}; it is for {', '.join(spec.datasets)}")
    model = nn.Sequential(Normalize(info.mean, info.std), *_layers(spec, info))
    # channels-last convolutions run ~30% faster on CPU (oneDNN); results are layout-independent.
    return model.to(memory_format=torch.channels_last)
