"""The registered datasets: one frozen `DatasetDefinition` each, added by `register_dataset`.

A dataset family's module (`mnist.py`, `fashion_mnist.py`, `cifar10.py`) defines how to read its
files and registers itself; `load_dataset`, the CLI's `--dataset` choices and every "valid: ..."
list come from here. Adding a dataset is one such module and its import in `data/__init__.py`
(docs/datasets.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from robustbench_sparse.data.types import DatasetArrays, DatasetInfo
from robustbench_sparse.registry import Registry
from robustbench_sparse.runtime import UserError

# Reads the official train and test sets under a data root; `download` asks it to fetch them.
Loader = Callable[[DatasetInfo, Path, bool], DatasetArrays]


def _no_other_source() -> str:
    return ""


@dataclass(frozen=True)
class DatasetDefinition:
    """Everything the suite knows about one dataset."""

    info: DatasetInfo
    loader: Loader
    how_to: Callable[[Path], str]  # how to get the files, given the data root (ends "not found" errors)
    # The share of the official training set held out, by a seeded permutation, as the validation
    # split; None keeps the loader's split as it is (no validation split).
    validation_share: float | None = None
    # What else than the data root decides what the loader reads (a system-wide folder, say): part
    # of the in-process load cache's key.
    other_sources: Callable[[], str] = _no_other_source

    @property
    def name(self) -> str:
        return self.info.name


_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_DEFINITIONS: Registry[DatasetDefinition] = Registry("dataset")


def register_dataset(definition: DatasetDefinition) -> DatasetDefinition:
    """Add a dataset under its `info.name`; a name already registered is refused."""
    info = definition.info
    if not _NAME.fullmatch(info.name):
        raise UserError(f"dataset name {info.name!r}: use lower-case letters, digits and '-' "
                        "(it names folders and a command-line value)")
    if len(info.shape) != 3 or min(info.shape) < 1 or info.num_classes < 2:
        raise UserError(f"dataset {info.name!r}: shape must be (C, H, W) and num_classes >= 2, "
                        f"got {info.shape} and {info.num_classes}")
    if not len(info.mean) == len(info.std) == info.shape[0]:
        raise UserError(f"dataset {info.name!r}: mean and std need one value per channel ({info.shape[0]})")
    share = definition.validation_share
    if share is not None and not 0 < share < 1:
        raise UserError(f"dataset {info.name!r}: validation_share must be in (0, 1) or None, got {share}")
    return _DEFINITIONS.add(info.name, definition)


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset (for tests)."""
    _DEFINITIONS.remove(name)


def dataset_definition(name: str) -> DatasetDefinition:
    return _DEFINITIONS.lookup(name)


def dataset_info(name: str) -> DatasetInfo:
    return dataset_definition(name).info


# Each registered dataset's `DatasetInfo` by name, in registration order; read-only, always current.
DATASETS: Mapping[str, DatasetInfo] = _DEFINITIONS.view(lambda definition: definition.info)
