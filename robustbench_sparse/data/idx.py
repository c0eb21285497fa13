"""The IDX files of MNIST-style datasets, read in torchvision's layout `<root>/<Class>/raw/`.

torchvision's dataset class of that name (`MNIST`, `FashionMNIST`, ...) parses them and, when
asked, downloads them; the original `.gz` files placed there are unpacked first.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used, so listing commands and datasets stays light
    import torch


from robustbench_sparse.data.datasets import READ_ERRORS, DatasetNotFound
from robustbench_sparse.data.types import DatasetArrays, DatasetInfo
from robustbench_sparse.runtime import UserError, atomic_write_bytes, import_torchvision

# The uncompressed IDX files torchvision's MNIST and FashionMNIST read from <root>/<Class>/raw/.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def missing_idx(raw: Path) -> list[Path]:
    return [raw / f for f in IDX_FILES if not (raw / f).is_file()]


def has_idx_gz(folder: Path) -> bool:
    return all((folder / f"{f}.gz").is_file() for f in IDX_FILES)


def extract_idx_gz(src: Path, raw: Path) -> None:
    """Decompress `<src>/<file>.gz` into `<raw>/<file>` for each IDX file not yet in `raw`."""
    for fname in IDX_FILES:
        target = raw / fname
        if target.is_file():
            continue
        gz = src / f"{fname}.gz"
        try:
            with gzip.open(gz, "rb") as f:
                payload = f.read()
            atomic_write_bytes(target, payload)
        except READ_ERRORS as err:
            raise UserError(f"could not decompress {gz} into {target}: {err}") from err


def idx_how_to(cls_name: str, root: Path) -> str:
    raw = root / cls_name / "raw"
    return (
        f"Get it with `--data-root {root} --download` (needs internet), or place the IDX files "
        f"{', '.join(IDX_FILES)} (uncompressed, or as .gz) in {raw}"
    )


def md5_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def verify_idx(info: DatasetInfo, raw: Path, checksums: Mapping[str, tuple[str, int]], how_to: str) -> None:
    """Each IDX file in `raw` against its canonical (MD5, size in bytes): a damaged or truncated
    file is a UserError naming it and how to get a good copy. (torchvision checks only the .gz
    files it downloads, and reads an uncompressed file placed by hand as it is.)"""
    for name, (md5, size) in checksums.items():
        path = raw / name
        got = path.stat().st_size
        if got != size:
            raise UserError(f"{path} is {got:,} bytes, not the {size:,} of {info.name}'s {name}: it is truncated or "
                            f"not that file. Replace it with a good copy. {how_to}")
        if (digest := md5_of(path)) != md5:
            raise UserError(f"{path} has MD5 {digest}, not {md5} ({info.name}'s {name}): it is damaged. Replace it "
                            f"with a good copy. {how_to}")


def read_idx(info: DatasetInfo, cls_name: str, root: Path, download: bool,
             checksums: Mapping[str, tuple[str, int]] | None = None) -> DatasetArrays:
    """Read `<root>/<cls_name>/raw/` with torchvision's class `cls_name` (downloading if asked),
    each file checked against `checksums` (file name -> MD5 and size of the uncompressed file)
    first, where the dataset has canonical ones."""
    raw = root / cls_name / "raw"
    if not download and missing_idx(raw) and has_idx_gz(raw):
        extract_idx_gz(raw, raw)  # the user placed the original .gz files: unpack them
    if not download and (missing := missing_idx(raw)):
        raise DatasetNotFound(f"{raw} for {', '.join(p.name for p in missing)}")
    tv = import_torchvision()
    cls = getattr(tv.datasets, cls_name)
    if download:  # torchvision fetches (and checks) what is missing, then the same check as below
        _tv_call(info, root, download, cls, True)
    if checksums:
        verify_idx(info, raw, checksums, idx_how_to(cls_name, root))
    parts = [_tv_call(info, root, False, cls, train) for train in (True, False)]
    (train_x, train_y), (test_x, test_y) = (_from_idx(info, ds, root) for ds in parts)
    return DatasetArrays(train_x, train_y, test_x, test_y, source=str(raw))


def _tv_call(info: DatasetInfo, root: Path, download: bool, cls: Any, train: bool) -> Any:
    """Construct a torchvision dataset, turning its errors into `UserError`s."""
    try:
        return cls(root=str(root), train=train, download=download)
    except READ_ERRORS as err:
        what = "download or read" if download else "read"
        hint = "check the internet connection" if download else "the files may be damaged"
        raise UserError(
            f"could not {what} {info.name} under {root} ({type(err).__name__}: {err}); {hint}"
        ) from err


def _from_idx(info: DatasetInfo, ds: Any, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    x = torch.as_tensor(ds.data)
    y = torch.as_tensor(ds.targets)
    if x.dtype != torch.uint8 or x.dim() != 3 or tuple(x.shape[1:]) != info.shape[1:]:
        raise UserError(
            f"{info.name} under {root} holds images of shape {tuple(x.shape)} and dtype {x.dtype}; "
            f"expected (N, {info.shape[1]}, {info.shape[2]}) uint8"
        )
    return x.unsqueeze(1).to(torch.float32).div(255.0), y.to(torch.int64)
