"""Training the zoo once: the paper's recipe, cached checkpoints, nothing retrained needlessly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from robustbench_sparse.data.datasets import Dataset
from robustbench_sparse.runtime import (
    eval_mode,
    generator,
    progress_disabled,
    seed_everything,
)
from robustbench_sparse.zoo.checkpoints import (
    Manifest,
)
from robustbench_sparse.zoo.sparse import rezero_weights, update_boost_strength
from robustbench_sparse.zoo.spec import ModelSpec, build_model


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels (on the CPU) for pixel inputs, in eval mode."""
    with eval_mode(model):
        preds = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: nn.Module, data: Dataset, device: torch.device) -> float:
    return (predict(model, data.test_x, device) == data.test_y).float().mean().item()


def validation_accuracy(model: nn.Module, data: Dataset, device: torch.device) -> float | None:
    """Accuracy on the dataset's validation split (None where it has none): the number to choose
    recipes by."""
    if not len(data.val_y):
        return None
    return (predict(model, data.val_x, device) == data.val_y).float().mean().item()


def train_model(spec: ModelSpec, data: Dataset, seed: int, device: torch.device) -> nn.Module:
    """SGD with the learning rate x lr_gamma after each epoch; the first epoch may use a smaller
    batch (lets k-winner duty cycles settle); sparse weights re-zeroed after every step; boost
    strength decayed after every epoch. Same seed, same weights (on one device type)."""
    seed_everything(seed)
    model = build_model(spec, data.info).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=spec.lr_gamma)
    shuffle = generator(seed)
    n = len(data.train_x)
    model.train()
    for epoch in tqdm(range(spec.epochs), desc=f"{spec.name} epochs", leave=False, disable=progress_disabled()):
        batch = spec.first_epoch_batch_size if epoch == 0 else spec.batch_size
        order = torch.randperm(n, generator=shuffle)
        bar = tqdm(range(0, n, batch), desc=f"epoch {epoch + 1}", leave=False, disable=progress_disabled())
        for start in bar:
            idx = order[start : start + batch]
            x, y = data.train_x[idx].to(device), data.train_y[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            rezero_weights(model)
        schedule.step()
        update_boost_strength(model)
    return model.eval()


@dataclass(frozen=True)
class TrainOutcome:
    model: str
    seed: int
    action: str  # "trained", "retrained (settings changed)", "cached", ...
    manifest: Manifest
