"""Shared fixtures: a tiny zoo in a temporary home, and a small slice of the embedded MNIST."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import torch

from robustbench_sparse.data.datasets import Dataset, load_dataset
from robustbench_sparse.execution.zoo_training import train_zoo
from robustbench_sparse.runtime import REPO_ROOT, Paths
from robustbench_sparse.zoo.spec import load_zoo, select_models

os.environ.setdefault("RBS_NO_PROGRESS", "1")


# Small, fast versions of the five regularisers (same structure as the real zoo).
TINY_ZOO = """
[defaults]
channels = [4, 8]
conv_percent_on = [1.0, 1.0]
hidden = 32
epochs = 3
lr = 0.03
batch_size = 32
first_epoch_batch_size = 32

[models.dense]
[models.dropout]
base = "dense"
dropout = 0.5
[models.batchnorm]
base = "dense"
batchnorm = true
[models.kwinner-boost]
conv_percent_on = [0.2, 0.4]
hidden_percent_on = 0.25
weight_density = 0.3
boost_strength = 1.5
boost_strength_factor = 0.85
lr = 0.1
momentum = 0.0
first_epoch_batch_size = 8
[models.kwinner]
base = "kwinner-boost"
boost_strength = 0.0
boost_strength_factor = 1.0

# Table 1's other six networks (the `paper` suite names them), tiny, run only when named.
[models.dense-cnn1]
channels = [4]
conv_percent_on = [1.0]
selected_by_default = false
[models.sparse-cnn1]
base = "kwinner-boost"
channels = [4]
conv_percent_on = [0.2]
selected_by_default = false
[models.dense-cnn2-sp3]
base = "kwinner-boost"
conv_percent_on = [1.0, 1.0]
selected_by_default = false
[models.sparse-cnn2-d3]
base = "kwinner-boost"
hidden_percent_on = 1.0
weight_density = 1.0
selected_by_default = false
[models.sparse-cnn2-w1]
base = "kwinner-boost"
weight_density = 1.0
selected_by_default = false
[models.sparse-cnn2-dsw]
base = "kwinner-boost"
hidden_percent_on = 1.0
selected_by_default = false
"""


def make_home(folder: Path) -> Paths:
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "zoo.toml").write_text(TINY_ZOO)
    shutil.copytree(REPO_ROOT / "attacks", folder / "attacks")
    return Paths(folder)


def repository_clone(folder: Path) -> Path:
    """The home of a fresh clone of this repository: its zoo and suites, no checkpoint, no reports."""
    for part in ("models", "attacks"):
        shutil.copytree(REPO_ROOT / part, folder / part, ignore=shutil.ignore_patterns("*.pt", "*-seed*.json"))
    return folder


def report_files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (a reports folder) but the result store and its readable copy, which
    are not committed: what a rebuilt report is compared on."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("results.")}


@pytest.fixture()
def tiny_home(tmp_path: Path) -> Paths:
    return make_home(tmp_path)


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, small_mnist: Dataset) -> Paths:
    """The tiny zoo trained once per test session (seed 0), every model. Tests must not retrain it."""
    paths = make_home(tmp_path_factory.mktemp("trained"))
    zoo = load_zoo(paths.zoo_spec)
    specs = select_models(zoo, "mnist5k", list(zoo))  # every model, those run only when named too
    train_zoo(paths, specs, "mnist5k", lambda: small_mnist, [0], torch.device("cpu"))
    return paths


@pytest.fixture(scope="session")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def small_mnist(mnist5k: Dataset) -> Dataset:
    """1,000 training and 200 test digits: enough for a tiny model to learn something."""
    return dataclasses.replace(
        mnist5k,
        train_x=mnist5k.train_x[:1000],
        train_y=mnist5k.train_y[:1000],
        test_x=mnist5k.test_x[:200],
        test_y=mnist5k.test_y[:200],
    )
