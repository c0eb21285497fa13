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
import hashlib
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from robustbench_sparse.data.datasets import Dataset, DatasetInfo, dataset_info, default_data_root, load_dataset
from robustbench_sparse.evaluation.cells import (
    COLUMNS,
    NUMBER_LIBRARIES,
    Cell,
    Job,
    environment,
    environment_id,
    make_record,
    test_fingerprint,
)
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
    compute_regime,
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

    def runs(self, spec: ModelSpec, seed: int) -> bool:
        """Whether the run has `spec` on training seed `seed` (a suite may run a model on fewer seeds)."""
        return self.suite.runs_on(spec.name, seed)

    @property
    def run_name(self) -> str:
        """The run's identity in reports/<dataset>/: the suite, the backend when it differs, and
        the label of a run that adds models of one's own."""
        return self.suite.name + (f"@{self.backend}" if self.backend else "") + (f"+{self.label}" if self.label else "")

    @property
    def folder(self) -> Path:
        """reports/<dataset>/<run>[-seeds...]/: named by what it ran, so a run of other seeds never
        lands on another's report (seed 0 alone, the default, adds nothing)."""
        return self.paths.reports(self.info.name) / (self.run_name + seeds_suffix(self.seeds))


def seeds_suffix(seeds: Iterable[int]) -> str:
    """"" for seed 0 alone; "-seeds0-4" for a range; "-seeds0_2_7" otherwise."""
    seeds = sorted(seeds)
    if seeds in ([], [0]):
        return ""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"-seeds{seeds[0]}-{seeds[-1]}"
    return "-seeds" + "_".join(map(str, seeds))


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


def _seeds_below(suite: Suite, specs: list[ModelSpec], seeds: list[int]) -> tuple[list[ModelSpec], list[str]]:
    """The models the suite runs on at least one of the seeds, and a note for each limit that
    leaves out some of the seeds (`seeds_below`); a UserError when no model is left."""
    notes = []
    for limit in sorted({n for _, n in suite.seeds_below}):
        names = [s.name for s in specs if dict(suite.seeds_below).get(s.name) == limit]
        left_out = [n for n in seeds if n >= limit]
        if names and left_out:
            notes.append(f"{', '.join(names)} run on training seeds below {limit} only (the suite's seeds_below): "
                         f"not on seed{'s' * (len(left_out) > 1)} {', '.join(map(str, left_out))}")
    kept = [s for s in specs if any(suite.runs_on(s.name, n) for n in seeds)]
    if not kept:
        raise UserError(f"suite {suite.name!r} runs none of {', '.join(s.name for s in specs)} on seeds "
                        f"{', '.join(map(str, seeds))} (its seeds_below: "
                        f"{', '.join(f'{m} = {n}' for m, n in suite.seeds_below)})")
    return kept, notes


def _suites(request: RunRequest) -> tuple[Paths, DatasetInfo, Suite, Suite]:
    """The request's home, dataset, suite as written and suite as run (with its backend)."""
    paths = Paths(request.home) if request.home else Paths.default()
    info = dataset_info(request.dataset or "")
    own = load_suite(paths, request.suite or "", info)
    return paths, info, own, with_backend(own, request.backend)


def run_folder(*args: Any, **given: Any) -> Path:
    """reports/<dataset>/<run>/ of a request, found without checking its models or seeds."""
    request = RunRequest.of(*args, **given).resolved()
    paths, info, own, the_suite = _suites(request)
    backend = request.backend if request.backend is not None and the_suite.evaluations != own.evaluations else None
    return Setup(paths, info, the_suite, [], list(request.seeds), torch.device("cpu"), backend).folder


def prepare(*args: Any, **given: Any) -> Setup:
    """Check a run's input (a `RunRequest` or its fields); a UserError names what is wrong and
    the valid values."""
    request = RunRequest.of(*args, **given).resolved()
    dataset, backend, device = request.dataset, request.backend, request.device
    models = None if request.models is None else list(request.models)
    seeds = request.seeds
    paths, info, own, the_suite = _suites(request)
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
    unknown = [m for m, _ in own.seeds_below if m not in declared]
    if unknown:
        raise UserError(f"suite {own.name!r}: seeds_below names {', '.join(unknown)}, not zoo models for {dataset}; "
                        f"valid: {', '.join(declared)}")
    specs, fewer = _seeds_below(the_suite, specs, seeds)
    dev = resolve_device(device)
    the_suite, notes = _restrict_ensemble(the_suite, [s.name for s in specs])
    notes = fewer + notes
    run_backend = backend if backend is not None and the_suite.evaluations != own.evaluations else None
    return Setup(paths, info, the_suite, specs, seeds, dev, run_backend, tuple(notes))


@dataclass(frozen=True)
class Export:
    """A run's export beside its report (`reports/<dataset>/<run>/records.json` or `transfer.json`):
    the run's metadata and its records. Exports written before records carried their keys and
    per-image flags hold neither (`complete` is False)."""

    path: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def complete(self) -> bool:
        """Whether every record is whole (key and per-image flags): what a result store holds."""
        return all(r.get("key") and r.get("flags") for r in self.records)

    @property
    def env(self) -> str:
        """The environment id in the keys of its records (the libraries, code and regime that made
        them); for an export without keys, the id its metadata gives (`environment_id_of`)."""
        if not self.complete:
            return environment_id_of(self.meta["versions"], self.meta["code"])
        envs = {key_environment(r["key"]) for r in self.records}
        if len(envs) != 1:
            raise UserError(f"{self.path} mixes records of {len(envs)} environments: not one run's export")
        return envs.pop()

    @property
    def checkpoints(self) -> dict[tuple[str, int], str]:
        """(model, seed) -> checkpoint SHA-256, as the run recorded them."""
        out = {}
        for name, sha in self.meta.get("checkpoints", {}).items():
            model, _, seed = name.rpartition("/seed")
            out[(model, int(seed))] = sha
        return out


def read_export(path: Path) -> Export | None:
    """The export at `path` (None when there is none); a UserError when it is not one."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        export = Export(path, dict(doc["meta"]), list(doc["records"]))
        export.env  # noqa: B018  (its keys or metadata name the environment)
        export.checkpoints  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{path} is not a records export ({type(err).__name__}: {err})") from None
    return export


@dataclass(frozen=True)
class Recorded:
    """The exports a plan was made from when its checkpoints are not here (`report_plan`): its
    checkpoints, test set and numbers are theirs."""

    records: Export
    transfer: Export | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for m, _ in self.records.checkpoints))

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.records.meta["seeds"])


def read_recorded(folder: Path) -> Recorded | None:
    """The records.json (and transfer.json) beside the report in `folder`, None without records.json."""
    records = read_export(folder / "records.json")
    return None if records is None else Recorded(records, read_export(folder / "transfer.json"))


@dataclass(frozen=True)
class Plan:
    """A checked run with its trained checkpoints and test set: what `run_cells` executes. A plan
    made from a run's exports (`recorded`) only reports: its models may not be here."""

    setup: Setup
    data: Dataset
    checkpoints: dict[tuple[str, int], str]
    recorded: Recorded | None = None
    imported: tuple[tuple[str, int], ...] = ()  # (model, seed) not trained here, whose records `rbs import` put in the store

    paths = property(lambda self: self.setup.paths)
    suite = property(lambda self: self.setup.suite)
    specs = property(lambda self: self.setup.specs)
    seeds = property(lambda self: self.setup.seeds)
    device = property(lambda self: self.setup.device)
    info = property(lambda self: self.setup.info)
    folder = property(lambda self: self.setup.folder)

    @property
    def n(self) -> int:
        if self.recorded is not None:
            return int(self.recorded.records.meta["test_size"])
        size = len(self.data.test_x)
        return size if self.suite.test_size is None else min(self.suite.test_size, size)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed test images: the first n of the seeded split."""
        return self.data.test_x[: self.n], self.data.test_y[: self.n]

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the n test images and labels."""
        if self.recorded is not None:
            return str(self.recorded.records.meta["test_fingerprint"])
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


def plan_from(setup: Setup, data_root: Path | str | None = None, download: bool = False,
              elsewhere: Mapping[tuple[str, int], str] | None = None) -> Plan:
    """The setup's trained checkpoints (refused with the command to train them) and test set.
    `elsewhere`: (model, seed) -> SHA-256 of checkpoints not here whose records are (a report's
    plan from imported records, `_stored_plan`)."""
    elsewhere = elsewhere or {}
    checkpoints = {}
    dataset = setup.info.name
    for seed in setup.seeds:
        for spec in setup.specs:
            if not setup.runs(spec, seed):
                continue
            if spec.family == EXTERNAL:
                if (spec.name, seed) in setup.external:
                    checkpoints[(spec.name, seed)] = setup.external[(spec.name, seed)][0]
                continue
            status = checkpoint_status(setup.paths, spec, dataset, seed)
            if status != "trained" and (spec.name, seed) in elsewhere:
                checkpoints[(spec.name, seed)] = elsewhere[(spec.name, seed)]
                continue
            if status == "corrupt":
                checkpoint_bytes(setup.paths, spec, setup.info, seed)  # raises, naming the file and the cure
            if status != "trained":
                raise UserError(f"{spec.name} (seed {seed}) on {dataset} is {status}: run {_train_first(setup, seed)}")
            manifest = read_manifest(setup.paths, dataset, spec.name, seed)
            assert manifest is not None
            checkpoints[(spec.name, seed)] = manifest.sha256
    data = load_dataset(dataset, Path(data_root) if data_root else default_data_root(), download)
    return Plan(setup, data, checkpoints, imported=tuple(k for k in checkpoints if k in elsewhere))


def _train_first(setup: Setup, seed: int) -> str:
    # name the models: `rbs train` alone trains only those selected by default
    zoo = [s.name for s in setup.specs if s.family != EXTERNAL and setup.runs(s, seed)]
    suite = "" if setup.suite.name == "standard" else f" --suite {setup.suite.name}"
    return (f"`rbs train --dataset {setup.info.name} --models {','.join(zoo)} --seeds {seed}` first "
            f"(or `rbs benchmark{suite}`)")


def plan(*args: Any, **given: Any) -> Plan:
    """The checked setup of a `RunRequest` (or its fields) with its checkpoints and test set."""
    request = RunRequest.of(*args, **given)
    return plan_from(prepare(request), request.data_root, request.download)


def report_plan(*args: Any, seeds_as_recorded: bool = False, prefer_store: bool = False, **given: Any) -> Plan:
    """The plan a report is built on (a `RunRequest` or its fields). With every model of the run
    trained here: `plan`, its numbers read from the store (unless they are the checkpoints the
    export beside the report records and the store holds none of the run's cells: then, as in a
    clone, from the export, `_recorded_only`). Otherwise the run's export beside its
    report (records.json, transfer.json) gives the checkpoint hashes, the test set's size and
    fingerprint and the numbers: a committed report rebuilds in a clone that has neither the
    checkpoints nor the store. Without such an export, the checkpoints not here are those the
    store's records (`rbs import`) were computed on (`_stored_plan`). Models not named (and, with
    `seeds_as_recorded`, the seeds) are those the export records, so that `rbs report` rebuilds the
    report as it is. With `prefer_store` (`rbs report --replace`), checkpoints not here whose records
    `rbs import` put in the store come before the export: the parts of a study replace its report."""
    request = RunRequest.of(*args, **given).resolved()
    recorded = read_recorded(run_folder(request))
    if recorded is not None:
        request = replace(request, models=request.models or recorded.models,
                          seeds=recorded.seeds if seeds_as_recorded else request.seeds)
    setup = prepare(request)
    dataset = setup.info.name
    absent = [(spec, seed, status) for seed in setup.seeds for spec in setup.specs
              if spec.family != EXTERNAL and setup.runs(spec, seed) for status in [checkpoint_status(setup.paths, spec, dataset, seed)] if status != "trained"]
    if not absent:
        here = plan_from(setup, request.data_root, request.download)
        if recorded is None or not _recorded_only(here, recorded):
            return here
        seed = setup.seeds[0]  # the same checkpoints as the export's: rebuilt from it, as in a clone
    else:
        spec, seed, status = absent[0]
    if recorded is None or (prefer_store and absent):
        stored = _stored_plan(setup, absent, request.data_root, request.download)
        if stored is not None:
            return stored
    if recorded is None:
        raise UserError(f"{spec.name} (seed {seed}) on {dataset} is {status}: run {_train_first(setup, seed)} (a "
                        f"report is built without its checkpoints only from the records.json beside it, in "
                        f"{setup.folder}, or from records of them that `rbs import` put in the result store)"
                        + (other_seeds(setup) if seeds_as_recorded else ""))
    checkpoints = recorded.records.checkpoints
    lacking = [(s, n) for n in setup.seeds for s in setup.specs
               if s.family != EXTERNAL and setup.runs(s, n) and (s.name, n) not in checkpoints]
    if lacking:
        name, n = lacking[0][0].name, lacking[0][1]
        raise UserError(f"{spec.name} (seed {seed}) on {dataset} is {status} here, and {recorded.records.path} does "
                        f"not record {name} (seed {n}) (it records {', '.join(recorded.models)}, seeds "
                        f"{', '.join(map(str, recorded.seeds))}): run {_train_first(setup, n)}")
    meta = recorded.records.meta
    if setup.suite.test_size is not None and int(meta["test_size"]) != setup.suite.test_size:
        raise UserError(f"suite {setup.suite.name!r} evaluates {setup.suite.test_size} test images, but "
                        f"{recorded.records.path} records {meta['test_size']}: the suite changed since its report "
                        f"was written; run {_train_first(setup, seed)}, then `rbs evaluate`")
    data = _recorded_data(setup, meta, request.data_root, request.download)
    made = Plan(setup, data, {(s.name, n): checkpoints[(s.name, n)] for n in setup.seeds for s in setup.specs
                              if s.family != EXTERNAL and setup.runs(s, n)}, recorded)
    if len(data.test_x) and test_fingerprint(data.test_x[: made.n], data.test_y[: made.n]) != made.fingerprint:
        raise UserError(f"the {dataset} test images here are not those {recorded.records.path} was computed on "
                        "(another split or data file): its report cannot be rebuilt from it here")
    return made


def _recorded_only(plan: Plan, recorded: Recorded) -> bool:
    """Whether the report of `plan`, whose checkpoints are all here, is to be rebuilt from the
    export beside it: each checkpoint is the one the export records (retrained bit for bit, or
    copied) and the store holds none of the run's cells (no `rbs evaluate` here yet)."""
    if plan.setup.external or any(recorded.records.checkpoints.get(k) != sha for k, sha in plan.checkpoints.items()):
        return False
    path = store_path(plan.paths, plan.info.name)
    return not path.exists() or not ResultStore(path).present(c.key for c in plan.cells())


def other_seeds(setup: Setup) -> str:
    """Where no seeds were given: the reports of the same run over other seeds, and how to rebuild one."""
    found = [(folder.name, recorded.seeds) for folder in sorted(setup.folder.parent.glob(f"{setup.folder.name}-seeds*"))
             for recorded in [read_recorded(folder)] if recorded is not None]
    return "".join(f"; {name} holds seeds {','.join(map(str, seeds))}: `--seeds {','.join(map(str, seeds))}` "
                   "rebuilds it" for name, seeds in found)


def _stored_plan(setup: Setup, absent: list[tuple[ModelSpec, int, str]], data_root: Path | str | None,
                 download: bool) -> Plan | None:
    """A report's plan whose checkpoints are not all here but whose records are in the store (a
    study computed in parts on several machines and merged with `rbs import`): each absent
    checkpoint is the one its records in this environment were computed on. None when the store
    holds no record of an absent model; a UserError when it holds records of several checkpoints
    of one (then which one the report is of is not known)."""
    path = store_path(setup.paths, setup.info.name)
    if not path.exists():
        return None
    stored = ResultStore(path).checkpoints(setup.info.name, environment_id())
    for spec, seed, status in absent:
        found = stored.get((spec.name, seed), set())
        if not found or status != "missing":  # a stale or damaged checkpoint here is named as such
            return None
        if len(found) > 1:
            raise UserError(f"{spec.name} (seed {seed}) is not trained here and {path} holds records of "
                            f"{len(found)} of its checkpoints ({', '.join(sorted(h[:12] for h in found))}): "
                            f"train it here ({_train_first(setup, seed)}) so that the report is of one")
    return plan_from(setup, data_root, download, {(spec.name, seed): min(stored[(spec.name, seed)])
                                                  for spec, seed, _ in absent})


def store_has_others(plan: Plan) -> bool:
    """Whether the store holds records (`rbs import`) of checkpoints other than those of `plan`, a
    plan rebuilt from the export beside its report: `rbs report --replace` would build on them."""
    path = store_path(plan.paths, plan.info.name)
    if plan.recorded is None or not path.exists():
        return False
    stored = ResultStore(path).checkpoints(plan.info.name, environment_id())
    return any(stored.get(key, {sha}) != {sha} for key, sha in plan.checkpoints.items())


def _recorded_data(setup: Setup, meta: dict[str, Any], data_root: Path | str | None, download: bool) -> Dataset:
    """The dataset when it is here (then checked against the records' fingerprint), else a stand-in
    without images: rebuilding a report from its records needs no image but MNIST-C's picture."""
    try:
        return load_dataset(setup.info.name, Path(data_root) if data_root else default_data_root(), download)
    except UserError:
        empty = torch.zeros((0, *setup.info.shape))
        labels = torch.zeros(0, dtype=torch.int64)
        return Dataset(setup.info, empty, labels, empty, labels, source="not here", split=str(meta["split"]))


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
    if plan.recorded is not None:
        raise UserError(f"this run's checkpoints are not here (its plan comes from {plan.recorded.records.path}): "
                        "nothing can be evaluated")
    store = store or open_store(plan.paths, plan.info.name)
    with open_executor(executor) as runner:  # one made here ends here; one given stays the caller's
        execute(cells_by_set(cells), store, runner, workspace(plan, cache), desc)
    store.export_jsonl()
    return cell_frame(store, cells, plan)


def cell_frame(store: ResultStore, cells: list[Cell], plan: Plan) -> pd.DataFrame:
    """The stored records of `cells`, in their order, labelled as this run names them (a record
    may have been stored by another suite that names the same evaluation differently)."""
    found = store.records(c.key for c in cells)
    return _labelled([(c, found[c.key]) for c in cells if c.key in found], plan)


def _labelled(found: list[tuple[Cell, dict[str, Any]]], plan: Plan) -> pd.DataFrame:
    rows = [{**record, "evaluation": c.evaluation.name, "param": c.evaluation.param, "batch_size": c.batch_size,
             "source": c.crafted_on[0]} for c, record in found]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.insert(len(frame.columns) - 2, "suite", plan.setup.run_name)
    return frame


# What a record's number is: two records of one key must agree on these (`same_numbers`); its
# accuracy is correct / n.
NUMBER_FIELDS = ("n", "correct", "flags")


def same_numbers(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two records of one key hold the same numbers (their dates, timings, devices and
    labels may differ). A field only one of them has (a legacy export has no flags) is not compared."""
    return all(a.get(name) is None or b.get(name) is None or a[name] == b[name] for name in NUMBER_FIELDS)


def environment_id_of(versions: Mapping[str, str], code: str) -> str:
    """The environment id of an export written before records carried their keys, from the library
    and code versions its metadata records: `cells.environment_id` as it was then (before the
    environment named a compute regime). Exports with keys are read from their keys."""
    env = {**{k: versions[k] for k in NUMBER_LIBRARIES}, "code": code}
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:12]


_KEY_ENV = re.compile(r"\|env=([0-9a-f]+)")


def key_environment(key: str) -> str:
    """The environment id a cell key names (`|env=<id>`)."""
    found = _KEY_ENV.search(key)
    if found is None:
        raise ValueError(f"a cell key names its environment: {key}")
    return found.group(1)


def key_in(cell: Cell, env: str) -> str:
    """The cell's key as the environment `env` (an `environment_id`) keyed it: the key names the
    environment once, as `|env=<id>`."""
    here = f"|env={environment_id()}"
    key = cell.key
    if env == environment_id():
        return key
    if key.count(here) != 1:
        raise AssertionError(f"a cell key names its environment once: {key}")
    return key.replace(here, f"|env={env}")


def _legacy_identity(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return (record["model"], int(record["seed"]), record["source"], record["spec"], record["checkpoint"],
            int(record["n"]), int(record["eval_seed"]), int(record["batch_size"]))


def recorded_frame(plan: Plan, cells: list[Cell], export: Export | None, store: ResultStore) -> pd.DataFrame:
    """The records of `cells` for a plan made from its exports, in the cells' order: keyed as the
    export's environment keyed them, from the export, else from the store (where `rbs import` puts
    records). A key whose numbers differ between the two is refused. A record of an export that
    predates keys is matched by what identifies its cell (model, seed, source, spec, checkpoint,
    test size, seeds and batch size)."""
    env = export.env if export is not None else environment_id()
    keys = [key_in(c, env) for c in cells]
    committed: dict[str, dict[str, Any]] = {}
    if export is not None and export.complete:
        committed = {r["key"]: {k: v for k, v in r.items() if k != "suite"} for r in export.records}
    elif export is not None:
        by_identity = {_legacy_identity(r): r for r in export.records}
        for c, key in zip(cells, keys, strict=True):
            identity = (c.model, c.seed, c.crafted_on[0], c.spec, c.checkpoint, c.n, c.eval_seed, c.batch_size)
            if identity in by_identity:
                committed[key] = {**{k: v for k, v in by_identity[identity].items() if k != "suite"},
                                  "key": None, "flags": None, "versions": None}
    stored = store.records(k for k in keys if k not in committed or not committed[k].get("flags"))
    found = []
    for c, key in zip(cells, keys, strict=True):
        mine, theirs = committed.get(key), stored.get(key)
        if mine is not None and theirs is not None and not same_numbers(mine, theirs):
            raise UserError(f"{c.model} (seed {c.seed}) {c.spec}: {export.path if export else 'the export'} and "
                            f"{store.path} hold different numbers for {key}")
        record = mine if mine is not None and (mine.get("flags") or theirs is None) else theirs
        if record is not None:
            n = int(record["n"])  # an export rounds the accuracy to 10 digits: it is correct / n
            found.append((c, {**record, "accuracy": int(record["correct"]) / n if n else float("nan")}))
    return _labelled(found, plan)


def run(
    plan: Plan, store: ResultStore | None = None, cache: ArtifactStore | None = None, executor: Executor | str = "local"
) -> pd.DataFrame:
    """Run every cell of the plan not already in the store; return the plan's records."""
    return run_cells(plan, plan.cells(), store, cache, executor)


def export_doc(frame: pd.DataFrame, plan: Plan, stem: str) -> dict[str, Any]:
    """The run's export `stem`.json (the run's metadata and its records, whole: keys and per-image
    flags, so that a report rebuilds from it and `rbs import` merges it). The export already beside
    the report is kept as it is, its date too, when its records are the same and so is its
    metadata but for the date: a report rebuilt from unchanged numbers is unchanged."""
    old = read_export(plan.folder / f"{stem}.json")
    records = json.loads(frame.to_json(orient="records"))
    if plan.recorded is not None:  # the numbers of the export's environment, not of this one's
        base = old or plan.recorded.records
        meta = dict(base.meta)
    else:
        meta = run_metadata(plan)
    if not frame.empty:  # where the numbers were computed (a report itself runs on the CPU)
        meta["device"] = ", ".join(sorted(set(frame["device"])))
    def undated(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if k != "date"}

    if old is not None and _same_records(old.records, records) and (
            plan.recorded is not None or undated(old.meta) == undated(meta)):
        return {"meta": old.meta, "records": old.records}
    meta["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {"meta": meta, "records": records}


def _same_records(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> bool:
    """Whether an export's records are `new`; a field the old export lacks (keys and flags, before
    exports carried them) counts only where the new record has a value for it."""
    if len(old) != len(new):
        return False
    for o, n in zip(old, new, strict=True):
        if any(v is not None for k, v in n.items() if k not in o) or {k: n.get(k) for k in o} != o:
            return False
    return True


def write_export(doc: dict[str, Any], frame: pd.DataFrame, plan: Plan, stem: str) -> tuple[Path, Path]:
    """`stem`.json (`export_doc`) and `stem`.csv (the records as a table, without keys and flags)
    beside the report; files whose content is unchanged are not touched."""
    csv_path, json_path = plan.folder / f"{stem}.csv", plan.folder / f"{stem}.json"
    text = json.dumps(doc, indent=1) + "\n"
    unchanged = json_path.exists() and json_path.read_text(encoding="utf-8") == text
    if not unchanged:
        atomic_write_text(json_path, text)
    if not unchanged or not csv_path.exists():
        atomic_write_text(csv_path, frame.drop(columns=["flags", "key", "versions"]).to_csv(index=False))
    return csv_path, json_path


def export(frame: pd.DataFrame, plan: Plan, stem: str) -> tuple[Path, Path]:
    """CSV and JSON (records plus the run's metadata) under reports/<dataset>/<suite>[@backend]/.
    `build_report` writes them with the report; evaluating alone writes none."""
    return write_export(export_doc(frame, plan, stem), frame, plan, stem)


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
        "regime": compute_regime(),
        "notes": list(plan.setup.notes),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def evaluate(*args: Any, **given: Any) -> pd.DataFrame:
    """Run a suite against trained zoo models (a `RunRequest` or its fields); the long-form records
    as a DataFrame.

    Finished cells are reused. The records go to the store only: the export beside the run's report
    (reports/<dataset>/<run>/records.{csv,json}) is written with the report (`build_report`).
    """
    request = RunRequest.of(*args, **given)
    the_plan = plan(request)
    with request.open_executor() as runner:
        return run(the_plan, executor=runner)
