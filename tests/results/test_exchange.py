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
from robustbench_sparse.results.transfer import transfer_cells
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


def _export(home: Paths, models: str, out: Path, *more: str):
    return runner.invoke(app, ["export", "--suite", "quick", "--models", models, "--out", str(out),
                               "--home", str(home.home), *more])


def _evaluate(home: Paths, models: str) -> Path:
    for command in ("evaluate", "transfer"):  # a part is whole: the suite's transfer cells too
        result = runner.invoke(app, [command, "--suite", "quick", "--models", models, "--device", "cpu",
                                     "--home", str(home.home)])
        assert result.exit_code == 0, result.output
    out = home.home / f"{models.split(',')[0]}-part.jsonl"
    result = _export(home, models, out)
    assert result.exit_code == 0, result.output
    return out


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

    ours = [json.loads(line) for line in harness.open_store(merged, "mnist5k").jsonl().splitlines()]

    def strip(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in WHEN} for r in records]

    def own(records: list[dict]) -> list[dict]:  # not transfer: crafted on the model scored
        return [r for r in records if r["source"] == r["model"]]

    # The same keys (each export is ordered by key), the same numbers, flags and specs.
    assert [r["key"] for r in own(ours)] == [r["key"] for r in own(full)]
    assert strip(own(ours)) == strip(own(full))
    # Transfer between models of one part is the full run's; between parts (and from an ensemble
    # of other members) no part holds it.
    by_key = {r["key"]: r for r in strip(full)}
    shared = [r for r in strip(ours) if r["source"] != r["model"] and r["key"] in by_key]
    assert shared and all(by_key[r["key"]] == r for r in shared)

    again = _import(merged, study["a"], study["a"])
    assert again.exit_code == 0 and f"mnist5k: 0 new, {2 * len(a)} already present" in again.output


def test_report_replace_builds_on_imported_parts_rather_than_on_the_export_beside_the_report(study, tmp_path):
    home = make_home(tmp_path / "home")  # no checkpoint: the part's records only
    assert _import(home, study["a"]).exit_code == 0
    report = ["report", "--suite", "quick", "--models", PARTS[0], "--home", str(home.home)]
    first = runner.invoke(app, report)  # no report yet: from the store
    assert first.exit_code == 0 and "rebuilding from" not in first.output, first.output
    path = home.reports("mnist5k") / "quick" / "records.json"
    imported = json.loads(path.read_text())["meta"]["checkpoints"]
    # the report beside it made from other weights of dense (a study before its parts were recomputed)
    doc = json.loads(path.read_text())
    doc["meta"]["checkpoints"]["dense/seed0"] = "0" * 64
    path.write_text(json.dumps(doc))

    kept = runner.invoke(app, report)
    assert kept.exit_code == 0 and "rebuilding from" in kept.output, kept.output
    assert "holds records of other checkpoints" in kept.output and "--replace" in kept.output
    assert json.loads(path.read_text())["meta"]["checkpoints"]["dense/seed0"] == "0" * 64

    replaced = runner.invoke(app, [*report, "--replace"])
    assert replaced.exit_code == 0 and "rebuilding from" not in replaced.output, replaced.output
    assert json.loads(path.read_text())["meta"]["checkpoints"] == imported
    again = runner.invoke(app, report)  # now the export is the store's: no note
    assert again.exit_code == 0 and "other checkpoints" not in again.output, again.output


def test_a_part_is_the_suites_cells_for_its_models_with_their_checkpoints_manifests(study, trained_home):
    home = Paths(study["root"] / "part0")
    the_plan = harness.plan(suite="quick", models=PARTS[0].split(","), device="cpu", home=home.home)
    cells = the_plan.cells() + transfer_cells(the_plan)
    records = _lines(study["a"])
    assert sorted(r["key"] for r in records) == sorted(c.key for c in cells)
    assert [r["key"] for r in records] == sorted(r["key"] for r in records)  # ordered by key, as the store
    manifests = json.loads(exchange.manifests_path(study["a"]).read_text())
    assert sorted(manifests) == sorted(f"{m}/seed0" for m in PARTS[0].split(","))
    for record in records:
        assert manifests[f"{record['model']}/seed0"]["sha256"] == record["checkpoint"]

    again = _export(home, PARTS[0], study["a"])  # the same part again: nothing changes
    assert again.exit_code == 0 and "(unchanged)" in again.output


def test_an_export_is_refused_while_a_cell_lacks_its_result_or_would_replace_another_part(study, tmp_path):
    home = Paths(study["root"] / "part0")  # evaluated for PARTS[0] only; every model is trained there
    out = tmp_path / "part.jsonl"
    result = _export(home, "dense,kwinner", out)
    assert result.exit_code == 2 and "have no stored result (the first: kwinner seed 0" in result.output
    assert "nothing was written" in result.output and not out.exists()
    assert not exchange.manifests_path(out).exists()

    assert _export(home, "dense", out).exit_code == 0
    before = out.read_text()
    result = _export(home, PARTS[0], out)  # another part at the same place
    assert result.exit_code == 2 and "--replace" in result.output and out.read_text() == before
    result = _export(home, PARTS[0], out, "--replace")
    assert result.exit_code == 0, result.output
    assert out.read_text() == study["a"].read_text()

    result = _export(home, "dense", tmp_path / "part.json")
    assert result.exit_code == 2 and "<name>.jsonl" in result.output


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
    # an export as written before records carried them: a committed one with keys and flags taken out
    doc = json.loads((REPO_ROOT / "reports" / "mnist5k" / "quick-seeds0-2" / "records.json").read_text())
    doc["records"] = [{k: v for k, v in r.items() if k not in ("key", "flags")} for r in doc["records"]]
    old = tmp_path / "records.json"
    old.write_text(json.dumps(doc))
    result = _import(make_home(tmp_path / "home"), old)
    assert result.exit_code == 2 and "without their keys and per-image flags" in result.output


def test_a_key_in_another_environment_differs_only_in_its_environment():
    cell = Cell("mnist5k", "dense", 0, "f" * 64, Evaluation("clean", "clean", (), (0.0,)), 0.0, 10, 0, 10, "0" * 64)
    assert harness.key_in(cell, environment_id()) == cell.key
    moved = harness.key_in(cell, "abcdef012345")
    assert moved == cell.key.replace(environment_id(), "abcdef012345")
    assert harness.key_environment(moved) == "abcdef012345"
