"""Executors: where jobs run. A job crafts one perturbed set and scores it on its cells' models.

The two task kinds, `perturbed_set` (craft: model, evaluation, strength -> inputs) and `score`
(model, inputs -> per-image correctness), cover white-box evaluation, noise and transfer alike.
A `Workspace` gives a worker what it needs (models by name and seed, the test set, the device,
the adversarial-set cache). The local executor runs jobs one after another in this process; an
executor for another engine is one new module registered in `EXECUTORS`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from robustbench_sparse.attacks import live_gradients
from robustbench_sparse.cells import Cell, Job
from robustbench_sparse.data import DatasetInfo
from robustbench_sparse.evaluations import ACCURACY, kind_of, perturb
from robustbench_sparse.runtime import UserError, eval_mode, stable_seed
from robustbench_sparse.store import ArtifactStore
from robustbench_sparse.suites import Evaluation


def image_seeds(eval_seed: int, spec: str, start: int, count: int) -> list[int]:
    """One seed per test image (by its index in the test set): draws never depend on batching."""
    return [stable_seed(eval_seed, spec, "image", i) for i in range(start, start + count)]


def perturbed_set(
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
    """Craft: the whole perturbed test set (on the CPU), the model in eval mode. Noise is drawn per
    image; attacks that draw per batch get a seed per batch."""
    params = evaluation.params_at(strength)
    spec = evaluation.spec(strength)
    parts = []
    for i, start in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        seeds = image_seeds(eval_seed, spec, start, len(xb))
        parts.append(perturb(evaluation.kind, params, model, xb, yb, info, seeds, stable_seed(eval_seed, spec, i)).cpu())
    return torch.cat(parts) if parts else x[:0].clone()


def score(model: nn.Module, inputs: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Per-sample correctness of `model` on fixed inputs."""
    flags = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            xb = inputs[start : start + batch_size].to(device)
            flags.append(model(xb).argmax(1).cpu() == y[start : start + batch_size])
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


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
    For a metric other than accuracy (`gradients`): per sample, whether the input gradient is
    usable (non-zero, finite)."""
    if evaluation.kind == "gradients":
        zero, nonfinite = live_gradients(model, x, y, device, batch_size)
        return ~(zero | nonfinite)
    inputs = perturbed_set(model, evaluation, strength, x, y, info, device, eval_seed, batch_size)
    return score(model, inputs, y, device, batch_size)


class Ensemble(nn.Module):
    """Mean logits of several models: a single source to attack."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


ENSEMBLE = "ensemble"


@dataclass
class Workspace:
    """What a worker needs to run jobs. Models are loaded once per process and kept."""

    info: DatasetInfo
    x: torch.Tensor  # the fixed test images
    y: torch.Tensor
    device: torch.device
    load: Callable[[str, int], nn.Module]  # (model name, seed) -> the trained model
    cache: ArtifactStore
    ensemble: tuple[str, ...] = ()
    _models: dict[tuple[str, int], nn.Module] = field(default_factory=dict)

    def model(self, name: str, seed: int) -> nn.Module:
        if (name, seed) not in self._models:
            if name == ENSEMBLE:
                self._models[(name, seed)] = Ensemble([self.model(m, seed) for m in self.ensemble])
            else:
                self._models[(name, seed)] = self.load(name, seed)
        return self._models[(name, seed)]


@dataclass(frozen=True)
class Outcome:
    """A job's results: per cell, its per-image flags and the seconds it took."""

    job: Job
    flags: tuple[torch.Tensor, ...]
    seconds: tuple[float, ...]
    crafted: bool  # False when the perturbed set came from the cache


def run_job(job: Job, ws: Workspace) -> Outcome:
    """Craft the job's set once (or read it from the cache), then score every cell on it."""
    first = job.cells[0]
    evaluation, strength = first.evaluation, first.strength
    started = time.perf_counter()
    source = ws.model(first.crafted_on[0] if first.source else first.model, first.seed)
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(source))
        if kind_of(evaluation.kind).metric != ACCURACY:
            # A measurement of the model itself (one cell per job: its set key names the model).
            flags = correct_flags(source, evaluation, strength, ws.x, ws.y, ws.info, ws.device, first.eval_seed,
                                  first.batch_size)
            return Outcome(job, (flags,), (time.perf_counter() - started,), True)
        if job.crafts:
            inputs, crafted = ws.cache.get(first.set_key, lambda: perturbed_set(
                source, evaluation, strength, ws.x, ws.y, ws.info, ws.device, first.eval_seed, first.batch_size))
        else:
            inputs, crafted = perturbed_set(source, evaluation, strength, ws.x, ws.y, ws.info, ws.device,
                                            first.eval_seed, first.batch_size), True
        craft_seconds = time.perf_counter() - started
        flags_list, seconds = [], []
        for cell in job.cells:
            t0 = time.perf_counter()
            target = stack.enter_context(eval_mode(ws.model(cell.model, cell.seed)))
            flags_list.append(score(target, inputs, ws.y, ws.device, cell.batch_size))
            own = cell.crafted_on[0] == cell.model
            seconds.append(time.perf_counter() - t0 + (craft_seconds if own else 0.0))
    return Outcome(job, tuple(flags_list), tuple(seconds), crafted)


class Executor(Protocol):
    """Runs jobs and yields their outcomes as they finish (in any order). `jobs` is consumed
    lazily: the driver leases each job as it hands it over."""

    def map(self, jobs: Iterable[Job], ws: Workspace) -> Iterator[Outcome]: ...


class LocalExecutor:
    """Every job in this process, one after another, in the order given."""

    def map(self, jobs: Iterable[Job], ws: Workspace) -> Iterator[Outcome]:
        for job in jobs:
            yield run_job(job, ws)


EXECUTORS: dict[str, Callable[[], Executor]] = {"local": LocalExecutor}


def make_executor(name: str) -> Executor:
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")
    return EXECUTORS[name]()


def cells_by_set(cells: Iterable[Cell]) -> list[Job]:
    """Group cells that share one perturbed set into jobs (first-seen order)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.set_key, []).append(cell)
    return [Job(tuple(group)) for group in groups.values()]
