"""One run request: the parameters every entry point takes, checked in one place.

`evaluate`, `transfer`, `benchmark`, `baseline`, `check` and `evaluate_model` (and the CLI's
commands, which build one from a shared set of options) all take a `RunRequest`, or its fields as
keyword arguments (`evaluate(dataset="mnist5k", suite="quick")` is `evaluate(RunRequest(...))`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from robustbench_sparse.execution.registry import open_executor
from robustbench_sparse.runtime import UserError

DEFAULT_DATASET = "mnist5k"


@dataclass(frozen=True)
class RunRequest:
    """What to run, on which data and models, where. None means the entry point's default (the
    dataset: mnist5k; the suite: standard, or quick for baselines; the models: the suite's or the
    whole zoo's; the home: `Paths.default()`; the data root: `default_data_root()`)."""

    dataset: str | None = None
    suite: str | None = None
    models: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    backend: str | None = None  # the attack library for the suite's attacks; None: as the suite says
    home: Path | None = None
    data_root: Path | None = None
    download: bool = False  # let torchvision download a missing dataset
    executor: Any = "local"  # a registered executor name, or an executor object (then the caller closes it)
    address: str | None = None  # a Ray cluster to join (executor "ray")
    workers: int | None = None  # worker processes (local) or CPUs of a private Ray (ray)

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            object.__setattr__(self, "models", (self.models,))
        elif self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            object.__setattr__(self, "seeds", (self.seeds,))
        else:
            object.__setattr__(self, "seeds", tuple(self.seeds))
        for name in ("home", "data_root"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not isinstance(self.executor, str) and (self.address is not None or self.workers is not None):
            raise UserError("address and workers go with an executor name, not an executor object")

    @classmethod
    def of(cls, *args: Any, **given: Any) -> RunRequest:
        """A request from a RunRequest (with fields replaced by keywords) or from its fields."""
        if args and isinstance(args[0], RunRequest):
            if len(args) > 1:
                raise TypeError("a RunRequest takes no further positional arguments")
            return replace(args[0], **given) if given else args[0]
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise TypeError(f"unknown run parameter(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return cls(*args, **given)

    def resolved(self, suite: str = "standard") -> RunRequest:
        """The request with the dataset and suite defaults filled in."""
        return replace(self, dataset=self.dataset or DEFAULT_DATASET, suite=self.suite or suite)

    @contextlib.contextmanager
    def open_executor(self) -> Iterator[Any]:
        """The request's executor for a block (made and closed here when given by name)."""
        with open_executor(self.executor, address=self.address, workers=self.workers) as runner:
            yield runner
