"""Loading a registered dataset whole into memory, as float tensors in [0, 1].

`load_dataset` looks the name up in the registry, calls the dataset's loader and carves the seeded
validation split; loads are cached per process. Every problem a user can fix (missing or damaged
files, a failed download) is a `UserError`.
"""

from __future__ import annotations

import functools
import os
import pickle
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so listing commands and datasets stays light
    pass


from robustbench_sparse.data.registry import (
    DATASETS,
    DatasetDefinition,
    dataset_definition,
    dataset_info,
    register_dataset,
    unregister_dataset,
)
from robustbench_sparse.data.types import Dataset, DatasetArrays, DatasetInfo
from robustbench_sparse.runtime import UserError

__all__ = [
    "DATASETS",
    "READ_ERRORS",
    "VALIDATION_SEED",
    "Dataset",
    "DatasetArrays",
    "DatasetDefinition",
    "DatasetInfo",
    "DatasetNotFound",
    "dataset_definition",
    "dataset_info",
    "default_data_root",
    "load_dataset",
    "register_dataset",
    "split_version",
    "unregister_dataset",
]

# The seed of every validation split (the paper chose its recipes on 10,000 of MNIST's 60,000
# training images; each dataset's share is its definition's `validation_share`).
VALIDATION_SEED = 0

# What can go wrong while reading a damaged file: torchvision's readers assert, pickle and gzip
# raise their own errors, a truncated array fails to reshape.
READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AssertionError,
    RuntimeError,
    pickle.UnpicklingError,
    zlib.error,
)


class DatasetNotFound(UserError):
    """Raised by a loader whose files are missing; `where` says what it looked for, where.
    `load_dataset` adds the dataset's name and how to get it."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


def default_data_root() -> Path:
    """`RBS_DATA_ROOT` if set, else ~/.cache/robustbench-sparse/data."""
    env = os.environ.get("RBS_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "robustbench-sparse" / "data"


def split_version(dataset: str) -> str | None:
    """What a checkpoint's training data depends on beyond the dataset's name (None: nothing)."""
    share = dataset_definition(dataset).validation_share if dataset in DATASETS else None
    return None if share is None else f"validation {share:.6g} seed {VALIDATION_SEED}"


def load_dataset(name: str, data_root: Path | None = None, download: bool = False) -> Dataset:
    """Load a dataset whole. Repeated loads with the same arguments in one process are free."""
    definition = dataset_definition(name)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    return _load_cached(definition, str(root), download, definition.other_sources())


@functools.lru_cache(maxsize=8)
def _load_cached(definition: DatasetDefinition, root: str, download: bool, other_sources: str) -> Dataset:
    try:
        arrays = definition.loader(definition.info, Path(root), download)
    except DatasetNotFound as missing:
        raise UserError(
            f"{definition.name} not found: looked in {missing.where}. {definition.how_to(Path(root))}"
        ) from None
    _check(definition.info, arrays)
    if definition.validation_share is None:
        return Dataset(definition.info, arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y,
                       source=arrays.source, split=arrays.split)
    return _with_validation_split(definition.info, arrays, definition.validation_share)


def _check(info: DatasetInfo, a: DatasetArrays) -> None:
    for part, x, y in (("train", a.train_x, a.train_y), ("test", a.test_x, a.test_y)):
        if len(x) != len(y):
            raise UserError(f"{info.name} {part} set in {a.source}: {len(x)} images, {len(y)} labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise UserError(
                f"{info.name} {part} set in {a.source} has labels outside 0..{info.num_classes - 1}"
            )


def _with_validation_split(info: DatasetInfo, a: DatasetArrays, share: float) -> Dataset:
    """The official test set as it is; the official training set split by `VALIDATION_SEED`."""
    import torch

    n = len(a.train_x)
    n_val = round(n * share)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    val, train = order[:n_val], order[n_val:]
    return Dataset(
        info=info,
        train_x=a.train_x[train],
        train_y=a.train_y[train],
        test_x=a.test_x,
        test_y=a.test_y,
        source=a.source,
        split=f"official test set ({len(a.test_x)}); the {n} official training images split by seed "
              f"{VALIDATION_SEED} into {n - n_val} train / {n_val} validation",
        val_x=a.train_x[val],
        val_y=a.train_y[val],
    )
