"""Evaluation suites: TOML files under `attacks/` declaring evaluations and their strength sweeps.

    description = "..."
    test_size = 200          # the first N images of the fixed test split (omit: all of them), or
                             # per dataset: test_size = {fashion-mnist = 2000} (others: all of them)
    seed = 0                 # seeds every random draw of the evaluation
    batch_size = 500
    prune = true             # default of the attacks' `prune`: sweep eps upwards, attack only survivors
    models = ["dense"]       # optional: the models run when --models is not given (default: the zoo's)

    [[evaluations]]
    kind = "pgd"             # see `rbs evaluations`
    name = "pgd"             # optional, defaults to the kind; must be unique in the suite
    eps = [0.0, 0.1, 0.3]    # the kind's strength parameter, as a list: the sweep
    steps = 40               # any other parameter of the kind

Everything is checked against the dataset before any work starts.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from robustbench_sparse.data.datasets import DATASETS, DatasetInfo
from robustbench_sparse.evaluation.kinds import kind_of, resolve, spec_string
from robustbench_sparse.runtime import Paths, UserError


@dataclass(frozen=True)
class Evaluation:
    """One named evaluation of a suite: a kind, its fixed parameters, and the strengths to sweep."""

    name: str
    kind: str
    params: tuple[tuple[str, Any], ...]  # resolved at strength 0; the strength is set per cell
    strengths: tuple[float, ...]

    @property
    def param(self) -> str:
        return kind_of(self.kind).strength or ""

    def params_at(self, strength: float) -> dict[str, Any]:
        params = dict(self.params)
        if self.param:
            params[self.param] = strength
        return params

    def spec(self, strength: float) -> str:
        return spec_string(self.kind, self.params_at(strength))

    def full(self) -> Evaluation:
        """The same evaluation without pruning or early stopping: every eps attacks every image for
        every step (ending where the library's attack ends). Transfer sets are crafted this way: an example that
        only just fools its source transfers worse, so the fast mode would raise target accuracy."""
        params = tuple((k, False if k in MODE_PARAMS else v) for k, v in self.params)
        return replace(self, params=params)

    def draw_spec(self, strength: float) -> str:
        """The spec without the parameters that change how much work an attack does but not what
        it draws (`early_stop`, `prune`): random draws are seeded from it, so the fast and the
        plain mode start every image from the same point."""
        params = {k: v for k, v in self.params_at(strength).items() if k not in MODE_PARAMS}
        return spec_string(self.kind, params)

    @property
    def pruned(self) -> bool:
        """The sweep is pruned: the set at eps builds on the set at the sweep's next smaller eps."""
        return bool(dict(self.params).get("prune", False))

    def chain(self, strength: float) -> tuple[float, ...]:
        """With pruning, the sweep's strengths > 0 up to `strength`, in increasing order: the
        attacks a pruned set at `strength` is made of (empty without pruning, or at 0)."""
        if not self.pruned or strength <= 0:
            return ()
        return tuple(sorted(s for s in self.strengths if 0 < s <= strength))


CLEAN = Evaluation("clean", "clean", (), (0.0,))
MODE_PARAMS = ("early_stop", "prune")


@dataclass(frozen=True)
class TransferPlan:
    """Which attacks `rbs transfer` moves between models (from the suite's [transfer] table)."""

    evaluations: tuple[str, ...]  # attack evaluations of the suite; default: all of them
    strengths: tuple[float, ...] | None  # a subset of their strengths; default: every one > 0
    ensemble: tuple[str, ...]  # models whose mean logits form one more source; default: none


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    test_size: int | None
    seed: int
    batch_size: int
    evaluations: tuple[Evaluation, ...]
    source: str
    transfer: TransferPlan = TransferPlan((), None, ())
    models: tuple[str, ...] = ()  # the models it runs when none are named (default: the zoo's default set)
    # (model, N): models run on fewer training seeds, only on those below N (`seeds_below`)
    seeds_below: tuple[tuple[str, int], ...] = ()

    def runs_on(self, model: str, seed: int) -> bool:
        """Whether the suite runs `model` on training seed `seed` (`seeds_below` may limit a model's seeds)."""
        return seed < dict(self.seeds_below).get(model, seed + 1)

    def transfer_cells(self) -> list[tuple[Evaluation, float]]:
        """(attack evaluation, strength) pairs that `rbs transfer` crafts and moves between models,
        each evaluation in its full form (`Evaluation.full`)."""
        pairs = []
        for name in self.transfer.evaluations:
            evaluation = self.evaluation(name).full()
            wanted = self.transfer.strengths
            pairs += [(evaluation, s) for s in evaluation.strengths if s > 0 and (wanted is None or s in wanted)]
        return pairs

    def evaluation(self, name: str) -> Evaluation:
        for e in self.evaluations:
            if e.name == name:
                return e
        raise UserError(f"suite {self.name!r} has no evaluation {name!r}; it has {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.evaluations]


def available_suites(paths: Paths) -> list[str]:
    return sorted({p.stem for folder in paths.suite_folders for p in folder.glob("*.toml")})


def suite_path(paths: Paths, name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix == ".toml" and candidate.exists():
        return candidate
    for folder in paths.suite_folders:
        path = folder / f"{name}.toml"
        if path.exists():
            return path
    raise UserError(
        f"unknown suite {name!r}; valid: {', '.join(available_suites(paths)) or '(none found)'} "
        f"(files in {paths.suites} and the shipped suites), or a path to a .toml suite file"
    )


_TOP_KEYS = {"description", "test_size", "seed", "batch_size", "prune", "evaluations", "transfer", "models",
             "seeds_below"}


def parse_suite(text: str, name: str, info: DatasetInfo, source: str = "") -> Suite:
    where = f"suite {name!r}" + (f" ({source})" if source else "")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{where}: not valid TOML: {err}") from err
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise UserError(f"{where}: unknown keys {sorted(unknown)}; valid: {', '.join(sorted(_TOP_KEYS))}")
    test_size = _test_size(doc.get("test_size"), info, where)
    seed, batch_size = doc.get("seed", 0), doc.get("batch_size", 500)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"{where}: seed must be an integer >= 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"{where}: batch_size must be an integer >= 1")
    prune = doc.get("prune", True)
    if not isinstance(prune, bool):
        raise UserError(f"{where}: prune must be true or false")
    entries = doc.get("evaluations", [])
    if not entries:
        raise UserError(f"{where}: declares no [[evaluations]]")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{where}: `evaluations` must be a list of tables ([[evaluations]] blocks)")
    evaluations = [CLEAN]
    for i, raw in enumerate(entries, 1):
        evaluations.append(_evaluation(dict(raw), info, f"{where}, evaluation {i}: ", prune))
    names = [e.name for e in evaluations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"{where}: evaluation names must be unique; repeated: {', '.join(duplicates)} "
                        "(give each a distinct `name`)")
    seen: dict[str, str] = {}
    for e in evaluations:
        for strength in e.strengths:
            other = seen.setdefault(e.spec(strength), e.name)
            if other != e.name:
                raise UserError(f"{where}: evaluations {other!r} and {e.name!r} are the same at {strength:g} "
                                f"({e.spec(strength)}); remove one")
    attack_names = [e.name for e in evaluations if kind_of(e.kind).adversarial]
    transfer_raw = doc.get("transfer", {})
    if not isinstance(transfer_raw, dict):
        raise UserError(f"{where}: `transfer` must be a table ([transfer])")
    transfer = _transfer(dict(transfer_raw), attack_names, evaluations, where)
    models = doc.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise UserError(f'{where}: models must be a list of zoo model names, e.g. models = ["dense", "kwinner"]')
    below = doc.get("seeds_below", {})
    if not isinstance(below, dict) or not all(_positive_int(n) for n in below.values()):
        raise UserError(f"{where}: seeds_below must be a table of model names and integers >= 1, e.g. "
                        "seeds_below = {dropout = 5} (dropout runs on training seeds 0-4 only)")
    return Suite(name, doc.get("description", ""), test_size, seed, batch_size, tuple(evaluations), source, transfer,
                 tuple(models), tuple(sorted(below.items())))


def _test_size(raw: Any, info: DatasetInfo, where: str) -> int | None:
    """The suite's test size on `info`'s dataset: one integer for every dataset, or a table
    {dataset: integer} where datasets not named use their whole test set."""
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(DATASETS))
        if unknown:
            raise UserError(f"{where}: test_size names unknown datasets {', '.join(unknown)}; "
                            f"valid: {', '.join(DATASETS)}")
        for name, value in raw.items():
            if not _positive_int(value):
                raise UserError(f"{where}: test_size for {name} must be an integer >= 1")
        return raw.get(info.name)
    if raw is not None and not _positive_int(raw):
        raise UserError(f"{where}: test_size must be an integer >= 1, a table {{dataset = integer}}, "
                        "or omitted for the whole test set")
    return raw


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _transfer(raw: dict[str, Any], attack_names: list[str], evaluations: list[Evaluation], where: str) -> TransferPlan:
    where = f"{where} [transfer]: "
    unknown = set(raw) - {"evaluations", "strengths", "ensemble"}
    if unknown:
        raise UserError(f"{where}unknown keys {sorted(unknown)}; valid: evaluations, strengths, ensemble")
    for key, item in (("evaluations", str), ("strengths", (int, float)), ("ensemble", str)):
        value = raw.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, item) for v in value)):
            example = '["pgd"]' if item is str else "[0.1, 0.3]"
            raise UserError(f"{where}`{key}` must be a list of {'names' if item is str else 'numbers'}, "
                            f"e.g. {key} = {example}")
    names = raw.get("evaluations", attack_names)
    bad = [n for n in names if n not in attack_names]
    if bad:
        raise UserError(f"{where}{', '.join(bad)} not attack evaluations of the suite; valid: {', '.join(attack_names)}")
    strengths = raw.get("strengths")
    if strengths is not None:
        offered = {s for e in evaluations if e.name in names for s in e.strengths}
        missing = [s for s in strengths if s not in offered]
        if missing:
            raise UserError(f"{where}strengths {missing} are not swept by {', '.join(names)}")
        strengths = tuple(strengths)
    return TransferPlan(tuple(names), strengths, tuple(raw.get("ensemble", ())))


def _evaluation(raw: dict[str, Any], info: DatasetInfo, where: str, prune: bool = True) -> Evaluation:
    if "kind" not in raw:
        raise UserError(f"{where}missing `kind`")
    kind = kind_of(raw.pop("kind"))
    if kind.prunable:
        raw.setdefault("prune", prune)
    name = str(raw.pop("name", kind.name))
    if kind.strength is None:
        return Evaluation(name, kind.name, tuple(sorted(resolve(kind.name, raw, info, where).items())), (0.0,))
    sweep = raw.pop(kind.strength, None)
    if sweep is None:
        raise UserError(f"{where}{kind.name} needs `{kind.strength}` = a list of strengths to sweep")
    sweep = sweep if isinstance(sweep, list) else [sweep]
    if not sweep:
        raise UserError(f"{where}`{kind.strength}` is an empty sweep")
    # Every strength checked now, before any work, and written as its canonical value
    # (eps = 1 and eps = 1.0 are one cell).
    sweep = [resolve(kind.name, {**raw, kind.strength: strength}, info, where)[kind.strength] for strength in sweep]
    if len(set(sweep)) != len(sweep):
        raise UserError(f"{where}`{kind.strength}` lists a strength twice: {sweep}")
    fixed = resolve(kind.name, raw, info, where)
    fixed.pop(kind.strength)
    return Evaluation(name, kind.name, tuple(sorted(fixed.items())), tuple(sweep))


def load_suite(paths: Paths, name: str, info: DatasetInfo) -> Suite:
    path = suite_path(paths, name)
    return parse_suite(path.read_text(), path.stem, info, str(path))
