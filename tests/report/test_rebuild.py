"""A report is data: rebuilt from the records exported beside it, with no checkpoint and no result
store, it is the same, byte for byte; evaluating never touches the export of a report it did not
rebuild; and a missing checkpoint or record is named with the way to get it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from robustbench_sparse.results import harness
from robustbench_sparse.runtime import Paths
from tests.conftest import make_home, report_files

runner = CliRunner()
MODELS = "dense,dropout,kwinner"
SUITE = """
test_size = 50
batch_size = 25
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.2]
[[evaluations]]
kind = "shot_noise"
severity = [1, 3]
[[evaluations]]
kind = "fgsm"
eps = [0.0, 0.1, 0.25]
[[evaluations]]
kind = "pgd"
eps = [0.0, 0.25]
steps = 5
[transfer]
evaluations = ["fgsm"]
strengths = [0.25]
ensemble = ["dense", "dropout"]
"""
NOISE_ONLY = """
test_size = 50
batch_size = 25
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.2]
"""


def _rbs(home: Paths, *args: str) -> str:
    result = runner.invoke(app, [*args, "--home", str(home.home)])
    assert result.exit_code == 0, result.output
    return result.output


def _snapshot(home: Paths) -> dict[str, bytes]:
    return report_files(home.home / "reports")


def _checkout(built: Paths, folder: Path) -> Paths:
    """A fresh clone of `built`: its zoo, suites and committed reports; no checkpoint, no store."""
    home = make_home(folder)
    shutil.rmtree(home.suites)
    shutil.copytree(built.suites, home.suites)
    shutil.copytree(built.home / "reports", home.home / "reports",
                    ignore=shutil.ignore_patterns("results.*"))
    return home


@pytest.fixture(scope="module")
def built(trained_home: Paths, tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """A home with the tiny zoo's checkpoints that evaluated, transferred and reported (HTML and LaTeX)."""
    home = make_home(tmp_path_factory.mktemp("built"))
    shutil.copytree(trained_home.checkpoints("mnist5k"), home.checkpoints("mnist5k"))
    (home.suites / "rebuild.toml").write_text(SUITE)
    (home.suites / "noise.toml").write_text(NOISE_ONLY)
    for command in ("evaluate", "transfer"):
        _rbs(home, command, "--suite", "rebuild", "--models", MODELS, "--device", "cpu")
    _rbs(home, "report", "--suite", "rebuild", "--models", MODELS)
    _rbs(home, "report", "--suite", "rebuild", "--models", MODELS, "--format", "latex")
    return home


def test_a_report_rebuilds_byte_for_byte_without_checkpoints_or_store(built, tmp_path):
    committed = _snapshot(built)
    folder = "mnist5k/rebuild"
    assert {f"{folder}/{name}" for name in ("report.md", "report.html", "report.tex", "records.json",
                                             "records.csv", "transfer.json", "transfer.csv")} <= set(committed)
    assert any(name.endswith(".svg") for name in committed) and "mnist5k/cards/kwinner.json" in committed
    doc = json.loads(committed[f"{folder}/records.json"])
    assert all(r["key"] and r["flags"] for r in doc["records"])  # whole records: a report rebuilds from them

    clone = _checkout(built, tmp_path / "clone")
    assert not clone.checkpoints("mnist5k").exists()
    said = _rbs(clone, "report", "--suite", "rebuild")  # models and seeds: those the records hold
    assert "rebuilding from" in said and "records.json" in said
    _rbs(clone, "report", "--suite", "rebuild", "--format", "latex")
    rebuilt = _snapshot(clone)
    assert sorted(rebuilt) == sorted(committed)
    assert [name for name in committed if rebuilt[name] != committed[name]] == []


def test_with_the_checkpoints_and_no_store_a_report_rebuilds_from_its_records(built, tmp_path):
    """A clone whose checkpoints are those the records name (retrained bit for bit, or copied) and
    that has evaluated nothing: `rbs report` rebuilds from the records beside the report; once
    this home has evaluated the run, from its own store, with the same tables."""
    committed = _snapshot(built)
    clone = _checkout(built, tmp_path / "clone")
    shutil.copytree(built.checkpoints("mnist5k"), clone.checkpoints("mnist5k"))
    said = _rbs(clone, "report", "--suite", "rebuild")
    assert "rebuilding from" in said and "records.json" in said
    _rbs(clone, "report", "--suite", "rebuild", "--format", "latex")
    rebuilt = _snapshot(clone)
    assert [name for name in committed if rebuilt.get(name) != committed[name]] == []

    for command in ("evaluate", "transfer"):
        _rbs(clone, command, "--suite", "rebuild", "--models", MODELS, "--device", "cpu")
    said = _rbs(clone, "report", "--suite", "rebuild", "--models", MODELS)
    assert "rebuilding from" not in said
    tables = sorted(n for n in committed if "/tables/" in n)
    assert tables and [n for n in tables if _snapshot(clone)[n] != committed[n]] == []


def test_reporting_again_from_the_same_numbers_changes_no_file(built):
    before = _snapshot(built)
    _rbs(built, "report", "--suite", "rebuild", "--models", MODELS, "--format", "latex")
    _rbs(built, "report", "--suite", "rebuild", "--models", MODELS)
    assert _snapshot(built) == before  # dates are the records' own, not the clock's


def test_evaluate_and_transfer_leave_the_records_beside_a_report_alone(built):
    folder = built.reports("mnist5k") / "rebuild"
    names = ("records.json", "records.csv", "transfer.json", "transfer.csv")
    before = {name: (folder / name).read_bytes() for name in names}
    said = _rbs(built, "evaluate", "--suite", "rebuild", "--models", "dense", "--device", "cpu")
    assert "rbs report" in said
    _rbs(built, "transfer", "--suite", "rebuild", "--models", "dense,dropout", "--device", "cpu")
    harness.evaluate("mnist5k", "rebuild", ["kwinner"], device="cpu", home=built.home)
    assert {name: (folder / name).read_bytes() for name in names} == before


def test_a_report_without_checkpoints_or_records_names_what_is_missing(built, tmp_path):
    bare = make_home(tmp_path / "bare")
    (bare.suites / "rebuild.toml").write_text(SUITE)
    result = runner.invoke(app, ["report", "--suite", "rebuild", "--home", str(bare.home)])
    assert result.exit_code == 2
    assert "dense (seed 0) on mnist5k is missing" in result.output and "rbs train" in result.output
    assert "records.json" in result.output

    clone = _checkout(built, tmp_path / "clone")
    result = runner.invoke(app, ["report", "--suite", "rebuild", "--models", "dense,batchnorm",
                                 "--home", str(clone.home)])
    assert result.exit_code == 2
    assert "does not record batchnorm (seed 0)" in result.output and "rbs train" in result.output
    result = runner.invoke(app, ["report", "--suite", "rebuild", "--seeds", "0,1", "--home", str(clone.home)])
    # other seeds name another folder (rebuild-seeds0_1), which holds no records
    assert result.exit_code == 2 and "rebuild-seeds0_1" in result.output and "rbs train" in result.output


def test_a_report_builds_from_imported_records_without_checkpoints(built, tmp_path):
    """A study computed elsewhere (or in parts) and merged with `rbs import`: no checkpoint and no
    records.json here, the store's records name the checkpoints and give the numbers."""
    clone = _checkout(built, tmp_path / "clone")
    shutil.rmtree(clone.reports("mnist5k") / "rebuild")
    _rbs(clone, "import", str(built.reports("mnist5k") / "results.jsonl"))
    said = _rbs(clone, "report", "--suite", "rebuild", "--models", MODELS)
    assert "rebuilding from" not in said and "have no stored result" not in said
    made, remade = built.reports("mnist5k") / "rebuild", clone.reports("mnist5k") / "rebuild"
    tables = sorted(p.name for p in (made / "tables").glob("*.csv"))
    assert tables and tables == sorted(p.name for p in (remade / "tables").glob("*.csv"))
    assert [t for t in tables if (made / "tables" / t).read_bytes() != (remade / "tables" / t).read_bytes()] == []
    meta = [json.loads((f / "records.json").read_text())["meta"] for f in (made, remade)]
    assert meta[0]["checkpoints"] == meta[1]["checkpoints"] and len(meta[1]["checkpoints"]) == 3

    # a zoo entry changed since: the imported numbers are of the model its card describes
    shutil.rmtree(remade)
    zoo = clone.zoo_spec.read_text()
    clone.zoo_spec.write_text(zoo.replace("epochs = 3", "epochs = 4", 1))
    result = runner.invoke(app, ["report", "--suite", "rebuild", "--models", MODELS, "--home", str(clone.home)])
    assert result.exit_code == 2 and "describes dense otherwise than its card" in result.output
    clone.zoo_spec.write_text(zoo)

    # records of a second checkpoint of one model (and no records.json to say which): which one the
    # report is of is not known
    store = harness.open_store(clone, "mnist5k")
    other = next(r for r in store.records(store.present(
        json.loads(line)["key"] for line in (built.reports("mnist5k") / "results.jsonl").read_text().splitlines()
    )).values() if r["model"] == "dense")
    sha = other["checkpoint"]
    store.add([{**other, "checkpoint": "f" * 64, "key": other["key"].replace(f"ckpt={sha[:16]}", "ckpt=" + "f" * 16)}])
    result = runner.invoke(app, ["report", "--suite", "rebuild", "--models", MODELS, "--home", str(clone.home)])
    assert result.exit_code == 2 and "holds records of 2 of its checkpoints" in result.output
    assert "rbs train" in result.output


def test_a_zoo_entry_changed_since_the_records_is_refused(built, tmp_path):
    clone = _checkout(built, tmp_path / "clone")
    clone.zoo_spec.write_text(clone.zoo_spec.read_text().replace("epochs = 3", "epochs = 4", 1))
    result = runner.invoke(app, ["report", "--suite", "rebuild", "--home", str(clone.home)])
    assert result.exit_code == 2 and "describes dense otherwise than its card" in result.output
    assert "epochs 3 there, 4 here" in result.output


def _strip(path: Path) -> None:
    """The export as it was written before records carried their keys and per-image flags."""
    doc = json.loads(path.read_text())
    doc["records"] = [{k: v for k, v in r.items() if k not in ("flags", "key", "versions")} for r in doc["records"]]
    path.write_text(json.dumps(doc, indent=1) + "\n")


def test_an_export_without_flags_rebuilds_what_needs_none_and_names_what_does(built, tmp_path):
    _rbs(built, "evaluate", "--suite", "noise", "--models", "dense", "--device", "cpu")
    _rbs(built, "report", "--suite", "noise", "--models", "dense")
    clone = _checkout(built, tmp_path / "clone")
    _strip(clone.reports("mnist5k") / "noise" / "records.json")
    before = _snapshot(clone)
    _rbs(clone, "report", "--suite", "noise")
    after = _snapshot(clone)
    assert [name for name in after if after[name] != before.get(name)] == []  # the export itself untouched
    assert {n: b for n, b in after.items() if not n.startswith("mnist5k/noise/records.json")} == {
        n: b for n, b in _snapshot(built).items() if n in after and not n.startswith("mnist5k/noise/records.json")}

    _strip(clone.reports("mnist5k") / "rebuild" / "records.json")
    result = runner.invoke(app, ["report", "--suite", "rebuild", "--home", str(clone.home)])
    assert result.exit_code == 2 and "holds no per-image results" in result.output and "rbs import" in result.output


def test_a_reports_records_import_into_another_home_as_they_were_stored(built, tmp_path):
    other = make_home(tmp_path / "other")
    folder = built.reports("mnist5k") / "rebuild"
    result = runner.invoke(app, ["import", str(folder / "records.json"), str(folder / "transfer.json"),
                                 "--home", str(other.home)])
    assert result.exit_code == 0, result.output
    exported = [r for stem in ("records", "transfer") for r in json.loads((folder / f"{stem}.json").read_text())["records"]]
    keys = {r["key"] for r in exported}
    assert f"mnist5k: {len(keys)} new, {len(exported) - len(keys)} already present" in result.output
    mine = harness.open_store(other, "mnist5k").records(keys)
    theirs = harness.open_store(built, "mnist5k").records(keys)
    assert mine == theirs  # the stored record itself, not only its numbers


def test_without_seeds_a_clone_is_told_which_seeds_the_committed_report_holds(built, tmp_path):
    """Only a report over several seeds is committed (noise-seeds0_1): `rbs report --suite noise`
    in a clone (seed 0 by default, folder `noise`, nothing there) names it and the `--seeds` that
    rebuild it, and that command does."""
    home = _checkout(built, tmp_path / "made")
    shutil.copytree(built.checkpoints("mnist5k"), home.checkpoints("mnist5k"))
    _rbs(home, "train", "--models", "dense", "--seeds", "1")
    _rbs(home, "evaluate", "--suite", "noise", "--models", "dense", "--seeds", "0,1", "--device", "cpu")
    _rbs(home, "report", "--suite", "noise", "--models", "dense", "--seeds", "0,1")
    clone = _checkout(home, tmp_path / "clone")
    shutil.rmtree(clone.reports("mnist5k") / "noise", ignore_errors=True)  # other tests' seed-0 report
    result = runner.invoke(app, ["report", "--suite", "noise", "--home", str(clone.home)])
    assert result.exit_code == 2
    assert "noise-seeds0_1 holds seeds 0,1: `--seeds 0,1` rebuilds it" in result.output
    _rbs(clone, "report", "--suite", "noise", "--seeds", "0,1")
    assert (clone.reports("mnist5k") / "noise-seeds0_1" / "report.md").read_text() == \
        (home.reports("mnist5k") / "noise-seeds0_1" / "report.md").read_text()
