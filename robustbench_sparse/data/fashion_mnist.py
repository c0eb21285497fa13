"""Fashion-MNIST clothing images (Xiao et al. 2017): torchvision's IDX layout under the data root,
else the gzipped IDX files of Debian's `dataset-fashion-mnist` package, unpacked once into the
data cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from robustbench_sparse.data.datasets import DatasetNotFound, default_data_root
from robustbench_sparse.data.idx import IDX_FILES, extract_idx_gz, has_idx_gz, missing_idx, read_idx
from robustbench_sparse.data.registry import DatasetDefinition, register_dataset
from robustbench_sparse.data.types import DatasetArrays, DatasetInfo

# Where Debian's `dataset-fashion-mnist` package puts the original gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _load(info: DatasetInfo, root: Path, download: bool) -> DatasetArrays:
    """The torchvision layout under `root` first (or a download), else Debian's package."""
    raw = root / "FashionMNIST" / "raw"
    if download or not missing_idx(raw) or has_idx_gz(raw):
        return read_idx(info, "FashionMNIST", root, download)
    cache = default_data_root() / "debian"
    unpacked = cache / "FashionMNIST" / "raw"
    if has_idx_gz(DEBIAN_FASHION_MNIST) or not missing_idx(unpacked):
        # Unpack into a torchvision layout, so that there is a single loading path; files
        # unpacked earlier are reused.
        extract_idx_gz(DEBIAN_FASHION_MNIST, unpacked)
        arrays = read_idx(info, "FashionMNIST", cache, download=False)
        return dataclasses.replace(arrays, source=f"{DEBIAN_FASHION_MNIST} (unpacked to {unpacked})")
    raise DatasetNotFound(
        f"{raw} for {', '.join(IDX_FILES)} (torchvision layout) and in {DEBIAN_FASHION_MNIST} "
        "for the same files with .gz (Debian's package)"
    )


def _how_to(root: Path) -> str:
    raw = root / "FashionMNIST" / "raw"
    return (
        f"Get it with `apt-get install dataset-fashion-mnist`, or place the IDX files in {raw}, "
        f"or use `--data-root {root} --download` (needs internet)"
    )


def _other_sources() -> str:
    # The Debian folder and the extraction cache decide what is read, beside the data root.
    return f"{DEBIAN_FASHION_MNIST}|{default_data_root()}"


register_dataset(DatasetDefinition(
    DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,),
                "Fashion-MNIST clothing images, 60000 train / 10000 test "
                "(torchvision layout or Debian's dataset-fashion-mnist)"),
    loader=_load,
    how_to=_how_to,
    validation_share=1 / 6,
    other_sources=_other_sources,
))
