"""Executors by name, and the one way to make and close one.

An executor runs jobs (`map`) and training tasks (`train`) and is closed when the run ends. The
registry maps a name to "module:Class", imported only when used, so listing the names (the CLI's
choices) costs nothing and an engine's package (Ray) is needed only for its executor. Adding an
executor is one new module in this subpackage plus one `register_executor` call here.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from robustbench_sparse.registry import Registry
from robustbench_sparse.runtime import UserError, regime_block

EXECUTORS: Registry[str] = Registry("executor")


def register_executor(name: str, target: str) -> None:
    """Register the executor class at `target` ("package.module:Class") under `name`."""
    EXECUTORS.add(name, target)


register_executor("local", "robustbench_sparse.execution.local:LocalExecutor")
register_executor("ray", "robustbench_sparse.execution.ray_executor:RayExecutor")


def no_options(name: str, unused: dict[str, Any]) -> None:
    """Refuse options an executor does not take (given as something other than None)."""
    given = [k for k, v in unused.items() if v is not None]
    if given:
        raise UserError(f"the {name} executor takes no {', '.join('--' + k for k in given)}: "
                        "--address is for --executor ray")


def make_executor(name: str, **options: Any) -> Any:
    """An executor by name; options (e.g. address, workers, threads) go to its constructor."""
    module, _, cls = EXECUTORS.lookup(name).partition(":")
    return getattr(importlib.import_module(module), cls)(**options)


@contextlib.contextmanager
def open_executor(executor: Any = "local", **options: Any) -> Iterator[Any]:
    """The executor for a block: one given as an object stays the caller's (not closed here); one
    named is made with `options` (None values dropped) and closed when the block ends. What the
    caller computes in the block (e.g. a trained model's accuracy) is computed in the CPU regime,
    as the executor's tasks are."""
    if not isinstance(executor, str):
        if any(v is not None for v in options.values()):
            raise UserError("executor options (address, workers) go with an executor name, not an executor object")
        with regime_block():
            yield executor
        return
    made = make_executor(executor, **{k: v for k, v in options.items() if v is not None})
    try:
        with regime_block():
            yield made
    finally:
        made.close()
