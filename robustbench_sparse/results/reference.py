"""The report already in a run's folder, as the reference the run is checked against.

A run never silently replaces a report made another way: before any work, `guard` compares what
is about to run (models, test images, evaluation seed and batch size, compute regime; the seeds
and suite name the folder itself) with the metadata of the records export beside the report there,
and refuses with the ways out unless told to replace it. After the run, `compare` says in one line
how the new numbers relate to the reference's: checkpoints identical or not; cells identical,
within seed noise, or different (with the largest difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from robustbench_sparse.results.harness import Export, Plan, Recorded, Setup, read_recorded
from robustbench_sparse.runtime import UserError, compute_regime

IDENTITY = ("model", "seed", "source", "spec")  # a cell, whatever code and environment keyed it


def _regime_name(meta: dict[str, Any]) -> str:
    return (meta.get("regime") or {}).get("name", "none recorded (before the portable regime)")


def _differences(setup: Setup, meta: dict[str, Any]) -> list[str]:
    """What differs between the run about to start and the one that made `meta`."""
    models = list(dict.fromkeys(name.rpartition("/seed")[0] for name in meta.get("checkpoints", {})))
    wanted = [s.name for s in setup.specs]
    found = []
    if sorted(models) != sorted(wanted):
        found.append(f"models {', '.join(models)} there, {', '.join(wanted)} here")
    suite = setup.suite
    if suite.test_size is not None and int(meta.get("test_size", -1)) != suite.test_size:
        found.append(f"{meta.get('test_size')} test images there, {suite.test_size} here")
    for field, ours in (("eval_seed", suite.seed), ("batch_size", suite.batch_size)):
        if meta.get(field) is not None and meta[field] != ours:
            found.append(f"{field.replace('_', ' ')} {meta[field]} there, {ours} here")
    if setup.device.type == "cpu" and _regime_name(meta) != compute_regime()["name"]:
        found.append(f"compute regime {_regime_name(meta)} there, {compute_regime()['name']} here")
    return found


def guard(setup: Setup, replace: bool = False) -> Recorded | None:
    """The reference in the setup's folder (None when it holds no report). A report made another
    way is refused before any work, unless `replace`."""
    reference = read_recorded(setup.folder)
    if reference is None:
        return None
    found = _differences(setup, reference.records.meta)
    if found and not replace:
        raise UserError(f"{setup.folder} holds a report made another way ({'; '.join(found)}): this run would "
                        "replace it. Run what it holds to reproduce it, give --home <another folder> to write "
                        "elsewhere, or --replace to replace it")
    return reference


@dataclass(frozen=True)
class Comparison:
    checkpoints_same: int
    checkpoints: int
    cells: int  # cells of the run that the reference holds too
    cells_same: int
    largest: float  # largest accuracy difference, in points
    where: str  # the cell of the largest difference
    within_noise: bool

    @property
    def identical(self) -> bool:
        return self.checkpoints_same == self.checkpoints and self.cells and self.cells_same == self.cells

    def line(self, folder: str) -> str:
        ckpt = (f"checkpoints identical ({self.checkpoints} of {self.checkpoints})"
                if self.checkpoints_same == self.checkpoints else
                f"checkpoints differ ({self.checkpoints - self.checkpoints_same} of {self.checkpoints})")
        if self.identical:
            return f"{folder}: {ckpt}, cells identical ({self.cells} of {self.cells}): identical to the committed reference"
        if not self.cells:
            return f"{folder}: {ckpt}; no cell in common with the committed reference"
        verdict = "within seed noise" if self.within_noise else "different"
        return (f"{folder}: {ckpt}, {self.cells - self.cells_same} of {self.cells} cells differ (largest "
                f"difference {self.largest:.1f} points, {self.where}): {verdict} from the committed reference")


def _records(export: Export | None) -> pd.DataFrame:
    frame = pd.DataFrame(export.records if export is not None else [])
    return frame if frame.empty else frame.drop_duplicates(list(IDENTITY)).set_index(list(IDENTITY))


def compare(reference: Recorded, plan: Plan, records: pd.DataFrame, moves: pd.DataFrame | None) -> Comparison:
    """The run's checkpoints and records against the reference's. A difference is within seed
    noise when it is below twice its standard error: from the reference's spread over training
    seeds where it has several, else from sampling (the two accuracies' binomial errors)."""
    theirs = reference.records.checkpoints
    same = sum(theirs.get(key) == sha for key, sha in plan.checkpoints.items())
    old = pd.concat([_records(reference.records), _records(reference.transfer)])
    new = pd.concat([f for f in (records, moves) if f is not None and not f.empty])
    new = new.drop_duplicates(list(IDENTITY)).set_index(list(IDENTITY))
    common = new.index.intersection(old.index)
    if not len(common):
        return Comparison(same, len(plan.checkpoints), 0, 0, 0.0, "", False)
    a, b = old.loc[common], new.loc[common]
    equal = (a["correct"].to_numpy() == b["correct"].to_numpy()) & (a["n"].to_numpy() == b["n"].to_numpy())
    if "flags" in a and "flags" in b:
        equal &= (a["flags"].to_numpy() == b["flags"].to_numpy())
    diff = (b["accuracy"] - a["accuracy"]).abs() * 100
    spread = old.groupby(level=["model", "source", "spec"])["accuracy"].std() * 100
    noise = []
    for (model, _, source, spec), p, n in zip(common, a["accuracy"], a["n"], strict=True):
        seeds_sd = spread.get((model, source, spec))
        sampling = math.sqrt(2 * max(p * (1 - p), 1 / n) / n) * 100
        noise.append(seeds_sd if seeds_sd is not None and not math.isnan(seeds_sd) and seeds_sd > 0 else sampling)
    within = bool(((diff.to_numpy() <= 2 * pd.Series(noise).to_numpy()) | equal).all())
    worst = diff.idxmax()
    where = f"{worst[0]} seed {worst[1]}, {worst[3]}" + (f" from {worst[2]}" if worst[2] != worst[0] else "")
    return Comparison(same, len(plan.checkpoints), len(common), int(equal.sum()), float(diff.max()), where, within)
