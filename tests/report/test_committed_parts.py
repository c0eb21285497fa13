"""The committed parts of the studies computed in parts (`reports/<dataset>/parts/`, docs/full-study.md):
each part is one training seed, every record in it names the checkpoint its manifest lists, and a
report built from parts holds exactly their records, so `rbs import` of the parts rebuilds it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from robustbench_sparse.results.harness import read_export
from robustbench_sparse.runtime import REPO_ROOT

COMMITTED = REPO_ROOT / "reports"
PARTS = sorted(COMMITTED.glob("*/parts/**/*.jsonl"))
# reports built from their parts alone: folder -> the parts' name before "-seedN"
FROM_PARTS = {
    "mnist/paper-seeds0-9": "paper",
    "fashion-mnist/paper-seeds0-2": "paper",
    "fashion-mnist/standard-seeds0-2": "standard",
}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _seed(path: Path) -> int:
    return int(re.search(r"-seed(\d+)$", path.stem).group(1))


def test_there_are_parts():
    assert len(PARTS) >= 10


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.relative_to(COMMITTED).as_posix())
def test_a_part_is_one_seed_and_its_manifest_lists_every_checkpoint(part):
    records = _records(part)
    assert records, part
    assert {int(r["seed"]) for r in records} == {_seed(part)}
    manifest = json.loads(part.with_name(f"{part.stem}-checkpoints.json").read_text())
    # one checkpoint per (model, seed), the one its manifest lists, and no manifest entry unused
    named = {(f"{r['model']}/seed{int(r['seed'])}", r["checkpoint"]) for r in records}
    assert named == {(name, entry["sha256"]) for name, entry in manifest.items()}
    assert {r["dataset"] for r in records} == {part.relative_to(COMMITTED).parts[0]}


@pytest.mark.parametrize(("folder", "stem"), sorted(FROM_PARTS.items()))
def test_a_report_built_from_parts_holds_exactly_their_records(folder, stem):
    # a part holds its seed's transfer cells too; the report keeps them in transfer.json
    report = [r for name in ("records.json", "transfer.json")
              if (export := read_export(COMMITTED / folder / name)) is not None for r in export.records]
    parts = sorted((COMMITTED / folder).parent.glob(f"parts/{stem}-seed*.jsonl"))
    seeds = {int(r["seed"]) for r in report}
    assert {_seed(p) for p in parts} == seeds
    from_parts = [r for p in parts for r in _records(p)]
    assert len(from_parts) == len(report)
    assert {(r["key"], int(r["correct"])) for r in from_parts} == {(r["key"], int(r["correct"])) for r in report}
