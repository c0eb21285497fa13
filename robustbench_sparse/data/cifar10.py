"""CIFAR-10 colour images (Krizhevsky 2009), in torchvision's layout `<root>/cifar-10-batches-py/`
(the unpacked python release)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so listing commands and datasets stays light
    pass


from robustbench_sparse.data.datasets import READ_ERRORS, DatasetNotFound
from robustbench_sparse.data.registry import DatasetDefinition, register_dataset
from robustbench_sparse.data.types import DatasetArrays, DatasetInfo
from robustbench_sparse.runtime import UserError, import_torchvision

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def _how_to(root: Path) -> str:
    return (
        f"Get it with `--data-root {root} --download` (needs internet), or unpack "
        f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html in {root} "
        f"so that {root / CIFAR_FOLDER} holds {', '.join(CIFAR_FILES)}"
    )


def _load(info: DatasetInfo, root: Path, download: bool) -> DatasetArrays:
    import numpy as np
    import torch

    folder = root / CIFAR_FOLDER
    missing = [folder / f for f in CIFAR_FILES if not (folder / f).is_file()]
    if not download and missing:
        raise DatasetNotFound(f"{folder} for {', '.join(p.name for p in missing)}")
    tv = import_torchvision()
    parts = []
    for train in (True, False):
        try:
            ds = tv.datasets.CIFAR10(root=str(root), train=train, download=download)
        except READ_ERRORS as err:
            # All files are there (or a download was tried), so this is a checksum mismatch,
            # a damaged file or a failed download.
            raise UserError(
                f"could not {'download or ' if download else ''}read cifar10 in {folder}: "
                f"{type(err).__name__}: {err}. The files may be incomplete or damaged "
                f"(torchvision checks their md5 sums). {_how_to(root)}"
            ) from err
        x = torch.from_numpy(np.ascontiguousarray(ds.data))
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != (32, 32, 3):
            raise UserError(f"cifar10 in {folder} holds images of shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255.0)
        parts.append((x, torch.as_tensor(ds.targets, dtype=torch.int64)))
    (train_x, train_y), (test_x, test_y) = parts
    return DatasetArrays(train_x, train_y, test_x, test_y, source=str(folder))


register_dataset(DatasetDefinition(
    DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                "CIFAR-10 colour images, 50000 train / 10000 test (torchvision layout)"),
    loader=_load,
    how_to=_how_to,
    validation_share=1 / 10,  # 5,000 of 50,000
))
