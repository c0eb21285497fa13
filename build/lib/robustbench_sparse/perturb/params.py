"""A parameter of a perturbation or evaluation: its default, its check, its valid range in words.

Attacks declare theirs here (below the evaluation kinds, which list and check them), so one
`Param` serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustbench_sparse.data.datasets import DatasetInfo

Check = Callable[[Any, DatasetInfo], bool]


@dataclass(frozen=True)
class Param:
    default: Any
    check: Check
    valid: str  # the valid range, for error messages


def number(lo: float, hi: float | None = None) -> Check:
    """A real number (not a bool) in [lo, hi]."""
    return lambda v, _: isinstance(v, int | float) and not isinstance(v, bool) and lo <= v and (hi is None or v <= hi)


def integer(lo: int) -> Check:
    """An integer (not a bool) >= lo."""
    return lambda v, _: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def choice(*options: Any) -> Check:
    return lambda v, _: v in options


def boolean() -> Check:
    return lambda v, _: isinstance(v, bool)  # not 1 or 0: one value, one spec string
