"""One registry type for every fixed set of names: attacks, evaluation kinds, datasets, executors,
architecture families and report sections.

A `Registry` is a read-only, always-current mapping from a name to what is registered under it,
in registration order (or where `before=` puts it). A name is registered once: a second
registration is refused, so two modules cannot silently replace each other's entry. A lookup of an
unknown name is a `UserError` that lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from robustbench_sparse.runtime import UserError

T = TypeVar("T")
U = TypeVar("U")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry. `what` names the kind of entry in messages ("attack", "dataset", ...)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, before: str | None = None) -> T:
        """Register `entry` as `name` (at the end, or just before `before` when that is registered)."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered; pick another name")
        items = list(self._entries.items())
        at = next((i for i, (n, _) in enumerate(items) if n == before), len(items))
        items.insert(at, (name, entry))
        self._entries = dict(items)
        return entry

    def remove(self, name: str) -> T:
        """Unregister `name` (for tests) and return its entry."""
        if name not in self._entries:
            raise ValueError(f"no {self.what} {name!r} is registered; registered: {', '.join(self._entries)}")
        return self._entries.pop(name)

    def lookup(self, name: str) -> T:
        """The entry of `name`; an unknown name is a UserError listing the valid ones."""
        if name not in self._entries:
            raise UserError(f"unknown {self.what} {name!r}; valid: {', '.join(self._entries)}")
        return self._entries[name]

    def view(self, convert: Callable[[T], U]) -> Mapping[str, U]:
        """A live read-only mapping name -> convert(entry)."""
        return _View(self, convert)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"


class _View(Mapping[str, U]):
    def __init__(self, registry: Registry[T], convert: Callable[[T], U]) -> None:
        self._registry, self._convert = registry, convert

    def __getitem__(self, name: str) -> U:
        return self._convert(self._registry[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)

    def __repr__(self) -> str:
        return repr(dict(self))
