"""A damaged checkpoint is a UserError naming the file, saying what is wrong and the command that
retrains it; the file is left in place, and retraining moves it aside instead of replacing it."""

import hashlib
import json
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from robustbench_sparse.data.datasets import dataset_info
from robustbench_sparse.runtime import Paths, UserError
from robustbench_sparse.zoo.build import build_model
from robustbench_sparse.zoo.checkpoints import (
    checkpoint_bytes,
    checkpoint_status,
    load_checkpoint,
    manifest_path,
    model_from_bytes,
    save_checkpoint,
)
from robustbench_sparse.zoo.spec import ModelSpec, load_zoo, select_models

INFO = dataset_info("mnist5k")
RETRAIN = "rbs train --dataset mnist5k --models dense --seeds 0 --force"


def _spec(paths: Paths, name: str) -> ModelSpec:
    return select_models(load_zoo(paths.zoo_spec), "mnist5k", [name])[0]


def _save_untrained(paths: Paths, name: str, init_seed: int = 0) -> Path:
    """`name` saved with its initial weights (no training); the weights file."""
    spec = _spec(paths, name)
    torch.manual_seed(init_seed)
    manifest = save_checkpoint(paths, spec, "mnist5k", 0, build_model(spec, INFO), 0.1, 10, 0.0, "cpu")
    return paths.checkpoints("mnist5k") / manifest.weights_file


@pytest.fixture()
def home(tiny_home: Paths) -> Paths:
    _save_untrained(tiny_home, "dense")
    _save_untrained(tiny_home, "dropout")
    return tiny_home


def _weights(paths: Paths) -> Path:
    return next(paths.checkpoints("mnist5k").glob("dense-seed0-*.pt"))


def _damage(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    damaged = data[: len(data) // 2] if how == "truncated" else data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    path.write_bytes(damaged)
    return damaged


@pytest.mark.parametrize("how", ["truncated", "flipped byte"])
def test_weights_failing_their_sha256_are_refused_with_the_retrain_command(home, how):
    weights = _weights(home)
    damaged = _damage(weights, how)
    manifest = manifest_path(home, "mnist5k", "dense", 0).read_bytes()
    assert checkpoint_status(home, _spec(home, "dense"), "mnist5k", 0) == "corrupt"
    for load in (load_checkpoint, checkpoint_bytes):
        with pytest.raises(UserError) as caught:
            load(home, _spec(home, "dense"), INFO, 0)
        message = str(caught.value)
        assert str(weights) in message and "SHA-256" in message and "does not match its manifest" in message
        assert f"`{RETRAIN}`" in message and "left in place" in message and "\n" not in message
    assert weights.read_bytes() == damaged
    assert manifest_path(home, "mnist5k", "dense", 0).read_bytes() == manifest
    load_checkpoint(home, _spec(home, "dropout"), INFO, 0)  # the other checkpoint is untouched


def test_retraining_moves_the_damaged_weights_aside_instead_of_replacing_them(home):
    weights = _weights(home)
    damaged = _damage(weights, "flipped byte")
    again = _save_untrained(home, "dense")  # the same initial weights: the same file name
    assert again == weights
    assert weights.with_name(weights.name + ".damaged").read_bytes() == damaged
    load_checkpoint(home, _spec(home, "dense"), INFO, 0)


def test_retraining_still_removes_intact_superseded_weights(home):
    old = _weights(home)
    new = _save_untrained(home, "dense", init_seed=1)
    assert new != old and not old.exists() and not list(home.checkpoints("mnist5k").glob("*.damaged*"))


def test_weights_that_match_their_hash_but_do_not_load_name_the_file(home):
    weights = _weights(home)
    data = weights.read_bytes()[:200]  # saved damaged, then hashed: the SHA-256 check cannot see it
    weights.write_bytes(data)
    where = manifest_path(home, "mnist5k", "dense", 0)
    where.write_text(json.dumps({**json.loads(where.read_text()), "sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(UserError) as caught:
        load_checkpoint(home, _spec(home, "dense"), INFO, 0)
    message = str(caught.value)
    assert str(weights) in message and "cannot be loaded" in message and f"`{RETRAIN}`" in message
    assert f"mv {shlex.quote(str(weights))} {shlex.quote(str(weights))}.damaged" in message
    assert "\n" not in message and weights.read_bytes() == data

    with pytest.raises(UserError, match="the checkpoint of 'dense' on mnist5k cannot be loaded"):
        model_from_bytes(_spec(home, "dense"), INFO, data)  # as a worker sees it: bytes, no file


def test_an_unreadable_manifest_names_the_file_and_is_moved_aside_on_retraining(home):
    where = manifest_path(home, "mnist5k", "dense", 0)
    where.write_bytes(b"\xff\xfe not json")
    assert checkpoint_status(home, _spec(home, "dense"), "mnist5k", 0) == "corrupt"
    with pytest.raises(UserError) as caught:
        load_checkpoint(home, _spec(home, "dense"), INFO, 0)
    assert str(where) in str(caught.value) and f"`{RETRAIN}`" in str(caught.value)
    assert where.read_bytes() == b"\xff\xfe not json"
    _save_untrained(home, "dense")
    assert where.with_name(where.name + ".damaged").read_bytes() == b"\xff\xfe not json"
    load_checkpoint(home, _spec(home, "dense"), INFO, 0)


def test_rbs_report_with_a_corrupt_checkpoint_prints_one_error_line_and_exits_2(home):
    weights = _weights(home)
    damaged = _damage(weights, "flipped byte")
    result = CliRunner().invoke(app, ["report", "--home", str(home.home), "--models", "dense", "--suite", "quick"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dense (seed 0) on mnist5k is corrupt" in errors[0]
    assert "Traceback" not in result.output
    assert weights.read_bytes() == damaged
