"""The full MNIST, read from the four original IDX files: a shared copy at `$RBS_SHARED_DATA`, else
`../shared/datasets` beside the repository (docs/datasets.md). `.ci/run` sets
`RBS_REQUIRE_MNIST=1`, so there a missing copy fails instead of skipping."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from robustbench_sparse.data import datasets as data
from robustbench_sparse.data.idx import IDX_FILES, md5_of
from robustbench_sparse.data.mnist import MNIST_CHECKSUMS
from robustbench_sparse.runtime import REPO_ROOT, UserError, import_torchvision

SHARED = Path(os.environ.get("RBS_SHARED_DATA", REPO_ROOT.parent / "shared" / "datasets"))
HAVE = all((SHARED / "MNIST" / "raw" / name).is_file() for name in IDX_FILES)
if not HAVE and os.environ.get("RBS_REQUIRE_MNIST") == "1":
    raise RuntimeError(f"RBS_REQUIRE_MNIST=1 but the MNIST IDX files are not in {SHARED / 'MNIST' / 'raw'}")
pytestmark = pytest.mark.skipif(not HAVE, reason=f"no MNIST IDX files in {SHARED / 'MNIST' / 'raw'}")

# Per-class counts of the official sets (LeCun et al.'s files).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _fresh_loads():
    data._load_cached.cache_clear()
    yield
    data._load_cached.cache_clear()


def test_the_shared_files_are_the_canonical_ones():
    for name, (md5, size) in MNIST_CHECKSUMS.items():
        path = SHARED / "MNIST" / "raw" / name
        assert path.stat().st_size == size and md5_of(path) == md5


def test_full_mnist_loads_with_its_seeded_validation_split():
    ds = data.load_dataset("mnist", data_root=SHARED)
    assert ds.train_x.shape == (50_000, 1, 28, 28) and ds.val_x.shape == (10_000, 1, 28, 28)
    assert ds.test_x.shape == (10_000, 1, 28, 28) and ds.test_x.dtype == torch.float32
    assert torch.bincount(ds.test_y).tolist() == TEST_COUNTS
    assert torch.bincount(torch.cat([ds.train_y, ds.val_y])).tolist() == TRAIN_COUNTS
    everything = torch.cat([ds.train_x, ds.val_x])
    assert float(everything.min()) == 0.0 and float(everything.max()) == 1.0
    assert abs(float(everything.mean()) - ds.info.mean[0]) < 1e-3
    assert abs(float(everything.std()) - ds.info.std[0]) < 1e-3
    assert "10000 validation" in ds.split and "seed 0" in ds.split
    # The split is the seeded permutation of the official training set: the same on every load,
    # and train and validation are disjoint parts of it.
    data._load_cached.cache_clear()
    again = data.load_dataset("mnist", data_root=SHARED)
    assert torch.equal(again.val_x, ds.val_x) and torch.equal(again.train_y, ds.train_y)
    official = import_torchvision().datasets.MNIST(root=str(SHARED), train=True, download=False)
    order = torch.randperm(60_000, generator=torch.Generator().manual_seed(data.VALIDATION_SEED))
    images = official.data.unsqueeze(1).to(torch.float32) / 255
    assert torch.equal(ds.val_x, images[order[:10_000]]) and torch.equal(ds.train_x, images[order[10_000:]])
    assert torch.equal(ds.val_y, official.targets[order[:10_000]])


def _copy(tmp_path: Path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        shutil.copyfile(SHARED / "MNIST" / "raw" / name, raw / name)
    return raw


def test_a_truncated_or_damaged_file_is_refused_by_name(tmp_path):
    raw = _copy(tmp_path)
    labels = raw / "t10k-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(good[:-100])
    with pytest.raises(UserError) as caught:
        data.load_dataset("mnist", data_root=tmp_path)
    assert f"{labels} is 9,908 bytes, not the 10,008" in str(caught.value) and "truncated" in str(caught.value)
    data._load_cached.cache_clear()
    damaged = bytearray(good)
    damaged[5000] ^= 1  # one label changed: the file is still a well-formed IDX file
    labels.write_bytes(bytes(damaged))
    with pytest.raises(UserError) as caught:
        data.load_dataset("mnist", data_root=tmp_path)
    assert f"{labels} has MD5" in str(caught.value) and "27ae3e4e09519cfbb04c329615203637" in str(caught.value)
    assert "--download" in str(caught.value)


def test_rbs_train_on_a_damaged_copy_exits_2_and_trains_nothing(tmp_path, tiny_home):
    raw = _copy(tmp_path / "data")
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0" * 100)
    result = CliRunner().invoke(app, ["train", "--dataset", "mnist", "--models", "dense", "--home",
                                      str(tiny_home.home), "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 2, result.output
    assert "train-images-idx3-ubyte is 100 bytes" in " ".join(result.output.split())
    assert not (tiny_home.home / "models" / "mnist").exists()


def test_a_tiny_model_trains_on_the_real_files(tiny_home):
    zoo = tiny_home.zoo_spec
    zoo.write_text(zoo.read_text() + "\n[models.dense.mnist]\nepochs = 1\n")
    result = CliRunner().invoke(app, ["train", "--dataset", "mnist", "--models", "dense", "--home",
                                      str(tiny_home.home), "--data-root", str(SHARED)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tiny_home.home / "models" / "mnist" / "dense-seed0.json").read_text())
    assert manifest["test_size"] == 10_000 and manifest["epochs"] == 1
    assert manifest["clean_accuracy"] > 0.9  # one epoch of 50,000 digits
