"""Every committed report is data: in a fresh clone (no checkpoint, no result store) `rbs report`
rebuilds each one from the records beside it, byte for byte, and with them the model cards and the
index. A report whose files differ was made by older report code or from other numbers; one that
cannot be rebuilt needs its checkpoints (docs/reports.md#rebuild)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from robustbench_sparse.data import datasets as data
from robustbench_sparse.data.idx import IDX_FILES
from robustbench_sparse.runtime import REPO_ROOT
from tests.conftest import report_files, repository_clone

SHARED = Path(os.environ.get("RBS_SHARED_DATA", REPO_ROOT.parent / "shared" / "datasets"))
HAVE_MNIST = all((SHARED / "MNIST" / "raw" / name).is_file() for name in IDX_FILES)
COMMITTED = REPO_ROOT / "reports"
FOLDERS = sorted(p.parent.relative_to(COMMITTED).as_posix() for p in COMMITTED.glob("*/*/records.json"))


def _command(folder: str) -> list[str]:
    dataset = folder.split("/")[0]
    doc = json.loads((COMMITTED / folder / "records.json").read_text())
    seeds = sorted({r["seed"] for r in doc["records"]})
    return ["report", "--dataset", dataset, "--suite", doc["meta"]["suite"], "--seeds", ",".join(map(str, seeds))]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A clone's home (zoo, suites and committed reports; no checkpoint, no store) after `rbs
    report` of every committed report (LaTeX too where one is committed); per folder, the output
    of a rebuild that failed."""
    home = repository_clone(tmp_path_factory.mktemp("clone"))
    shutil.copytree(COMMITTED, home / "reports", ignore=shutil.ignore_patterns("results.*"))
    failed = {}
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RBS_DATA_ROOT", str(SHARED))
        data._load_cached.cache_clear()
        for folder in FOLDERS:
            formats = [[], ["--format", "latex"]] if (COMMITTED / folder / "report.tex").is_file() else [[]]
            for extra in formats:
                result = runner.invoke(app, [*_command(folder), *extra, "--home", str(home)])
                if result.exit_code != 0:
                    failed[folder] = result.output
        data._load_cached.cache_clear()
    return home / "reports", failed


def test_every_dataset_has_committed_reports():
    assert {f.split("/")[0] for f in FOLDERS} >= {"mnist", "mnist5k", "fashion-mnist"}


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_committed_report_rebuilds_byte_for_byte_in_a_clone(rebuilt, folder):
    if folder.startswith("mnist/") and not HAVE_MNIST:
        pytest.skip(f"no MNIST IDX files in {SHARED / 'MNIST' / 'raw'} (MNIST-C's picture needs the images)")
    reports, failed = rebuilt
    assert folder not in failed, failed.get(folder)
    committed, again = report_files(COMMITTED / folder), report_files(reports / folder)
    assert sorted(again) == sorted(committed)
    assert [name for name in committed if again[name] != committed[name]] == []


def test_the_cards_and_the_index_are_those_of_the_committed_reports(rebuilt):
    reports, failed = rebuilt
    if not HAVE_MNIST:
        pytest.skip(f"no MNIST IDX files in {SHARED / 'MNIST' / 'raw'}")
    assert failed == {}
    names = [n for n in report_files(COMMITTED) if n == "index.html" or "/cards/" in n]
    committed, again = report_files(COMMITTED), report_files(reports)
    assert names and [n for n in names if again.get(n) != committed[n]] == []
