"""The evaluation harness: independent cells, results written durably as they finish.

A cell is one (model, seed, evaluation, strength) on a fixed set of test images. Its key holds
everything its number depends on (dataset, checkpoint hash, canonical spec string, test size,
evaluation seed, batch size), so a finished cell is never computed twice: a run that is stopped
keeps every finished cell, and the same command resumes. Cells do not depend on each other, so
they can be shared out across processes or machines that append to the same store.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from robustbench_sparse.attacks import live_gradients
from robustbench_sparse.checkpoints import checkpoint_status, load_checkpoint, read_manifest
from robustbench_sparse.data import Dataset, DatasetInfo, default_data_root, load_dataset
from robustbench_sparse.evaluations import kind_of, perturb
from robustbench_sparse.runtime import (
    Paths,
    UserError,
    atomic_write_bytes,
    eval_mode,
    generator,
    library_versions,
    progress_enabled,
    resolve_device,
    stable_seed,
)
from robustbench_sparse.suites import Evaluation, Suite, load_suite
from robustbench_sparse.zoo import ModelSpec, load_zoo, select_models

COLUMNS = [
    "model", "dataset", "seed", "evaluation", "kind", "param", "strength", "n", "correct", "accuracy",
    "source", "spec", "checkpoint", "eval_seed", "batch_size", "device", "seconds", "date", "versions",
    "flags", "key",
]


@dataclass(frozen=True)
class Cell:
    dataset: str
    model: str
    seed: int
    checkpoint: str  # SHA-256 of the weights evaluated
    evaluation: Evaluation
    strength: float
    n: int
    eval_seed: int
    batch_size: int
    source: str = ""  # the model the perturbation was crafted on, when it is not `model`
    source_checkpoint: str = ""  # its checkpoint hash (or an ensemble's combined hash)

    @property
    def spec(self) -> str:
        return self.evaluation.spec(self.strength)

    @property
    def key(self) -> str:
        src = ""
        if self.source and self.source != self.model:
            src = f"|from={self.source}@{self.source_checkpoint[:16]}"
        return (
            f"{self.dataset}|{self.model}|seed={self.seed}|ckpt={self.checkpoint[:16]}|{self.spec}"
            f"|n={self.n}|evalseed={self.eval_seed}|bs={self.batch_size}{src}"
        )


def encode_flags(correct: torch.Tensor) -> str:
    """Per-sample correctness, packed to bits and base64: enough for worst cases over attacks."""
    return base64.b64encode(np.packbits(correct.numpy().astype(np.uint8)).tobytes()).decode()


def decode_flags(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


class ResultStore:
    """Append-only JSON-lines file of finished cells; one line per cell, flushed and synced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that cell simply runs again
                self.records[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["key"]] = record

    def frame(self, keys: Iterable[str]) -> pd.DataFrame:
        rows = [self.records[k] for k in keys if k in self.records]
        return pd.DataFrame(rows, columns=COLUMNS)


def store_path(paths: Paths, dataset: str) -> Path:
    return paths.reports(dataset) / "results.jsonl"


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    for i, start in enumerate(range(0, len(x), size)):
        yield i, x[start : start + size], y[start : start + size]


def _perturbed(
    model: nn.Module,
    evaluation: Evaluation,
    strength: float,
    x: torch.Tensor,
    y: torch.Tensor,
    info: DatasetInfo,
    device: torch.device,
    eval_seed: int,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(perturbed batch, labels) on `device`; every draw seeded from the cell's spec and batch."""
    params = evaluation.params_at(strength)
    spec = evaluation.spec(strength)
    noise = generator(stable_seed(eval_seed, spec))  # CPU: the same draws on every device
    for i, xb, yb in _batches(x, y, batch_size):
        xb, yb = xb.to(device), yb.to(device)
        yield perturb(evaluation.kind, params, model, xb, yb, info, noise, stable_seed(eval_seed, spec, i)), yb


def correct_flags(
    model: nn.Module,
    evaluation: Evaluation,
    strength: float,
    x: torch.Tensor,
    y: torch.Tensor,
    info: DatasetInfo,
    device: torch.device,
    eval_seed: int,
    batch_size: int,
) -> torch.Tensor:
    """Per-sample correctness of `model` (in eval mode) under one evaluation at one strength.
    For the `gradients` kind: per sample, whether the input gradient is usable (non-zero, finite)."""
    if evaluation.kind == "gradients":
        zero, nonfinite = live_gradients(model, x, y, device, batch_size)
        return ~(zero | nonfinite)
    flags = []
    for xp, yb in _perturbed(model, evaluation, strength, x, y, info, device, eval_seed, batch_size):
        with torch.inference_mode():
            flags.append((model(xp).argmax(1) == yb).cpu())
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def craft_set(
    model: nn.Module,
    evaluation: Evaluation,
    strength: float,
    x: torch.Tensor,
    y: torch.Tensor,
    info: DatasetInfo,
    device: torch.device,
    eval_seed: int,
    batch_size: int,
) -> torch.Tensor:
    """The whole perturbed test set (on the CPU), batch for batch what `correct_flags` evaluates."""
    parts = [xp.cpu() for xp, _ in _perturbed(model, evaluation, strength, x, y, info, device, eval_seed, batch_size)]
    return torch.cat(parts) if parts else x[:0].clone()


def flags_on(model: nn.Module, inputs: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Per-sample correctness of `model` on fixed inputs (e.g. a cached adversarial set)."""
    flags = []
    with torch.inference_mode():
        for _, xb, yb in _batches(inputs, y, batch_size):
            flags.append(model(xb.to(device)).argmax(1).cpu() == yb)
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


class AdversarialCache:
    """Adversarial test sets on disk, keyed by the source's checkpoint hash and the cell's spec,
    so each set is crafted once and reused by white-box and transfer evaluations alike."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, source_checkpoint: str, cell: Cell) -> Path:
        what = f"{cell.spec}|n={cell.n}|evalseed={cell.eval_seed}|bs={cell.batch_size}"
        return self.folder / source_checkpoint[:16] / f"{hashlib.sha256(what.encode()).hexdigest()[:24]}.pt"

    def get(self, source_checkpoint: str, cell: Cell, craft: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = self.path(source_checkpoint, cell)
        if path.exists():
            try:
                return torch.load(path, weights_only=True)
            except (RuntimeError, EOFError, OSError):
                path.unlink()  # a damaged cache file is rebuilt, never trusted
        adv = craft()
        buffer = io.BytesIO()
        torch.save(adv, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return adv


def adversarial_cache(paths: Paths, dataset: str) -> AdversarialCache:
    return AdversarialCache(paths.cache / "adversarial" / dataset)


def make_record(cell: Cell, flags: torch.Tensor, seconds: float, device: torch.device) -> dict[str, Any]:
    versions = library_versions()
    return {
        "model": cell.model,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "evaluation": cell.evaluation.name,
        "kind": cell.evaluation.kind,
        "param": cell.evaluation.param,
        "strength": cell.strength,
        "n": cell.n,
        "correct": int(flags.sum()),
        "accuracy": int(flags.sum()) / cell.n if cell.n else float("nan"),
        "source": cell.source or cell.model,
        "spec": cell.spec,
        "checkpoint": cell.checkpoint,
        "eval_seed": cell.eval_seed,
        "batch_size": cell.batch_size,
        "device": str(device),
        "seconds": round(seconds, 3),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": json.dumps({k: versions[k] for k in ("torch", "torchattacks", "foolbox", "robustbench-sparse")}),
        "flags": encode_flags(flags),
        "key": cell.key,
    }


def with_backend(suite: Suite, backend: str | None) -> Suite:
    """The suite with its attacks run through `backend` where that backend has the attack."""
    if backend is None:
        return suite
    from dataclasses import replace

    from robustbench_sparse.attacks import BACKENDS, FOOLBOX_ATTACKS

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    evaluations = []
    for e in suite.evaluations:
        params = dict(e.params)
        foolbox_can = e.kind in FOOLBOX_ATTACKS and params.get("loss", "ce") == "ce"
        if "backend" in params and (backend == "torchattacks" or foolbox_can):
            params["backend"] = backend
        evaluations.append(replace(e, params=tuple(sorted(params.items()))))
    return replace(suite, evaluations=tuple(evaluations))


@dataclass(frozen=True)
class Plan:
    """What an evaluation run will do, all checked before any work starts."""

    paths: Paths
    suite: Suite
    specs: list[ModelSpec]
    seeds: list[int]
    data: Dataset
    device: torch.device
    checkpoints: dict[tuple[str, int], str]

    @property
    def n(self) -> int:
        size = len(self.data.test_x)
        return size if self.suite.test_size is None else min(self.suite.test_size, size)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed test images: the first n of the seeded split."""
        return self.data.test_x[: self.n], self.data.test_y[: self.n]

    def cells(self) -> list[Cell]:
        return [
            Cell(
                self.data.info.name, spec.name, seed, self.checkpoints[(spec.name, seed)], evaluation, strength,
                self.n, self.suite.seed, self.suite.batch_size,
            )
            for seed in self.seeds
            for spec in self.specs
            for evaluation in self.suite.evaluations
            for strength in evaluation.strengths
        ]


def plan(
    dataset: str = "mnist5k",
    suite: str = "standard",
    models: list[str] | None = None,
    seeds: Iterable[int] = (0,),
    device: str = "auto",
    backend: str | None = None,
    home: Path | str | None = None,
    data_root: Path | str | None = None,
    download: bool = False,
) -> Plan:
    paths = Paths(Path(home)) if home else Paths.default()
    from robustbench_sparse.data import dataset_info

    info = dataset_info(dataset)
    the_suite = with_backend(load_suite(paths, suite, info), backend)
    specs = select_models(load_zoo(paths.zoo_spec), dataset, models)
    seeds = list(seeds)
    dev = resolve_device(device)
    checkpoints = {}
    for seed in seeds:
        for spec in specs:
            status = checkpoint_status(paths, spec, dataset, seed)
            if status != "trained":
                raise UserError(
                    f"{spec.name} (seed {seed}) on {dataset} is {status}: run "
                    f"`rbs train --dataset {dataset} --seeds {seed}` first (or `rbs benchmark`)"
                )
            manifest = read_manifest(paths, dataset, spec.name, seed)
            assert manifest is not None
            checkpoints[(spec.name, seed)] = manifest.sha256
    data = load_dataset(dataset, Path(data_root) if data_root else default_data_root(), download)
    return Plan(paths, the_suite, specs, seeds, data, dev, checkpoints)


def run(plan: Plan, store: ResultStore | None = None, cache: AdversarialCache | None = None) -> pd.DataFrame:
    """Run every cell of the plan not already in the store; return the plan's records."""
    store = store or ResultStore(store_path(plan.paths, plan.data.info.name))
    cache = cache or adversarial_cache(plan.paths, plan.data.info.name)
    cells = plan.cells()
    todo = [c for c in cells if c.key not in store]
    x, y = plan.test_set()
    bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=progress_enabled())
    specs = {s.name: s for s in plan.specs}
    for (model_name, seed), group in _by_model(todo).items():
        model, _ = load_checkpoint(plan.paths, specs[model_name], plan.data.info, seed, plan.device)
        with eval_mode(model):
            for cell in group:
                bar.set_postfix_str(f"{model_name} {cell.spec}"[:60])
                started = time.perf_counter()
                args = (cell.evaluation, cell.strength, x, y, plan.data.info, plan.device, cell.eval_seed,
                        cell.batch_size)
                if kind_of(cell.evaluation.kind).adversarial and cell.strength > 0:
                    adv = cache.get(cell.checkpoint, cell, lambda: craft_set(model, *args))  # noqa: B023
                    flags = flags_on(model, adv, y, plan.device, cell.batch_size)
                else:
                    flags = correct_flags(model, *args)
                store.add(make_record(cell, flags, time.perf_counter() - started, plan.device))
                bar.update()
    bar.close()
    frame = store.frame(c.key for c in cells)
    frame.insert(len(frame.columns) - 2, "suite", plan.suite.name)
    return frame


def _by_model(cells: list[Cell]) -> dict[tuple[str, int], list[Cell]]:
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.seed), []).append(cell)
    return groups


def suite_folder(plan: Plan) -> Path:
    return plan.paths.reports(plan.data.info.name) / plan.suite.name


def export(frame: pd.DataFrame, plan: Plan, stem: str) -> tuple[Path, Path]:
    """CSV and JSON (records plus the run's metadata) under reports/<dataset>/<suite>/."""
    folder = suite_folder(plan)
    folder.mkdir(parents=True, exist_ok=True)
    table = frame.drop(columns=["flags", "key", "versions"])
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    table.to_csv(csv_path, index=False)
    doc = {"meta": run_metadata(plan), "records": json.loads(table.to_json(orient="records"))}
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    return csv_path, json_path


def run_metadata(plan: Plan) -> dict[str, Any]:
    return {
        "suite": plan.suite.name,
        "suite_file": plan.suite.source,
        "dataset": plan.data.info.name,
        "split": plan.data.split,
        "test_size": plan.n,
        "eval_seed": plan.suite.seed,
        "seeds": plan.seeds,
        "device": str(plan.device),
        "checkpoints": {f"{m}/seed{s}": h for (m, s), h in plan.checkpoints.items()},
        "versions": library_versions(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def evaluate(
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
    """Run a suite against trained zoo models; the long-form records as a DataFrame.

    Finished cells are reused; results are also exported to reports/<dataset>/<suite>/records.{csv,json}.
    """
    the_plan = plan(dataset, suite, models, seeds, device, backend, home, data_root, download)
    frame = run(the_plan)
    export(frame, the_plan, "records")
    return frame
