"""Training the zoo: every (spec, seed) without an up-to-date checkpoint, on an executor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from robustbench_sparse.data.datasets import Dataset
from robustbench_sparse.execution.registry import open_executor
from robustbench_sparse.runtime import Paths, progress_disabled
from robustbench_sparse.training.train import TrainOutcome, clean_accuracy, validation_accuracy
from robustbench_sparse.zoo.checkpoints import checkpoint_status, read_manifest, save_checkpoint
from robustbench_sparse.zoo.spec import ModelSpec


def train_zoo(
    paths: Paths,
    specs: list[ModelSpec],
    dataset: str,
    load_data: Callable[[], Dataset],
    seeds: list[int],
    device: torch.device,
    force: bool = False,
    executor: Any = None,
    runs: Callable[[ModelSpec, int], bool] | None = None,
) -> list[TrainOutcome]:
    """Train every (spec, seed) that has no up-to-date checkpoint (all of them with `force`), on
    `executor` (an executor, or a registered name; default: this process). Checkpoints are written here, by the caller's process.
    `runs`: which (spec, seed) pairs are wanted (default: all; a suite may run a model on fewer seeds).

    `load_data` is called at most once, and only if something needs training."""
    outcomes: dict[tuple[str, int], TrainOutcome] = {}
    todo, statuses = [], {}
    for seed in seeds:
        for spec in specs:
            if runs is not None and not runs(spec, seed):
                continue
            status = checkpoint_status(paths, spec, dataset, seed)
            if status == "trained" and not force:
                manifest = read_manifest(paths, dataset, spec.name, seed)
                assert manifest is not None
                outcomes[(spec.name, seed)] = TrainOutcome(spec.name, seed, "cached", manifest)
            else:
                todo.append((spec, seed))
                statuses[(spec.name, seed)] = status
    if todo:
        data = load_data()
        bar = tqdm(total=len(todo), desc="models", disable=progress_disabled())
        with open_executor(executor or "local") as runner:
            for spec, seed, model, seconds in runner.train(todo, data, device):
                manifest = save_checkpoint(
                    paths, spec, dataset, seed, model, clean_accuracy(model, data, device),
                    len(data.test_x), seconds, str(device), validation_accuracy(model, data, device),
                )
                action = {
                    "trained": "retrained (--force)",
                    "stale": "retrained (settings changed)",
                    "corrupt": "retrained (checkpoint corrupt)",
                }.get(statuses[(spec.name, seed)], "trained")
                outcomes[(spec.name, seed)] = TrainOutcome(spec.name, seed, action, manifest)
                bar.update()
        bar.close()
    return [outcomes[(spec.name, seed)] for seed in seeds for spec in specs if (spec.name, seed) in outcomes]
