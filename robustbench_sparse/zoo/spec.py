"""The model zoo: variants declared in `models/zoo.toml`, built by registered architecture families.

A variant is a frozen `ModelSpec` (architecture, regulariser and training recipe). Users add one
by adding a `[models.NAME]` table to the spec file; `base = "other"` inherits another's settings.
Every model takes pixels in [0, 1] and normalises inside (buffers), returning logits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from robustbench_sparse.data.datasets import DATASETS, split_version
from robustbench_sparse.runtime import UserError
from robustbench_sparse.zoo.families import FAMILIES, family_builder, family_source_hash, is_import_path

NOT_WEIGHTS = ("description", "datasets", "selected_by_default")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str = "cnn"
    # every registered 28x28 greyscale dataset (the paper's networks); colour ones train their own families
    datasets: tuple[str, ...] = tuple(name for name, info in DATASETS.items() if info.shape == (1, 28, 28))
    description: str = ""
    # false: the variant runs only when named (`--models`, or a suite's `models`), not in every run
    selected_by_default: bool = True
    # architecture
    channels: tuple[int, ...] = (30, 30)
    kernel_size: int = 5
    conv_percent_on: tuple[float, ...] = (1.0, 1.0)  # 1.0 = plain ReLU
    local: bool = False  # k-winners2d across channels at each position instead of global
    hidden: int = 1000
    hidden_percent_on: float = 1.0
    weight_density: float = 1.0  # fraction of non-zero weights in the hidden linear layer
    dropout: float = 0.0
    batchnorm: bool = False
    # k-winners
    boost_strength: float = 0.0
    boost_strength_factor: float = 1.0
    k_inference_factor: float = 1.5
    duty_cycle_period: int = 1000
    # training recipe (paper: SGD, lr x lr_gamma after each epoch)
    lr: float = 0.01
    momentum: float = 0.9
    lr_gamma: float = 0.8
    batch_size: int = 64
    first_epoch_batch_size: int = 64
    epochs: int = 15

    @property
    def sparse_activations(self) -> bool:
        return self.hidden_percent_on < 1 or any(p < 1 for p in self.conv_percent_on)

    def config_hash(self, dataset: str) -> str:
        """Identifies a trained checkpoint: every setting that changes the weights, and the data.
        The description, the datasets a variant is declared for and whether it runs by default
        change no weight."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_WEIGHTS}
        if is_import_path(self.family):  # the builder's code lives outside this package: editing it retrains
            settings["family_source"] = family_source_hash(self.family)
        identity: dict[str, Any] = {"spec": settings, "dataset": dataset}
        if split_version(dataset):  # the training images: the official set less a validation split
            identity["split"] = split_version(dataset)
        payload = json.dumps(identity, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "family": self.family,
            "channels": "-".join(map(str, self.channels)),
            "conv % on": "/".join(f"{p:.3g}" for p in self.conv_percent_on),
            "hidden": self.hidden,
            "hidden % on": self.hidden_percent_on,
            "weights % on": self.weight_density,
            "dropout": self.dropout,
            "batchnorm": self.batchnorm,
            "boost": f"{self.boost_strength:g}x{self.boost_strength_factor:g}",
            "epochs": self.epochs,
        }

    def validate(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise UserError(f"model {self.name!r}: {what}")

        if is_import_path(self.family):
            family_builder(self.family, self.name)  # importable, callable, takes (spec, info): else a UserError
        else:
            need(self.family in FAMILIES, f"unknown family {self.family!r}; valid: {', '.join(FAMILIES)} or "
                 "an import path 'package.module:builder'")
        unknown = [d for d in self.datasets if d not in DATASETS]
        need(not unknown, f"unknown datasets {unknown}; valid: {', '.join(DATASETS)}")
        need(len(self.channels) >= 1, "channels needs at least one conv block")
        need(all(c >= 1 for c in self.channels), "channels must be >= 1")
        need(
            len(self.conv_percent_on) == len(self.channels),
            f"conv_percent_on has {len(self.conv_percent_on)} entries, channels {len(self.channels)}",
        )
        for p in (*self.conv_percent_on, self.hidden_percent_on, self.weight_density):
            need(0 < p <= 1, f"percent-on and weight_density must be in (0, 1], got {p}")
        need(self.hidden >= 1, "hidden must be >= 1")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.boost_strength >= 0, "boost_strength must be >= 0")
        need(0 <= self.boost_strength_factor <= 1, "boost_strength_factor must be in [0, 1]")
        need(self.k_inference_factor >= 1, "k_inference_factor must be >= 1")
        need(self.lr > 0 and 0 <= self.momentum < 1 and 0 < self.lr_gamma <= 1, "bad lr/momentum/lr_gamma")
        need(self.epochs >= 1, "epochs must be >= 1")
        need(
            0 < self.first_epoch_batch_size < self.duty_cycle_period and 0 < self.batch_size < self.duty_cycle_period,
            "batch sizes must be positive and smaller than duty_cycle_period (the duty-cycle EMA needs B < P)",
        )


SPEC_FIELDS = {f.name for f in fields(ModelSpec)} - {"name"}


def _coerce(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def parse_zoo(text: str, source: str = "zoo.toml") -> dict[str, dict[str, ModelSpec]]:
    """Parse a zoo spec file into {model: {dataset: spec}}.

    `[defaults]` plus one `[models.NAME]` table per variant; `[models.NAME.DATASET]` sub-tables
    adapt the recipe to one dataset (e.g. fewer epochs on a small one). Sub-tables inherit
    through `base` like every other key.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{source}: not valid TOML: {err}") from err
    extra = set(doc) - {"defaults", "models"}
    if extra:
        raise UserError(f"{source}: unknown top-level tables {sorted(extra)}; valid: defaults, models")
    defaults = doc.get("defaults", {})
    tables: dict[str, dict[str, Any]] = doc.get("models", {})
    for name, table in [("defaults", defaults), *tables.items()]:
        for key, value in table.items():
            if isinstance(value, dict):
                if key not in DATASETS:
                    raise UserError(
                        f"{source}: [{name}.{key}]: {key!r} is not a dataset; valid: {', '.join(DATASETS)}"
                    )
                bad = set(value) - SPEC_FIELDS - {"datasets", "family"}
                bad |= set(value) & {"datasets", "family", "selected_by_default"}
            elif key == "base" or key in SPEC_FIELDS:
                continue
            else:
                bad = {key}
            if bad:
                raise UserError(
                    f"{source}: [{name}] has unknown or misplaced keys {sorted(bad)}; "
                    f"valid: {', '.join(sorted(SPEC_FIELDS))}, base"
                )

    resolved: dict[str, dict[str, Any]] = {}

    def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in top.items():
            out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
        return out

    def resolve(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
        if name in chain:
            raise UserError(f"{source}: inheritance cycle {' -> '.join((*chain, name))}")
        if name not in tables:
            raise UserError(f"{source}: base {name!r} is not a model; valid: {', '.join(tables)}")
        if name not in resolved:
            table = dict(tables[name])
            base = table.pop("base", None)
            resolved[name] = merge(resolve(base, (*chain, name)) if base else dict(defaults), table)
        return resolved[name]

    zoo: dict[str, dict[str, ModelSpec]] = {}
    for name in tables:
        settings = resolve(name)
        common = {k: v for k, v in settings.items() if not isinstance(v, dict)}
        try:
            spec = ModelSpec(name=name, **_coerce(common))
        except TypeError as err:
            raise UserError(f"{source}: [models.{name}]: {err}") from err
        zoo[name] = {}
        for dataset in spec.datasets:
            variant = dataclasses.replace(spec, **_coerce(settings.get(dataset, {})))
            variant.validate()
            zoo[name][dataset] = variant
    return zoo


def load_zoo(path: Path) -> dict[str, dict[str, ModelSpec]]:
    """The zoo of a spec file. Its home folder (the parent of models/) is importable, so a family
    `my_models:build` may live in `my_models.py` beside models/ as well as in any installed package."""
    if not path.exists():
        raise UserError(f"no zoo spec file at {path}; set RBS_HOME or --home to the folder holding models/zoo.toml")
    home = str(path.resolve().parent.parent)
    if home not in sys.path:
        sys.path.append(home)
    return parse_zoo(path.read_text(), str(path))


def select_models(
    zoo: dict[str, dict[str, ModelSpec]], dataset: str, names: list[str] | None = None
) -> list[ModelSpec]:
    """The zoo's models for a dataset (those `selected_by_default`), or the named ones (any
    declared for the dataset; checked, valid names listed on error)."""
    available = {name: by_dataset[dataset] for name, by_dataset in zoo.items() if dataset in by_dataset}
    if not names:
        default = [spec for spec in available.values() if spec.selected_by_default]
        if not default:
            raise UserError(f"the zoo declares no model for dataset {dataset!r} that runs by default"
                            + (f"; name some with --models: {', '.join(available)}" if available else ""))
        return default
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(
            f"unknown model(s) {', '.join(unknown)} for dataset {dataset!r}; valid: {', '.join(available)}"
        )
    return [available[n] for n in names]
