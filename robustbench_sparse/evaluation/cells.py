"""Cells: pure, serialisable descriptions of units of work, and the keys that identify their numbers.

A cell is one (model, seed, evaluation, strength) on a fixed set of test images, possibly with the
perturbation crafted on another model (`source`). It holds names, hashes and the canonical spec
string; no tensors, no device, so it can be sent to any worker. Its key changes exactly when
something its number depends on changes:

- the checkpoint's SHA-256 (and the source's, for transfer);
- the canonical spec string, the number of test images and a fingerprint of those images and
  labels, the evaluation seed;
- the versions of torch, torchattacks and foolbox, and a hash of this project's own code that
  draws, crafts and scores (`code_version.NUMBER_CODE`: noise, attacks, k-winners, the first conv, evaluation kinds,
  executor tasks, seeds and eval mode);
- the batch size, only for attacks whose library draws randomness per batch;
- for a pruned sweep, the sweep's strengths up to the cell's (the set at eps builds on the sets
  at every smaller eps of the sweep).

It does not change for a model's description, the datasets it is declared for, the batch size of
any other evaluation, or the device.

A job is what a worker runs: one perturbed set (crafted on `source`, or drawn as noise) and the
cells scored on it.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from robustbench_sparse.evaluation.code_version import code_version
from robustbench_sparse.evaluation.kinds import kind_of
from robustbench_sparse.evaluation.suites import Evaluation
from robustbench_sparse.runtime import compute_regime, library_versions

COLUMNS = [
    "model", "dataset", "seed", "evaluation", "kind", "metric", "param", "strength", "n", "correct", "accuracy",
    "source", "spec", "checkpoint", "eval_seed", "batch_size", "device", "seconds", "date", "versions",
    "flags", "key",
]

# The libraries whose code computes the numbers (our own: `code_version.NUMBER_CODE`).
NUMBER_LIBRARIES = ("torch", "torchattacks", "foolbox")


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    """What a number depends on besides its cell: library versions, our own code's version, and
    the CPU regime it is computed in (`runtime.compute_regime`: portable, or machine-dependent)."""
    versions = library_versions()
    return {**{k: versions[k] for k in NUMBER_LIBRARIES}, "code": code_version(), "regime": compute_regime()["name"]}


@functools.lru_cache(maxsize=1)
def environment_id() -> str:
    return hashlib.sha256(json.dumps(environment(), sort_keys=True).encode()).hexdigest()[:12]


def test_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 of the test images and labels exactly as evaluated (a changed split, a changed
    loader, or another data file gives another fingerprint)."""
    h = hashlib.sha256()
    h.update(str((tuple(x.shape), str(x.dtype))).encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


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
    data: str  # test_fingerprint of the n test images
    source: str = ""  # the model the perturbation was crafted on, when it is not `model`
    source_checkpoint: str = ""  # its checkpoint hash (or an ensemble's combined hash)

    @property
    def spec(self) -> str:
        return self.evaluation.spec(self.strength)

    @property
    def batch_dependent(self) -> bool:
        return kind_of(self.evaluation.kind).batch_dependent(self.evaluation.params_at(self.strength))

    @property
    def crafted_on(self) -> tuple[str, str]:
        """(model name, checkpoint hash) the perturbation is crafted on."""
        if self.source and self.source != self.model:
            return self.source, self.source_checkpoint
        return self.model, self.checkpoint

    def _inputs(self) -> str:
        """Everything the perturbed set depends on, apart from the model it is crafted on."""
        bs = f"|bs={self.batch_size}" if self.batch_dependent else ""
        chain = self.evaluation.chain(self.strength)
        pruned = f"|chain={','.join(repr(float(s)) for s in chain)}" if chain else ""
        return (f"{self.spec}|n={self.n}|data={self.data[:16]}|evalseed={self.eval_seed}{bs}{pruned}"
                f"|env={environment_id()}")

    @property
    def previous(self) -> Cell | None:
        """For a pruned sweep, the cell at the sweep's next smaller eps > 0, on the same source:
        its set is where this cell's set starts."""
        chain = self.evaluation.chain(self.strength)
        return replace(self, strength=chain[-2]) if len(chain) > 1 else None

    @property
    def set_key(self) -> str:
        """The key of the perturbed set (shared by every target scored on it)."""
        name, ckpt = self.crafted_on
        kind = kind_of(self.evaluation.kind)
        model_free = kind.noise is not None or kind.name == "clean"  # the same draws for every model
        on = "any" if model_free else f"{name}@{ckpt[:16]}"
        return f"{self.dataset}|{on}|{self._inputs()}"

    @property
    def key(self) -> str:
        src = ""
        if self.source and self.source != self.model:
            src = f"|from={self.source}@{self.source_checkpoint[:16]}"
        return f"{self.dataset}|{self.model}|seed={self.seed}|ckpt={self.checkpoint[:16]}|{self._inputs()}{src}"


@dataclass(frozen=True)
class Job:
    """One perturbed set and the cells scored on it: crafted once on `cells[0].crafted_on` (or
    drawn as noise, model-free), then scored on each cell's model."""

    cells: tuple[Cell, ...]

    def __post_init__(self) -> None:
        if not self.cells or len({c.set_key for c in self.cells}) != 1:
            raise ValueError("a job's cells must share one perturbed set")

    @property
    def key(self) -> str:
        """What is leased while the job runs: its perturbed set."""
        return f"set|{self.cells[0].set_key}"

    @property
    def crafts(self) -> bool:
        """Whether the job crafts an adversarial set (cached and shared with other jobs)."""
        first = self.cells[0]
        return kind_of(first.evaluation.kind).adversarial and first.strength > 0

    @property
    def source(self) -> str:
        return self.cells[0].crafted_on[0]

    @property
    def seed(self) -> int:
        return self.cells[0].seed


def encode_flags(correct: torch.Tensor) -> str:
    """Per-sample correctness, packed to bits and base64: enough for worst cases over attacks."""
    return base64.b64encode(np.packbits(correct.numpy().astype(np.uint8)).tobytes()).decode()


def decode_flags(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def make_record(cell: Cell, flags: torch.Tensor, seconds: float, device: torch.device | str) -> dict[str, Any]:
    versions = library_versions()
    correct = int(flags.sum())
    return {
        "model": cell.model,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "evaluation": cell.evaluation.name,
        "kind": cell.evaluation.kind,
        "metric": kind_of(cell.evaluation.kind).metric,
        "param": cell.evaluation.param,
        "strength": cell.strength,
        "n": cell.n,
        "correct": correct,
        "accuracy": correct / cell.n if cell.n else float("nan"),
        "source": cell.source or cell.model,
        "spec": cell.spec,
        "checkpoint": cell.checkpoint,
        "eval_seed": cell.eval_seed,
        "batch_size": cell.batch_size,
        "device": str(device),
        "seconds": round(seconds, 3),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": json.dumps({**{k: versions[k] for k in (*NUMBER_LIBRARIES, "robustbench-sparse")},
                                "code": environment()["code"]}),
        "flags": encode_flags(flags),
        "key": cell.key,
    }
