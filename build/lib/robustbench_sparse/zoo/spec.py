"""The model zoo: variants declared in `models/zoo.toml`, built by registered architecture families.

A variant is a frozen `ModelSpec` (architecture, regulariser and training recipe). Users add one
by adding a `[models.NAME]` table to the spec file; `base = "other"` inherits another's settings.
Every model takes pixels in [0, 1] and normalises inside (buffers), returning logits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_sparse.data.datasets import DATASETS, DatasetInfo, split_version
from robustbench_sparse.runtime import UserError
from robustbench_sparse.zoo.layers import InputConv2d
from robustbench_sparse.zoo.sparse import KWinners, KWinners2d, SparseWeights

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


# --- architecture families -------------------------------------------------------------------

Family = Callable[[ModelSpec, DatasetInfo], list[nn.Module]]
FAMILIES: dict[str, Family] = {}


def register_family(name: str) -> Callable[[Family], Family]:
    def add(builder: Family) -> Family:
        if name in FAMILIES:
            raise ValueError(f"architecture family {name!r} is registered twice")
        FAMILIES[name] = builder
        return builder

    return add


class Normalize(nn.Module):
    """Per-channel normalisation inside the model, so attacks and noise work in pixel space."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _activation2d(spec: ModelSpec, percent_on: float, shape: tuple[int, int, int]) -> nn.Module:
    c, h, w = shape
    if percent_on >= 1:
        return nn.ReLU()
    n = c if spec.local else c * h * w
    return KWinners2d(
        c, h, w, k=max(1, round(percent_on * n)), local=spec.local,
        k_inference_factor=spec.k_inference_factor, boost_strength=spec.boost_strength,
        boost_strength_factor=spec.boost_strength_factor, duty_cycle_period=spec.duty_cycle_period,
    )


def _conv_blocks(spec: ModelSpec, info: DatasetInfo, padding: int) -> tuple[list[nn.Module], int]:
    """Conv -> [BatchNorm] -> MaxPool 2 -> ReLU or k-winners2d, per entry of `channels`."""
    layers: list[nn.Module] = []
    c, h, w = info.shape
    for i, (out, percent_on) in enumerate(zip(spec.channels, spec.conv_percent_on, strict=True)):
        # The first conv computes attacks' input gradients faster on CPU (layers.py); same weights.
        conv = InputConv2d if i == 0 else nn.Conv2d
        layers.append(conv(c, out, spec.kernel_size, padding=padding))
        if spec.batchnorm:
            layers.append(nn.BatchNorm2d(out))
        h = (h + 2 * padding - spec.kernel_size + 1) // 2
        w = (w + 2 * padding - spec.kernel_size + 1) // 2
        if h < 1 or w < 1:
            raise UserError(f"model {spec.name!r}: too many conv blocks for {info.name}'s {info.shape} input")
        c = out
        layers += [nn.MaxPool2d(2), _activation2d(spec, percent_on, (c, h, w))]
    return layers, c * h * w


def _classifier(spec: ModelSpec, info: DatasetInfo, features: int) -> list[nn.Module]:
    """Flatten -> Linear (sparse weights) -> [BatchNorm] -> ReLU or k-winners -> [Dropout] -> Linear."""
    linear: nn.Module = nn.Linear(features, spec.hidden)
    if spec.weight_density < 1:
        linear = SparseWeights(linear, spec.weight_density)
    layers: list[nn.Module] = [nn.Flatten(), linear]
    if spec.batchnorm:
        layers.append(nn.BatchNorm1d(spec.hidden))
    if spec.hidden_percent_on >= 1:
        layers.append(nn.ReLU())
    else:
        layers.append(
            KWinners(
                spec.hidden, k=max(1, round(spec.hidden_percent_on * spec.hidden)),
                k_inference_factor=spec.k_inference_factor, boost_strength=spec.boost_strength,
                boost_strength_factor=spec.boost_strength_factor, duty_cycle_period=spec.duty_cycle_period,
            )
        )
    if spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(spec.hidden, info.num_classes))
    return layers


@register_family("cnn")
def _cnn(spec: ModelSpec, info: DatasetInfo) -> list[nn.Module]:
    """The paper's CNN-1/CNN-2: unpadded 5x5 convs (Ahmad & Scheinkman 2019)."""
    convs, features = _conv_blocks(spec, info, padding=0)
    return convs + _classifier(spec, info, features)


@register_family("vgg")
def _vgg(spec: ModelSpec, info: DatasetInfo) -> list[nn.Module]:
    """Small VGG-style net for 32x32 colour images: padded 3x3 convs, each block halving the size."""
    convs, features = _conv_blocks(spec, info, padding=spec.kernel_size // 2)
    return convs + _classifier(spec, info, features)


def is_import_path(family: str) -> bool:
    return ":" in family


def family_builder(family: str, model: str = "?") -> Family:
    """The builder a family names: a registered one, or `package.module:function` imported here.
    An import path that does not import, name a callable, or take (spec, info) is a UserError."""
    if not is_import_path(family):
        return FAMILIES[family]
    where = f"model {model!r}: family {family!r}"
    module_name, _, attr = family.partition(":")
    if not module_name or not attr:
        raise UserError(f"{where}: an import path is 'package.module:builder'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure while importing user code is the user's to fix
        raise UserError(f"{where}: cannot import module {module_name!r} ({type(err).__name__}: {err}); put it on "
                        "PYTHONPATH, install its package, or place it beside models/ in the home folder") from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise UserError(f"{where}: module {module_name!r} has no callable {attr!r}")
    try:
        inspect.signature(builder).bind(None, None)
    except TypeError:
        raise UserError(f"{where}: the builder must take two arguments (spec: ModelSpec, info: DatasetInfo) and "
                        f"return an nn.Module or a list of modules; its signature is {inspect.signature(builder)}") from None
    except ValueError:  # a builtin without a signature: let the call decide
        pass
    return builder


def family_source_hash(family: str) -> str:
    """SHA-256 of the source file of an import-path family's module (its code, for the config hash)."""
    module = importlib.import_module(family.partition(":")[0])
    try:
        return hashlib.sha256(Path(inspect.getfile(module)).read_bytes()).hexdigest()
    except (TypeError, OSError):  # a module without a file (built in, or made at run time): its name only
        return family


def _layers(spec: ModelSpec, info: DatasetInfo) -> list[nn.Module]:
    """The family's layers after normalisation; an import-path builder's result checked."""
    built = family_builder(spec.family, spec.name)(spec, info)
    if isinstance(built, nn.Module):
        return [built]
    if isinstance(built, list | tuple) and built and all(isinstance(m, nn.Module) for m in built):
        return list(built)
    raise UserError(f"model {spec.name!r}: family {spec.family!r} returned {type(built).__name__}; a builder returns "
                    "an nn.Module (taking normalised inputs, returning logits) or a list of modules")


def build_model(spec: ModelSpec, info: DatasetInfo) -> nn.Sequential:
    """A freshly initialised model (draws from torch's global RNG: seed it first)."""
    if info.name not in spec.datasets:
        raise UserError(f"model {spec.name!r} is not declared for {info.name!r}; it is for {', '.join(spec.datasets)}")
    model = nn.Sequential(Normalize(info.mean, info.std), *_layers(spec, info))
    # channels-last convolutions run ~30% faster on CPU (oneDNN); results are layout-independent.
    return model.to(memory_format=torch.channels_last)
