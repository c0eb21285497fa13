"""The evaluation harness: plans checked before any work, cells run through an executor, results
written durably as they finish.

`prepare` checks everything a run needs that costs nothing (dataset, suite, models, seeds,
device, backend, ensemble) before any training or evaluation; `plan` adds the trained
checkpoints and the test set. `run_cells` hands the unfinished cells, grouped into jobs, to an
executor and stores each job's records as it finishes; several processes on one store share the
work through leases (see `store.py`). A run that is stopped keeps every finished cell, and the same
command resumes.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from robustbench_sparse.data.datasets import Dataset, DatasetInfo, dataset_info, default_data_root, load_dataset
from robustbench_sparse.evaluation.cells import COLUMNS, Cell, Job, environment, make_record, test_fingerprint
from robustbench_sparse.evaluation.suites import Suite, TransferPlan, load_suite
from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.execution.executor import Executor, Workspace, cells_by_set
from robustbench_sparse.execution.registry import open_executor
from robustbench_sparse.results.request import RunRequest
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.runtime import (
    Paths,
    UserError,
    atomic_write_text,
    library_versions,
    progress_disabled,
    resolve_device,
)
from robustbench_sparse.zoo.checkpoints import EXTERNAL, checkpoint_bytes, checkpoint_status, read_manifest
from robustbench_sparse.zoo.spec import ModelSpec, load_zoo, select_models


def with_backend(suite: Suite, backend: str | None) -> Suite:
    """The suite with its attacks run through `backend` where that backend has the attack."""
    if backend is None:
        return suite
    from robustbench_sparse.perturb.attacks import BACKENDS, FOOLBOX_ATTACKS

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    evaluations = []
    for e in suite.evaluations:
        params = dict(e.params)
        foolbox_can = e.kind in FOOLBOX_ATTACKS and params.get("loss", "ce") == "ce"
        if "backend" in params and (backend == "torchattacks" or foolbox_can):
            params["backend"] = backend
            if backend == "foolbox" and "early_stop" in params:
                params["early_stop"] = False  # foolbox attacks every image for every step
        evaluations.append(replace(e, params=tuple(sorted(params.items()))))
    return replace(suite, evaluations=tuple(evaluations))


@dataclass(frozen=True)
class Setup:
    """Everything about a run that can be checked before any work: no checkpoint, no data."""

    paths: Paths
    info: DatasetInfo
    suite: Suite
    specs: list[ModelSpec]
    seeds: list[int]
    device: torch.device
    backend: str | None = None  # set only when it changes the suite's own attacks
    notes: tuple[str, ...] = ()
    # Models brought as objects (`own_model.evaluate_model`): (name, seed) -> (identity, pickled module).
    external: dict[tuple[str, int], tuple[str, bytes]] = field(default_factory=dict)
    label: str = ""  # appended to the run's name: a run with a model of one's own is kept apart

    @property
    def run_name(self) -> str:
        """The run's identity in reports/<dataset>/: the suite, the backend when it differs, and
        the label of a run that adds models of one's own."""
        return self.suite.name + (f"@{self.backend}" if self.backend else "") + (f"+{self.label}" if self.label else "")

    @property
    def folder(self) -> Path:
        return self.paths.reports(self.info.name) / self.run_name


def _restrict_ensemble(suite: Suite, names: list[str]) -> tuple[Suite, list[str]]:
    """The suite's transfer ensemble limited to the selected models, with a note when it changed."""
    members = suite.transfer.ensemble
    kept = tuple(m for m in members if m in names)
    if kept == members:
        return suite, []
    dropped = ", ".join(m for m in members if m not in names)
    if len(kept) >= 2:
        note = f"transfer ensemble restricted to the selected models {', '.join(kept)} (left out: {dropped})"
    else:
        note = f"transfer ensemble dropped: fewer than two of its members ({', '.join(members)}) are selected"
        kept = ()
    return replace(suite, transfer=TransferPlan(suite.transfer.evaluations, suite.transfer.strengths, kept)), [note]


def prepare(*args: Any, **given: Any) -> Setup:
    """Check a run's input (a `RunRequest` or its fields); a UserError names what is wrong and
    the valid values."""
    request = RunRequest.of(*args, **given).resolved()
    dataset, suite, backend, device = request.dataset, request.suite, request.backend, request.device
    models = None if request.models is None else list(request.models)
    seeds = request.seeds
    paths = Paths(request.home) if request.home else Paths.default()
    info = dataset_info(dataset)
    own = load_suite(paths, suite, info)
    the_suite = with_backend(own, backend)
    zoo = load_zoo(paths.zoo_spec)
    declared = [name for name, by_dataset in zoo.items() if dataset in by_dataset]
    if models is None and own.models:
        missing = [m for m in own.models if m not in declared]
        if missing:
            raise UserError(f"suite {own.name!r}: models {', '.join(missing)} are not zoo models for {dataset}; "
                            f"valid: {', '.join(declared)}")
        models = list(own.models)
    specs = select_models(zoo, dataset, models)
    unknown = [m for m in own.transfer.ensemble if m not in declared]
    if unknown:
        raise UserError(f"suite {own.name!r}: transfer ensemble member(s) {', '.join(unknown)} are not zoo models "
                        f"for {dataset}; valid: {', '.join(declared)}")
    seeds = list(seeds)
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct non-negative integers, got {seeds}")
    dev = resolve_device(device)
    the_suite, notes = _restrict_ensemble(the_suite, [s.name for s in specs])
    run_backend = backend if backend is not None and the_suite.evaluations != own.evaluations else None
    return Setup(paths, info, the_suite, specs, seeds, dev, run_backend, tuple(notes))


@dataclass(frozen=True)
class Plan:
    """A checked run with its trained checkpoints and test set: what `run_cells` executes."""

    setup: Setup
    data: Dataset
    checkpoints: dict[tuple[str, int], str]

    paths = property(lambda self: self.setup.paths)
    suite = property(lambda self: self.setup.suite)
    specs = property(lambda self: self.setup.specs)
    seeds = property(lambda self: self.setup.seeds)
    device = property(lambda self: self.setup.device)
    info = property(lambda self: self.setup.info)
    folder = property(lambda self: self.setup.folder)

    @property
    def n(self) -> int:
        size = len(self.data.test_x)
        return size if self.suite.test_size is None else min(self.suite.test_size, size)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed test images: the first n of the seeded split."""
        return self.data.test_x[: self.n], self.data.test_y[: self.n]

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the n test images and labels."""
        return test_fingerprint(*self.test_set())

    def cell(self, model: str, seed: int, evaluation: Any, strength: float, source: str = "",
             source_checkpoint: str = "") -> Cell:
        return Cell(self.info.name, model, seed, self.checkpoints[(model, seed)], evaluation, strength, self.n,
                    self.suite.seed, self.suite.batch_size, self.fingerprint, source, source_checkpoint)

    def has(self, model: str, seed: int) -> bool:
        """Whether the model exists for that seed (a model brought as an object may have fewer)."""
        return (model, seed) in self.checkpoints

    def cells(self) -> list[Cell]:
        return [
            self.cell(spec.name, seed, evaluation, strength)
            for seed in self.seeds
            for spec in self.specs
            if self.has(spec.name, seed)
            for evaluation in self.suite.evaluations
            for strength in evaluation.strengths
        ]


def plan_from(setup: Setup, data_root: Path | str | None = None, download: bool = False) -> Plan:
    """The setup's trained checkpoints (refused with the command to train them) and test set."""
    checkpoints = {}
    dataset = setup.info.name
    for seed in setup.seeds:
        for spec in setup.specs:
            if spec.family == EXTERNAL:
                if (spec.name, seed) in setup.external:
                    checkpoints[(spec.name, seed)] = setup.external[(spec.name, seed)][0]
                continue
            status = checkpoint_status(setup.paths, spec, dataset, seed)
            if status != "trained":
                # name the models: `rbs train` alone trains only those selected by default
                zoo = [s.name for s in setup.specs if s.family != EXTERNAL]
                suite = "" if setup.suite.name == "standard" else f" --suite {setup.suite.name}"
                raise UserError(
                    f"{spec.name} (seed {seed}) on {dataset} is {status}: run "
                    f"`rbs train --dataset {dataset} --models {','.join(zoo)} --seeds {seed}` first "
                    f"(or `rbs benchmark{suite}`)"
                )
            manifest = read_manifest(setup.paths, dataset, spec.name, seed)
            assert manifest is not None
            checkpoints[(spec.name, seed)] = manifest.sha256
    data = load_dataset(dataset, Path(data_root) if data_root else default_data_root(), download)
    return Plan(setup, data, checkpoints)


def plan(*args: Any, **given: Any) -> Plan:
    """The checked setup of a `RunRequest` (or its fields) with its checkpoints and test set."""
    request = RunRequest.of(*args, **given)
    return plan_from(prepare(request), request.data_root, request.download)


def store_path(paths: Paths, dataset: str) -> Path:
    return paths.reports(dataset) / "results.sqlite"


def open_store(paths: Paths, dataset: str) -> ResultStore:
    return ResultStore(store_path(paths, dataset))


def adversarial_cache(paths: Paths, dataset: str) -> ArtifactStore:
    return ArtifactStore(paths.cache / "adversarial" / dataset)


def workspace(plan: Plan, cache: ArtifactStore | None = None) -> Workspace:
    specs = {s.name: s for s in plan.specs}
    x, y = plan.test_set()

    def checkpoint(name: str, seed: int) -> tuple[ModelSpec, bytes]:
        if (name, seed) in plan.setup.external:
            return specs[name], plan.setup.external[(name, seed)][1]
        data, manifest = checkpoint_bytes(plan.paths, specs[name], plan.info, seed)
        if manifest.sha256 != plan.checkpoints[(name, seed)]:
            raise UserError(f"{name} (seed {seed}) was retrained while this run was planned; run the command again")
        return specs[name], data

    return Workspace(plan.info, x, y, plan.device, checkpoint, cache or adversarial_cache(plan.paths, plan.info.name),
                     plan.suite.transfer.ensemble)


def _unfinished(job: Job, store: ResultStore) -> Job | None:
    done = store.present(c.key for c in job.cells)
    todo = tuple(c for c in job.cells if c.key not in done)
    return Job(todo) if todo else None


def execute(
    jobs: list[Job], store: ResultStore, executor: Executor, ws: Workspace, desc: str = "cells", poll: float = 0.5
) -> None:
    """Run every unfinished cell of `jobs`, each job leased while it runs. Jobs another process
    holds are skipped, then waited for (and taken over if their holder dies)."""
    keys = [c.key for job in jobs for c in job.cells]
    missing = len(keys) - len(store.present(keys))
    bar = tqdm(total=missing, desc=desc, unit="cell", disable=progress_disabled())
    waiting = list(jobs)
    try:
        while waiting:
            deferred: list[Job] = []

            def handed(pending: list[Job] = waiting, later: list[Job] = deferred) -> Iterator[Job]:
                for job in pending:
                    if _unfinished(job, store) is None:
                        continue
                    if not store.claim(job.key):
                        later.append(job)
                        continue
                    todo = _unfinished(job, store)  # its last holder may have just finished it
                    if todo is None:
                        store.release(job.key)
                        continue
                    bar.set_postfix_str(f"{todo.source} {todo.cells[0].spec}"[:60])
                    yield todo

            for outcome in executor.map(handed(), ws):
                cells = outcome.job.cells
                store.add(make_record(c, f, s, ws.device)
                          for c, f, s in zip(cells, outcome.flags, outcome.seconds, strict=True))
                store.release(outcome.job.key)
                bar.update(len(cells))
            waiting = deferred
            if waiting:
                bar.set_postfix_str(f"waiting for {len(waiting)} jobs another process is running")
                bar.n = max(0, missing - (len(keys) - len(store.present(keys))))
                bar.refresh()
                time.sleep(poll)
    finally:
        store.release_all()
        bar.close()


def run_cells(
    plan: Plan,
    cells: list[Cell],
    store: ResultStore | None = None,
    cache: ArtifactStore | None = None,
    executor: Executor | str = "local",
    desc: str = "cells",
) -> pd.DataFrame:
    """Run the cells not already stored; return all their records (in the cells' order)."""
    store = store or open_store(plan.paths, plan.info.name)
    with open_executor(executor) as runner:  # one made here ends here; one given stays the caller's
        execute(cells_by_set(cells), store, runner, workspace(plan, cache), desc)
    store.export_jsonl()
    return cell_frame(store, cells, plan)


def cell_frame(store: ResultStore, cells: list[Cell], plan: Plan) -> pd.DataFrame:
    """The stored records of `cells`, in their order, labelled as this run names them (a record
    may have been stored by another suite that names the same evaluation differently)."""
    found = store.records(c.key for c in cells)
    rows = [{**found[c.key], "evaluation": c.evaluation.name, "param": c.evaluation.param,
             "batch_size": c.batch_size, "source": c.crafted_on[0]} for c in cells if c.key in found]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.insert(len(frame.columns) - 2, "suite", plan.setup.run_name)
    return frame


def run(
    plan: Plan, store: ResultStore | None = None, cache: ArtifactStore | None = None, executor: Executor | str = "local"
) -> pd.DataFrame:
    """Run every cell of the plan not already in the store; return the plan's records."""
    return run_cells(plan, plan.cells(), store, cache, executor)


def export(frame: pd.DataFrame, plan: Plan, stem: str) -> tuple[Path, Path]:
    """CSV and JSON (records plus the run's metadata) under reports/<dataset>/<suite>[@backend]/."""
    folder = plan.folder
    folder.mkdir(parents=True, exist_ok=True)
    table = frame.drop(columns=["flags", "key", "versions"])
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    atomic_write_text(csv_path, table.to_csv(index=False))
    doc = {"meta": run_metadata(plan), "records": json.loads(table.to_json(orient="records"))}
    atomic_write_text(json_path, json.dumps(doc, indent=1) + "\n")
    return csv_path, json_path


def suite_file(plan: Plan) -> str:
    """The suite's file relative to the home (only its name when elsewhere): no machine's paths in what is committed."""
    if not plan.suite.source:
        return ""
    source = Path(plan.suite.source)
    try:
        return source.resolve().relative_to(plan.paths.home.resolve()).as_posix()
    except ValueError:
        return source.name


def run_metadata(plan: Plan) -> dict[str, Any]:
    return {
        "suite": plan.suite.name,
        "run": plan.setup.run_name,
        "backend": plan.setup.backend or "as the suite says",
        "suite_file": suite_file(plan),
        "dataset": plan.info.name,
        "split": plan.data.split,
        "test_size": plan.n,
        "test_fingerprint": plan.fingerprint,
        "eval_seed": plan.suite.seed,
        "batch_size": plan.suite.batch_size,
        "seeds": plan.seeds,
        "device": str(plan.device),
        "checkpoints": {f"{m}/seed{s}": h for (m, s), h in plan.checkpoints.items()},
        "versions": library_versions(),
        "code": environment()["code"],
        "notes": list(plan.setup.notes),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def evaluate(*args: Any, **given: Any) -> pd.DataFrame:
    """Run a suite against trained zoo models (a `RunRequest` or its fields); the long-form records
    as a DataFrame.

    Finished cells are reused; results are also exported to reports/<dataset>/<run>/records.{csv,json}.
    """
    request = RunRequest.of(*args, **given)
    the_plan = plan(request)
    with request.open_executor() as runner:
        frame = run(the_plan, executor=runner)
    export(frame, the_plan, "records")
    return frame
