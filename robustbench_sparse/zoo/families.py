"""Architecture families: a name (or an import path `package.module:builder`) -> the function that
builds a model's layers from its spec. Built-in families are registered here by import path and
imported when first built, so reading the zoo needs no torch. Adding a family is one builder
function plus one `register_family` call."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustbench_sparse.registry import Registry
from robustbench_sparse.runtime import UserError

# (spec, info) -> an nn.Module or a list of modules (taking normalised inputs, returning logits)
Family = Callable[[Any, Any], Any]
FAMILIES: Registry[str] = Registry("architecture family")


def register_family(name: str, target: str) -> None:
    """Register the builder at `target` ("package.module:function") as family `name`."""
    FAMILIES.add(name, target)


register_family("cnn", "robustbench_sparse.zoo.build:cnn_layers")
register_family("vgg", "robustbench_sparse.zoo.build:vgg_layers")


def is_import_path(family: str) -> bool:
    return ":" in family


def family_builder(family: str, model: str = "?") -> Family:
    """The builder a family names: a registered one, or `package.module:function` imported here.
    An import path that does not import, name a callable, or take (spec, info) is a UserError."""
    where = f"model {model!r}: family {family!r}"
    module_name, _, attr = FAMILIES.get(family, family).partition(":")
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
