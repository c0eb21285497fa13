"""Transfer attacks: each source model's adversarial set, crafted once, evaluated on every model.

The result per (attack, eps) is a source x target matrix whose diagonal is the white-box result
(the very same cell). Sets are cached on disk under the source's checkpoint hash, so adding a
model crafts only its own sets, and a re-run crafts nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from robustbench_sparse import harness
from robustbench_sparse.checkpoints import load_checkpoint
from robustbench_sparse.runtime import UserError, eval_mode, progress_enabled

ENSEMBLE = "ensemble"


class Ensemble(nn.Module):
    """Mean logits of several models: a single source to attack."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def ensemble_id(checkpoints: list[str]) -> str:
    return hashlib.sha256("+".join(sorted(checkpoints)).encode()).hexdigest()


def _sources(plan: harness.Plan, seed: int) -> dict[str, str]:
    """Source name -> checkpoint id: every model, plus the suite's ensemble if it has one."""
    names = [s.name for s in plan.specs]
    members = list(plan.suite.transfer.ensemble)
    unknown = [m for m in members if m not in names]
    if unknown:
        raise UserError(f"suite {plan.suite.name!r}: ensemble members {', '.join(unknown)} are not among the "
                        f"models evaluated ({', '.join(names)})")
    ckpt = {name: plan.checkpoints[(name, seed)] for name in names}
    if members:
        ckpt[ENSEMBLE] = ensemble_id([ckpt[m] for m in members])
    return ckpt


def transfer_cells(plan: harness.Plan) -> list[harness.Cell]:
    """Every (seed, attack, eps, source, target) cell of the suite's transfer table."""
    pairs = plan.suite.transfer_cells()
    if not pairs:
        raise UserError(f"suite {plan.suite.name!r} has no attack evaluation to transfer")
    cells = []
    for seed in plan.seeds:
        ckpt = _sources(plan, seed)
        for evaluation, strength in pairs:
            for source in ckpt:
                cells += [
                    harness.Cell(plan.data.info.name, spec.name, seed, ckpt[spec.name], evaluation, strength, plan.n,
                                 plan.suite.seed, plan.suite.batch_size, source, ckpt[source])
                    for spec in plan.specs
                ]
    return cells


def run_transfer(plan: harness.Plan, store: harness.ResultStore | None = None) -> pd.DataFrame:
    """Every (attack, eps) of the suite's [transfer] table, from every source to every target."""
    dataset = plan.data.info.name
    store = store or harness.ResultStore(harness.store_path(plan.paths, dataset))
    cache = harness.adversarial_cache(plan.paths, dataset)
    cells = transfer_cells(plan)
    todo: dict[tuple[int, str, str], list[harness.Cell]] = {}
    for cell in cells:
        if cell.key not in store:
            todo.setdefault((cell.seed, cell.source, cell.spec), []).append(cell)
    x, y = plan.test_set()
    for seed in plan.seeds:
        jobs = [group for (s, _, _), group in todo.items() if s == seed]
        if not jobs:
            continue
        members = list(plan.suite.transfer.ensemble)
        with contextlib.ExitStack() as stack:
            models = {}
            for spec in plan.specs:
                model, _ = load_checkpoint(plan.paths, spec, plan.data.info, seed, plan.device)
                models[spec.name] = stack.enter_context(eval_mode(model))
            if members:
                models[ENSEMBLE] = stack.enter_context(eval_mode(Ensemble([models[m] for m in members])))
            bar = tqdm(jobs, desc=f"transfer (seed {seed})", unit="set", disable=progress_enabled())
            for group in bar:
                first = group[0]
                bar.set_postfix_str(f"{first.source} {first.spec}"[:60])
                started = time.perf_counter()
                args = (first.evaluation, first.strength, x, y, plan.data.info, plan.device, first.eval_seed,
                        first.batch_size)
                adv = cache.get(first.source_checkpoint, first,
                                lambda m=models[first.source], a=args: harness.craft_set(m, *a))
                crafted = time.perf_counter() - started
                for cell in group:
                    started = time.perf_counter()
                    flags = harness.flags_on(models[cell.model], adv, y, plan.device, cell.batch_size)
                    seconds = time.perf_counter() - started + (crafted if cell.model == cell.source else 0.0)
                    store.add(harness.make_record(cell, flags, seconds, plan.device))
    frame = store.frame(c.key for c in cells)
    frame.insert(len(frame.columns) - 2, "suite", plan.suite.name)
    return frame


def transfer(
    dataset: str = "mnist5k",
    suite: str = "standard",
    models: list[str] | None = None,
    seeds: Iterable[int] = (0,),
    device: str = "auto",
    backend: str | None = None,
    home: Path | str | None = None,
    data_root: Path | str | None = None,
    download: bool = False,
) -> pd.DataFrame:
    """Run the suite's transfer attacks; long-form records with `source` and `model` (= target)."""
    plan = harness.plan(dataset, suite, models, seeds, device, backend, home, data_root, download)
    frame = run_transfer(plan)
    harness.export(frame, plan, "transfer")
    return frame


def transfer_matrix(frame: pd.DataFrame, evaluation: str, strength: float) -> pd.DataFrame:
    """Accuracy (%) of each target (columns) on the sets crafted on each source (rows)."""
    cells = frame[(frame["evaluation"] == evaluation) & (frame["strength"] == strength)]
    matrix = cells.pivot_table(index="source", columns="model", values="accuracy", aggfunc="mean") * 100
    order = list(dict.fromkeys(cells["model"]))
    rows = order + [s for s in dict.fromkeys(cells["source"]) if s not in order]
    return matrix.reindex(index=rows, columns=order)
