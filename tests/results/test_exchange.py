"""A study computed in parts: each part's records exported, imported into one home, are the records
of one full run; a key held with other numbers refuses the whole import."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from robustbench_sparse.evaluation.cells import Cell, environment_id
from robustbench_sparse.evaluation.suites import Evaluation
from robustbench_sparse.results import exchange, harness
from robustbench_sparse.runtime import REPO_ROOT, Paths
from tests.conftest import make_home

runner = CliRunner()
PARTS = ("dense,dropout", "batchnorm,kwinner-boost,kwinner")
# What may differ between two computations of one cell: when and how long, not what.
WHEN = ("date", "seconds")


def _home(trained: Paths, folder: Path) -> Paths:
    home = make_home(folder)
    shutil.copytree(trained.checkpoints("mnist5k"), home.checkpoints("mnist5k"))
    return home


def _evaluate(home: Paths, models: str) -> Path:
    result = runner.invoke(app, ["evaluate", "--suite", "quick", "--models", models, "--device", "cpu",
                                 "--home", str(home.home)])
    assert result.exit_code == 0, result.output
    return exchange.export_results(home, "mnist5k", home.home / f"{models.split(',')[0]}-part.jsonl")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def study(trained_home: Paths, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The quick suite on the tiny zoo: once whole, and in two parts (disjoint models) in two other homes."""
    root = tmp_path_factory.mktemp("study")
    full = _evaluate(_home(trained_home, root / "full"), ",".join(PARTS))
    parts = [_evaluate(_home(trained_home, root / f"part{i}"), models) for i, models in enumerate(PARTS)]
    return {"full": full, "a": parts[0], "b": parts[1], "root": root}


def _import(home: Paths, *files: Path):
    return runner.invoke(app, ["import", *map(str, files), "--home", str(home.home)])


def test_parts_imported_into_one_home_are_the_full_runs_records(study, tmp_path):
    merged = make_home(tmp_path / "merged")
    result = _import(merged, study["a"], study["b"])
    assert result.exit_code == 0, result.output
    a, b, full = (_lines(study[k]) for k in ("a", "b", "full"))
    assert f"mnist5k: {len(a) + len(b)} new, 0 already present" in result.output
    assert "another environment" not in result.output

    ours = _lines(exchange.export_results(merged, "mnist5k", tmp_path / "merged.jsonl"))
    assert [r["key"] for r in ours] == [r["key"] for r in full]  # same keys (each export is ordered by key)
    strip = [{k: v for k, v in r.items() if k not in WHEN} for r in ours]
    assert strip == [{k: v for k, v in r.items() if k not in WHEN} for r in full]  # same numbers, flags, specs

    again = _import(merged, study["a"], study["a"])
    assert again.exit_code == 0 and f"mnist5k: 0 new, {2 * len(a)} already present" in again.output


def test_a_record_with_other_numbers_refuses_the_whole_import_and_writes_nothing(study, tmp_path):
    merged = make_home(tmp_path / "merged")
    assert _import(merged, study["a"]).exit_code == 0
    store = harness.open_store(merged, "mnist5k")
    before = store.count()
    changed = _lines(study["a"])
    victim = next(r for r in changed if r["kind"] == "pgd" and r["strength"] > 0)
    victim["correct"] += 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in changed))

    result = _import(merged, study["b"], bad)  # part b is new: refused with the rest
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and victim["key"] in line and str(bad) in line and "results.sqlite" in line
    assert f"{victim['model']} seed 0" in line and "nothing was imported" in line
    assert store.count() == before

    elsewhere = make_home(tmp_path / "elsewhere")
    result = _import(elsewhere, study["a"], bad)  # two files that disagree
    assert result.exit_code == 2 and str(study["a"]) in result.output and str(bad) in result.output
    assert harness.open_store(elsewhere, "mnist5k").count() == 0


def test_records_of_another_environment_are_imported_apart_and_counted(study, tmp_path):
    record = _lines(study["a"])[0]
    here = f"|env={environment_id()}"
    assert here in record["key"]
    other = {**record, "key": record["key"].replace(here, "|env=000000000000"),
             "versions": json.dumps({**json.loads(record["versions"]), "code": "0" * 16})}
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps(other) + "\n")
    merged = make_home(tmp_path / "merged")
    result = _import(merged, path)
    assert result.exit_code == 0, result.output
    assert "1 new" in result.output and "1 from another environment 000000000000 (code 0000000000000000" in result.output
    assert harness.open_store(merged, "mnist5k").records([other["key"]])[other["key"]]["correct"] == record["correct"]


def test_an_export_without_keys_and_flags_is_refused(tmp_path):
    committed = REPO_ROOT / "reports" / "mnist5k" / "quick-seeds0-2" / "records.json"
    doc = json.loads(committed.read_text())
    if any("flags" in r for r in doc["records"]):
        pytest.skip("the committed quick report was re-exported with whole records")
    result = _import(make_home(tmp_path / "home"), committed)
    assert result.exit_code == 2 and "without their keys and per-image flags" in result.output


def test_a_key_in_another_environment_differs_only_in_its_environment():
    cell = Cell("mnist5k", "dense", 0, "f" * 64, Evaluation("clean", "clean", (), (0.0,)), 0.0, 10, 0, 10, "0" * 64)
    assert harness.key_in(cell, environment_id()) == cell.key
    moved = harness.key_in(cell, "abcdef012345")
    assert moved == cell.key.replace(environment_id(), "abcdef012345")
    assert harness.key_environment(moved) == "abcdef012345"
