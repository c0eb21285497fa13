"""The suite on a GPU: k-winners, training and a suite's cells on CUDA agree with the CPU's.

Skipped where torch sees no GPU (CI has none); run on a CUDA machine with
`python -m pytest tests/test_cuda.py`. docs/reproducibility.md gives what a GPU run measured."""

import json
import shutil

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from robustbench_sparse.execution.zoo_training import train_zoo
from robustbench_sparse.results import harness
from robustbench_sparse.zoo.checkpoints import read_manifest
from robustbench_sparse.zoo.sparse import KWinners, KWinners2d
from robustbench_sparse.zoo.spec import load_zoo, select_models
from tests.conftest import make_home

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
runner = CliRunner()


def test_kwinners_keep_exactly_k_on_cuda():
    x = torch.rand(16, 200, generator=torch.Generator().manual_seed(0)).to(CUDA) + 0.1
    layer = KWinners(n=200, k=20, boost_strength=1.5).to(CUDA).train()
    assert ((layer(x) != 0).sum(dim=1) == 20).all()
    assert ((layer.eval()(x) != 0).sum(dim=1) == 30).all()
    maps = torch.rand(4, 8, 6, 6, generator=torch.Generator().manual_seed(1)).to(CUDA) + 0.1
    conv = KWinners2d(channels=8, height=6, width=6, k=29, boost_strength=1.5).to(CUDA).train()
    assert ((conv(maps) != 0).flatten(1).sum(dim=1) == 29).all()


def test_a_model_trained_on_cuda_learns_and_is_recorded_as_made_there(tmp_path, small_mnist):
    paths = make_home(tmp_path)
    specs = select_models(load_zoo(paths.zoo_spec), "mnist5k", ["dense", "kwinner-boost"])
    train_zoo(paths, specs, "mnist5k", lambda: small_mnist, [0], CUDA)
    for spec in specs:
        manifest = read_manifest(paths, "mnist5k", spec.name, 0)
        assert manifest is not None and manifest.device.startswith("cuda")
        assert manifest.clean_accuracy > 0.5, (spec.name, manifest.clean_accuracy)  # chance is 0.1


def test_a_cpu_checkpoint_scores_on_cuda_as_on_the_cpu(tmp_path, trained_home, small_mnist, monkeypatch):
    """The same checkpoints, the quick suite on 50 images in two homes: noise is drawn on the CPU,
    so only the models' arithmetic differs; attacks may step differently in the last bits."""
    monkeypatch.setattr("robustbench_sparse.pipeline.load_dataset", lambda *a, **k: small_mnist)
    frames = {}
    for device in ("cpu", "cuda"):
        paths = make_home(tmp_path / device)
        shutil.copytree(trained_home.checkpoints("mnist5k"), paths.checkpoints("mnist5k"))
        quick = paths.suites / "quick.toml"
        quick.write_text(quick.read_text().replace("test_size = 200", "test_size = 50"))
        done = runner.invoke(app, ["evaluate", "--suite", "quick", "--models", "dense,kwinner-boost",
                                   "--home", str(paths.home), "--device", device])
        assert done.exit_code == 0, done.output
        store = harness.open_store(paths, "mnist5k")
        records = [json.loads(line) for line in store.jsonl().splitlines()]
        store.close()
        frames[device] = pd.DataFrame(records).set_index(["model", "kind", "strength"]).sort_index()
    cpu, cuda = frames["cpu"], frames["cuda"]
    assert set(cuda["device"]) == {"cuda"} and set(cpu["device"]) == {"cpu"}
    assert list(cpu.index) == list(cuda.index)
    gap = (cpu["accuracy"] - cuda["accuracy"]).abs()
    noise = ~cpu.index.get_level_values("kind").str.contains("fgsm")
    assert (gap[noise] <= 1 / 50 + 1e-9).all(), gap[noise]  # at most one image of 50 flips
    assert (gap <= 3 / 50 + 1e-9).all(), gap
    for frame in (cpu, cuda):  # eps = 0 is clean; an attack never scores above clean
        clean = frame.xs("fgsm", level="kind")["accuracy"]
        assert (frame.xs("ifgsm", level="kind")["accuracy"].groupby("model").max()
                <= clean.groupby("model").max() + 1e-9).all()
