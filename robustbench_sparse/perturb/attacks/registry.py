"""The attacks a suite can name: each registered once, by its family module, under a unique name.

`ATTACKS`, `FOOLBOX_ATTACKS` and `LABELS` are live views of the registry, so an attack registered
later (a new family module, or a test) is listed, validated and crafted like the shipped ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar, overload

from robustbench_sparse.perturb.attacks.base import Attack
from robustbench_sparse.registry import Registry

A = TypeVar("A", bound=Attack)

_REGISTRY: Registry[Attack] = Registry("attack")


def register(attack: A) -> A:
    """Add an attack under its name (a name already taken is refused); returns the attack.

    Example: `register(FGSM("fgsm", "FGSM", "one signed-gradient step of size eps", backends=BACKENDS))`.
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"register takes an Attack, not {type(attack).__name__}")
    return _REGISTRY.add(attack.name, attack)


def unregister(name: str) -> Attack:
    """Remove a registered attack (for tests) and return it."""
    return _REGISTRY.remove(name)


def attack_of(name: str) -> Attack:
    """The registered attack called `name`; an unknown name is a UserError listing the valid ones."""
    return _REGISTRY.lookup(name)


class _Names(Sequence[str]):
    """The names of the registered attacks that `keep` accepts, in registration order (live)."""

    def __init__(self, keep: Callable[[Attack], bool]) -> None:
        self._keep = keep

    def _names(self) -> tuple[str, ...]:
        return tuple(name for name, attack in _REGISTRY.items() if self._keep(attack))

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...
    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in _REGISTRY and self._keep(_REGISTRY[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


ATTACKS: Sequence[str] = _Names(lambda attack: True)
FOOLBOX_ATTACKS: Sequence[str] = _Names(lambda attack: "foolbox" in attack.backends)
LABELS: Mapping[str, str] = _REGISTRY.view(lambda attack: attack.label)  # in tables and diagnostics
