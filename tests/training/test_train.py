import json

import pytest
import torch

from robustbench_sparse.execution.zoo_training import train_zoo
from robustbench_sparse.runtime import UserError
from robustbench_sparse.training.train import clean_accuracy, train_model
from robustbench_sparse.zoo.checkpoints import load_checkpoint, manifest_path
from robustbench_sparse.zoo.spec import load_zoo, select_models

CPU = torch.device("cpu")


def _specs(home, names=None):
    return select_models(load_zoo(home.zoo_spec), "mnist5k", names)


def test_tiny_models_learn_and_same_seed_gives_same_weights(tiny_home, small_mnist):
    spec = _specs(tiny_home, ["kwinner-boost"])[0]
    a = train_model(spec, small_mnist, seed=3, device=CPU)
    b = train_model(spec, small_mnist, seed=3, device=CPU)
    c = train_model(spec, small_mnist, seed=4, device=CPU)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    assert clean_accuracy(a, small_mnist, CPU) > 0.6  # 10 classes: chance is 0.1
    assert not a.training


def test_training_decays_boost_and_keeps_sparse_weights_zero(tiny_home, small_mnist):
    spec = _specs(tiny_home, ["kwinner-boost"])[0]
    model = train_model(spec, small_mnist, seed=0, device=CPU)
    state = model.state_dict()
    boost = [v for k, v in state.items() if k.endswith("boost_strength")]
    assert boost and all(float(b) == pytest.approx(1.5 * 0.85**spec.epochs) for b in boost)
    mask = next(v for k, v in state.items() if k.endswith("mask"))
    weight = next(v for k, v in state.items() if k.endswith("module.weight"))
    assert (weight[mask == 0] == 0).all()


def test_train_once_round_trip_and_retrain_only_what_changed(tiny_home, small_mnist):
    specs = _specs(tiny_home, ["dense", "kwinner"])
    first = train_zoo(tiny_home, specs, "mnist5k", lambda: small_mnist, [0], CPU)
    assert [o.action for o in first] == ["trained", "trained"]
    manifest = first[0].manifest
    assert manifest.sha256 and manifest.weights_file.endswith(f"{manifest.sha256[:12]}.pt")
    assert {"torch", "torchattacks", "python"} <= set(manifest.versions)
    assert manifest.clean_accuracy > 0.6

    model, loaded = load_checkpoint(tiny_home, specs[0], small_mnist.info, 0)
    assert (loaded.sha256, loaded.config_hash) == (manifest.sha256, manifest.config_hash)
    assert clean_accuracy(model, small_mnist, CPU) == pytest.approx(manifest.clean_accuracy)

    def never_load():
        raise AssertionError("data loaded although nothing needed training")

    second = train_zoo(tiny_home, specs, "mnist5k", never_load, [0], CPU)
    assert [o.action for o in second] == ["cached", "cached"]

    text = tiny_home.zoo_spec.read_text().replace("[models.dense]", "[models.dense]\nhidden = 40")
    tiny_home.zoo_spec.write_text(text)
    changed = _specs(tiny_home, ["dense", "kwinner"])
    with pytest.raises(UserError, match="different settings"):
        load_checkpoint(tiny_home, changed[0], small_mnist.info, 0)
    third = train_zoo(tiny_home, changed, "mnist5k", lambda: small_mnist, [0], CPU)
    assert [o.action for o in third] == ["retrained (settings changed)", "cached"]
    forced = train_zoo(tiny_home, changed[1:], "mnist5k", lambda: small_mnist, [0], CPU, force=True)
    assert forced[0].action == "retrained (--force)"
    assert forced[0].manifest.sha256 == third[1].manifest.sha256  # same seed, same weights


def test_a_corrupt_checkpoint_is_refused_by_hash(tiny_home, small_mnist):
    spec = _specs(tiny_home, ["dense"])[0]
    (outcome,) = train_zoo(tiny_home, [spec], "mnist5k", lambda: small_mnist, [0], CPU)
    weights = tiny_home.checkpoints("mnist5k") / outcome.manifest.weights_file
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt.*refusing to load"):
        load_checkpoint(tiny_home, spec, small_mnist.info, 0)
    (again,) = train_zoo(tiny_home, [spec], "mnist5k", lambda: small_mnist, [0], CPU)
    assert again.action == "retrained (checkpoint corrupt)"
    load_checkpoint(tiny_home, spec, small_mnist.info, 0)


def test_missing_checkpoint_says_how_to_train(tiny_home, small_mnist):
    spec = _specs(tiny_home, ["dense"])[0]
    with pytest.raises(UserError, match="rbs train --dataset mnist5k"):
        load_checkpoint(tiny_home, spec, small_mnist.info, 0)


def test_manifest_records_config_seed_and_dataset(tiny_home, small_mnist):
    spec = _specs(tiny_home, ["dropout"])[0]
    train_zoo(tiny_home, [spec], "mnist5k", lambda: small_mnist, [7], CPU)
    doc = json.loads(manifest_path(tiny_home, "mnist5k", "dropout", 7).read_text())
    assert doc["seed"] == 7 and doc["dataset"] == "mnist5k" and doc["config"]["dropout"] == 0.5
    assert doc["epochs"] == spec.epochs and doc["test_size"] == 200


def test_train_prints_validation_accuracy_next_to_test_accuracy(tiny_home, small_mnist, monkeypatch):
    """A full-size dataset has a validation split: `rbs train` shows and records its accuracy."""
    import dataclasses

    from typer.testing import CliRunner

    from robustbench_sparse import cli
    from robustbench_sparse.data.datasets import dataset_info
    from robustbench_sparse.zoo.checkpoints import read_manifest

    fashion = dataclasses.replace(small_mnist, info=dataset_info("fashion-mnist"), train_x=small_mnist.train_x[200:],
                                  train_y=small_mnist.train_y[200:], val_x=small_mnist.train_x[:200],
                                  val_y=small_mnist.train_y[:200])
    monkeypatch.setattr("robustbench_sparse.data.datasets.load_dataset", lambda *a, **k: fashion)
    result = CliRunner().invoke(cli.app, ["train", "--dataset", "fashion-mnist", "--models", "dense", "--device",
                                          "cpu", "--home", str(tiny_home.home)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "val acc %" in line)
    assert header.index("val acc %") < header.index("test acc %")
    manifest = read_manifest(tiny_home, "fashion-mnist", "dense", 0)
    assert manifest.val_accuracy is not None and 0.5 < manifest.val_accuracy <= 1
    # mnist5k has no validation split: no such column
    monkeypatch.setattr("robustbench_sparse.data.datasets.load_dataset", lambda *a, **k: small_mnist)
    plain = CliRunner().invoke(cli.app, ["train", "--models", "dense", "--device", "cpu", "--home",
                                         str(tiny_home.home)])
    assert plain.exit_code == 0, plain.output
    assert "val acc %" not in plain.output and "test acc %" in plain.output
