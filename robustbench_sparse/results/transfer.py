"""Transfer attacks: each source model's adversarial set, crafted once, evaluated on every model.

The result per (attack, eps) is a source x target matrix whose diagonal is the white-box result.
Sets are crafted by the attack's full form (`Evaluation.full`: no sweep pruning, no early
stopping), because examples that only just fool their source transfer worse and would make the
targets look more robust. Each set is one job: crafted once on its source (cached on disk under
the source's checkpoint hash), then scored on every target, so adding a model crafts only its own
sets, and a re-run crafts nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd

from robustbench_sparse.evaluation.cells import Cell
from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.execution.executor import ENSEMBLE, Executor
from robustbench_sparse.results import harness
from robustbench_sparse.results.request import RunRequest
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.runtime import UserError


def ensemble_id(checkpoints: list[str]) -> str:
    """The ensemble's identity: its members in order (the order of the mean's float sums)."""
    return hashlib.sha256("+".join(checkpoints).encode()).hexdigest()


def _sources(plan: harness.Plan, seed: int) -> dict[str, str]:
    """Source name -> checkpoint id: every model, plus the suite's ensemble if it has one (its
    members were checked against the selected models by `harness.prepare`)."""
    ckpt = {s.name: plan.checkpoints[(s.name, seed)] for s in plan.specs if plan.has(s.name, seed)}
    members = plan.suite.transfer.ensemble
    if members:
        ckpt[ENSEMBLE] = ensemble_id([ckpt[m] for m in members])
    return ckpt


def transfer_cells(plan: harness.Plan) -> list[Cell]:
    """Every (seed, attack, eps, source, target) cell of the suite's transfer table."""
    pairs = plan.suite.transfer_cells()
    if not pairs:
        raise UserError(f"suite {plan.suite.name!r} has no attack evaluation to transfer")
    cells = []
    for seed in plan.seeds:
        ckpt = _sources(plan, seed)
        for evaluation, strength in pairs:
            for source in ckpt:
                cells += [plan.cell(spec.name, seed, evaluation, strength, source, ckpt[source])
                          for spec in plan.specs if plan.has(spec.name, seed)]
    return cells


def run_transfer(
    plan: harness.Plan, store: ResultStore | None = None, executor: Executor | str = "local",
    cache: ArtifactStore | None = None,
) -> pd.DataFrame:
    """Every (attack, eps) of the suite's [transfer] table, from every source to every target."""
    return harness.run_cells(plan, transfer_cells(plan), store, cache, executor, desc="transfer")


def transfer(*args: Any, **given: Any) -> pd.DataFrame:
    """Run the suite's transfer attacks (a `RunRequest` or its fields); long-form records with
    `source` and `model` (= target). They go to the store only: the export beside the run's report
    (transfer.{csv,json}) is written with the report."""
    request = RunRequest.of(*args, **given)
    plan = harness.plan(request)
    with request.open_executor() as runner:
        return run_transfer(plan, executor=runner)


def transfer_matrix(frame: pd.DataFrame, evaluation: str, strength: float) -> pd.DataFrame:
    """Accuracy (%) of each target (columns) on the sets crafted on each source (rows)."""
    cells = frame[(frame["evaluation"] == evaluation) & (frame["strength"] == strength)]
    matrix = cells.pivot_table(index="source", columns="model", values="accuracy", aggfunc="mean") * 100
    order = list(dict.fromkeys(cells["model"]))
    rows = order + [s for s in dict.fromkeys(cells["source"]) if s not in order]
    return matrix.reindex(index=rows, columns=order)
