"""A result store that cannot be used is a UserError naming the file and the way out; the file is
left as it is, and nothing else is touched."""

import os
import re
import shlex
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from robustbench_sparse.data.datasets import dataset_info
from robustbench_sparse.results.store import BUSY_TIMEOUT, ResultStore
from robustbench_sparse.runtime import Paths, UserError
from robustbench_sparse.zoo.build import build_model
from robustbench_sparse.zoo.checkpoints import save_checkpoint
from robustbench_sparse.zoo.spec import load_zoo, select_models

RECORDS = [{"key": f"cell-{i:04d}", "dataset": "mnist5k", "model": "dense", "seed": 0, "spec": f"cell({i})",
            "n": 1000, "correct": i % 1000, "flags": "x" * 200} for i in range(1500)]


@pytest.fixture()
def store_file(tmp_path: Path) -> Path:
    """A valid store of 1,500 records (several hundred pages), closed, with its export beside it."""
    path = tmp_path / "reports" / "mnist5k" / "results.sqlite"
    store = ResultStore(path)
    store.add(RECORDS)
    store.export_jsonl()
    return path


def _commands(message: str) -> list[str]:
    """The shell commands a message quotes in backticks."""
    return re.findall(r"`([^`]+)`", message)


def test_a_file_that_is_not_a_database_is_named_and_left_in_place(store_file):
    export = store_file.with_suffix(".jsonl").read_bytes()
    for garbage in (os.urandom(8192), b"these are my notes, not a database\n" * 50):
        store_file.write_bytes(garbage)
        with pytest.raises(UserError) as caught:
            ResultStore(store_file)
        message = str(caught.value)
        assert str(store_file) in message and "is not an SQLite database" in message
        assert f"mv {store_file} {store_file}.damaged" in message
        assert store_file.read_bytes() == garbage
        assert store_file.with_suffix(".jsonl").read_bytes() == export


def test_a_truncated_store_is_refused_and_its_recovery_commands_work(store_file):
    data = store_file.read_bytes()
    store_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as caught:
        ResultStore(store_file).count()
    message = str(caught.value)
    assert str(store_file) in message and "damaged" in message and "left as it is" in message
    assert store_file.read_bytes() == data[: len(data) // 2]

    move, load = _commands(message)
    subprocess.run(move, shell=True, check=True)
    command = shlex.split(load)
    assert command[:2] == ["rbs", "import"] and command[-2:] == ["--home", str(store_file.parents[2])]
    result = CliRunner().invoke(app, command[1:])
    assert result.exit_code == 0, result.output
    assert Path(f"{store_file}.damaged").read_bytes() == data[: len(data) // 2]
    assert ResultStore(store_file).records(r["key"] for r in RECORDS) == {r["key"]: r for r in RECORDS}


def test_damage_found_by_a_later_statement_is_a_user_error(store_file):
    data = bytearray(store_file.read_bytes())
    data[-40_000:] = os.urandom(40_000)  # the last pages: the store opens, reading every record fails
    store_file.write_bytes(bytes(data))
    store = ResultStore(store_file)
    with pytest.raises(UserError, match="is not an SQLite database, or is damaged"):
        store.records(r["key"] for r in RECORDS)
    assert store_file.read_bytes() == bytes(data)


def test_the_move_command_takes_the_wal_files_and_keeps_an_earlier_damaged_copy(store_file):
    store = ResultStore(store_file)
    earlier = Path(f"{store_file}.damaged")
    earlier.write_bytes(b"an earlier damaged store")
    for suffix in ("-wal", "-shm"):
        Path(f"{store_file}{suffix}").write_bytes(b"left by a crash")
    (move, _) = _commands(store._recovery())
    assert move == (f"mv {store_file} {store_file}.damaged2 && mv {store_file}-wal {store_file}.damaged2-wal"
                    f" && mv {store_file}-shm {store_file}.damaged2-shm")
    assert earlier.read_bytes() == b"an earlier damaged store"


def test_a_store_locked_past_the_timeout_says_so_and_loses_nothing(store_file):
    assert ResultStore(store_file).timeout == BUSY_TIMEOUT == 120
    holder = sqlite3.connect(store_file, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = ResultStore(store_file, timeout=0.1)
        for write in (lambda: store.add([{"key": "new"}]), lambda: store.claim("job")):
            with pytest.raises(UserError) as caught:
                write()
            message = str(caught.value)
            assert str(store_file) in message and "is locked by another process" in message
            assert "wait for it to finish or stop it" in message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.count() == len(RECORDS) and "new" not in store


def test_sql_errors_that_are_bugs_are_not_dressed_up(store_file):
    with pytest.raises(sqlite3.OperationalError, match="syntax error"), ResultStore(store_file)._connect() as db:
        db.execute("SELEC 1")


def _with_untrained_dense(paths: Paths) -> Paths:
    """The tiny zoo's dense model saved untrained: a checkpoint `rbs report` accepts, with no training."""
    spec = select_models(load_zoo(paths.zoo_spec), "mnist5k", ["dense"])[0]
    save_checkpoint(paths, spec, "mnist5k", 0, build_model(spec, dataset_info("mnist5k")), 0.1, 10, 0.0, "cpu")
    return paths


def test_rbs_report_on_a_damaged_store_prints_one_error_line_and_exits_2(tiny_home):
    paths = _with_untrained_dense(tiny_home)
    store_file = paths.reports("mnist5k") / "results.sqlite"
    store_file.parent.mkdir(parents=True)
    store_file.write_bytes(os.urandom(4096))
    before = store_file.read_bytes()
    result = CliRunner().invoke(app, ["report", "--home", str(paths.home), "--models", "dense", "--suite", "quick"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(store_file) in errors[0] and "not an SQLite database" in errors[0]
    assert "Traceback" not in result.output
    assert store_file.read_bytes() == before
    assert (paths.checkpoints("mnist5k") / "dense-seed0.json").exists()
