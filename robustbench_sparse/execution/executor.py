"""Executors: where jobs run. A job crafts one perturbed set and scores it on its cells' models.

The two task kinds, `perturbed_set` (craft: model, evaluation, strength -> inputs) and `score`
(model, inputs -> per-image correctness), cover white-box evaluation, noise and transfer alike.
A `Workspace` gives a worker what it needs (models by name and seed, the test set, the device,
the adversarial-set cache). The local executor (`execution.local`) runs jobs in a pool of worker
processes; an executor for another engine is one new module registered in `execution.registry`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from robustbench_sparse.data.datasets import Dataset, DatasetInfo
from robustbench_sparse.evaluation.cells import Cell, Job
from robustbench_sparse.evaluation.kinds import ACCURACY, kind_of, perturb
from robustbench_sparse.evaluation.suites import Evaluation
from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.perturb.attacks import craft_batches
from robustbench_sparse.runtime import eval_mode, stable_seed
from robustbench_sparse.zoo.checkpoints import model_from_bytes
from robustbench_sparse.zoo.spec import ModelSpec


def image_seeds(eval_seed: int, spec: str, start: int, count: int) -> list[int]:
    """One seed per test image (by its index in the test set): draws never depend on batching."""
    return [stable_seed(eval_seed, spec, "image", i) for i in range(start, start + count)]


def batch_seed(eval_seed: int, spec: str, first: int, batch_size: int) -> int:
    """The seed of the batch that starts at test image `first`, for libraries that draw per batch."""
    return stable_seed(eval_seed, spec, first // batch_size)


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
    offset: int = 0,
    previous: torch.Tensor | None = None,
    survivors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Craft: the perturbed test set (on the CPU), the model in eval mode. Noise is drawn per image;
    attacks that draw per batch get a seed per batch. `x` may be a slice of the test set that
    starts at image `offset` (a multiple of the batch size): the slices of a set crafted apart
    join into the set crafted whole, bit for bit.

    A pruned sweep (`evaluation.pruned`, eps > 0) starts from `previous`, the set at the sweep's
    next smaller eps (None: x itself, the eps = 0 ball): an image the model already misclassifies
    there keeps that example, which lies in this eps-ball too (L-inf balls nest); only the others
    are attacked. So the accuracy at eps counts the images no eps' <= eps fooled. `survivors`: the
    model's per-image correctness on `previous` where it is already known (scored), else computed."""
    if offset % batch_size:
        raise ValueError(f"offset {offset} is not a multiple of the batch size {batch_size}")
    params = evaluation.params_at(strength)
    spec = evaluation.draw_spec(strength)  # the same draws with and without early stopping or pruning
    pruned = bool(evaluation.chain(strength))
    if kind_of(evaluation.kind).adversarial:
        # All batches in one call: our loop steps the images still attacked in every batch
        # together (each image exactly as on its own batch, with its batch's seed).
        xs, ys = x.to(device), y.to(device)
        seeds = [batch_seed(eval_seed, spec, offset + first, batch_size) for first in range(0, len(x), batch_size)]
        per_image = image_seeds(eval_seed, spec, offset, len(x))
        if not pruned:
            return craft_batches(model, evaluation.kind, params, xs, ys, seeds, per_image, batch_size).cpu()
        before = xs if previous is None else previous.to(device)
        if survivors is not None:
            survivors = survivors.to(device)
        else:
            with torch.no_grad():
                survivors = torch.cat([model(before[first : first + batch_size]).argmax(dim=1) == ys[first : first + batch_size]
                                       for first in range(0, len(x), batch_size)]) if len(x) else ys.bool()
        adv = craft_batches(model, evaluation.kind, params, xs, ys, seeds, per_image, batch_size, todo=survivors)
        return torch.where(survivors.view(-1, *[1] * (xs.dim() - 1)), adv, before).cpu()
    parts = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        parts.append(perturb(evaluation.kind, params, model, xb, yb, info, image_seeds(eval_seed, spec, offset + start, len(xb))).cpu())
    return torch.cat(parts) if parts else x[:0].clone()


def crafted_set(cell: Cell, source: nn.Module, ws: Workspace) -> torch.Tensor:
    """The cell's adversarial set, read from the cache or crafted on `source` (in eval mode) and
    cached. A pruned sweep's set starts from the set at the next smaller eps, itself read or
    crafted (and cached) the same way, so a sweep run in increasing eps crafts each set once."""

    def make() -> torch.Tensor:
        previous, survivors = None, None
        if cell.previous is not None:
            previous = crafted_set(cell.previous, source, ws)
            survivors = ws.scored_on_source.get(cell.previous.set_key)
        return perturbed_set(source, cell.evaluation, cell.strength, ws.x, ws.y, ws.info, ws.device,
                             cell.eval_seed, cell.batch_size, previous=previous, survivors=survivors)

    return ws.cache.get(cell.set_key, make)[0]


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
    """Per-sample correctness of `model` (in eval mode) under one evaluation at one strength (a
    pruned sweep's sets at smaller eps crafted on the way, as the harness does). For a measurement
    kind (a metric other than accuracy, e.g. `gradients`): its per-sample flag (`Kind.measure`)."""
    kind = kind_of(evaluation.kind)
    if kind.measure is not None:
        seeds = image_seeds(eval_seed, evaluation.draw_spec(strength), 0, len(x))
        return kind.measure(model, x, y, evaluation.params_at(strength), device=device, batch_size=batch_size,
                            image_seeds=seeds)
    previous = None
    for smaller in evaluation.chain(strength)[:-1]:  # a pruned sweep: the sets at smaller eps first
        previous = perturbed_set(model, evaluation, smaller, x, y, info, device, eval_seed, batch_size,
                                 previous=previous)
    inputs = perturbed_set(model, evaluation, strength, x, y, info, device, eval_seed, batch_size, previous=previous)
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
    """What a worker needs to run jobs. Models are built once per process and kept."""

    info: DatasetInfo
    x: torch.Tensor  # the fixed test images
    y: torch.Tensor
    device: torch.device
    # (model name, seed) -> its spec and its checkpoint file's bytes, hash checked
    checkpoint: Callable[[str, int], tuple[ModelSpec, bytes]]
    cache: ArtifactStore
    ensemble: tuple[str, ...] = ()
    _models: dict[tuple[str, int], nn.Module] = field(default_factory=dict)
    # set key -> per-image correctness of the model the set was crafted on (its white-box cell's
    # flags): a pruned sweep's next set attacks the images still correct without scoring again
    scored_on_source: dict[str, torch.Tensor] = field(default_factory=dict)

    def model(self, name: str, seed: int) -> nn.Module:
        if (name, seed) not in self._models:
            if name == ENSEMBLE:
                self._models[(name, seed)] = Ensemble([self.model(m, seed) for m in self.ensemble])
            else:
                spec, data = self.checkpoint(name, seed)
                self._models[(name, seed)] = model_from_bytes(spec, self.info, data, self.device, seed=seed)
        return self._models[(name, seed)]


@dataclass(frozen=True)
class Outcome:
    """A job's results: per cell, its per-image flags and the seconds it took."""

    job: Job
    flags: tuple[torch.Tensor, ...]
    seconds: tuple[float, ...]


def run_job(job: Job, ws: Workspace) -> Outcome:
    """Craft the job's set once (or read it from the cache), then score every cell on it."""
    first = job.cells[0]
    evaluation, strength = first.evaluation, first.strength
    started = time.perf_counter()
    source = ws.model(first.crafted_on[0], first.seed)
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(source))
        if kind_of(evaluation.kind).metric != ACCURACY:
            # A measurement of the model itself (one cell per job: its set key names the model).
            flags = correct_flags(source, evaluation, strength, ws.x, ws.y, ws.info, ws.device, first.eval_seed,
                                  first.batch_size)
            return Outcome(job, (flags,), (time.perf_counter() - started,))
        if job.crafts:
            inputs = crafted_set(first, source, ws)
        else:
            inputs = perturbed_set(source, evaluation, strength, ws.x, ws.y, ws.info, ws.device,
                                   first.eval_seed, first.batch_size)
        craft_seconds = time.perf_counter() - started
        flags_list, seconds = [], []
        for cell in job.cells:
            t0 = time.perf_counter()
            target = stack.enter_context(eval_mode(ws.model(cell.model, cell.seed)))
            flags_list.append(score(target, inputs, ws.y, ws.device, cell.batch_size))
            own = cell.crafted_on[0] == cell.model
            if own and job.crafts:
                ws.scored_on_source[cell.set_key] = flags_list[-1]
            seconds.append(time.perf_counter() - t0 + (craft_seconds if own else 0.0))
    return Outcome(job, tuple(flags_list), tuple(seconds))


TrainTask = tuple[ModelSpec, int]  # (model, seed)


class Executor(Protocol):
    """Where work runs. `map` yields the outcomes of jobs as they finish (in any order); `jobs` is
    consumed lazily, because the driver leases each job as it hands it over. `train` yields
    (spec, seed, trained model, seconds) for each task, each computed in the CPU regime
    (`runtime.regime_block`), so records and weights are bit for bit the same on every executor."""

    def map(self, jobs: Iterable[Job], ws: Workspace) -> Iterator[Outcome]: ...

    def train(self, tasks: list[TrainTask], data: Dataset, device: torch.device) -> Iterator[
        tuple[ModelSpec, int, nn.Module, float]]: ...

    def close(self) -> None: ...


def cells_by_set(cells: Iterable[Cell]) -> list[Job]:
    """Group cells that share one perturbed set into jobs (first-seen order)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.set_key, []).append(cell)
    return [Job(tuple(group)) for group in groups.values()]
