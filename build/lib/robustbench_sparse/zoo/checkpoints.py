"""The checkpoint cache under `models/<dataset>/`: weights named with their hash, a manifest beside.

The manifest (JSON) is written last and is the commit point: a checkpoint exists when its manifest
does, and loading checks the weights' SHA-256 and the spec's config hash before trusting them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from robustbench_sparse.data.datasets import DatasetInfo
from robustbench_sparse.runtime import (
    Paths,
    UserError,
    atomic_write_bytes,
    atomic_write_text,
    library_versions,
    sha256_file,
)
from robustbench_sparse.zoo.spec import ModelSpec, build_model

Status = Literal["trained", "missing", "stale", "corrupt"]


@dataclass(frozen=True)
class Manifest:
    model: str
    dataset: str
    seed: int
    config_hash: str
    config: dict[str, Any]
    epochs: int
    clean_accuracy: float
    test_size: int
    sha256: str
    weights_file: str
    trained_at: str
    train_seconds: float
    device: str
    versions: dict[str, str]
    val_accuracy: float | None = None  # on the dataset's validation split, where it has one

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]


def _stem(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def manifest_path(paths: Paths, dataset: str, model: str, seed: int) -> Path:
    return paths.checkpoints(dataset) / f"{_stem(model, seed)}.json"


def read_manifest(paths: Paths, dataset: str, model: str, seed: int) -> Manifest | None:
    path = manifest_path(paths, dataset, model, seed)
    if not path.exists():
        return None
    try:
        return Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise UserError(f"checkpoint manifest {path} is unreadable ({err}); retrain with --force") from err


def checkpoint_status(paths: Paths, spec: ModelSpec, dataset: str, seed: int) -> Status:
    try:
        manifest = read_manifest(paths, dataset, spec.name, seed)
    except UserError:
        return "corrupt"
    if manifest is None:
        return "missing"
    if manifest.config_hash != spec.config_hash(dataset):
        return "stale"
    weights = paths.checkpoints(dataset) / manifest.weights_file
    if not weights.exists():
        return "missing"
    if sha256_file(weights) != manifest.sha256:
        return "corrupt"
    return "trained"


def save_checkpoint(
    paths: Paths,
    spec: ModelSpec,
    dataset: str,
    seed: int,
    model: nn.Module,
    clean_accuracy: float,
    test_size: int,
    train_seconds: float,
    device: str,
    val_accuracy: float | None = None,
) -> Manifest:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    folder = paths.checkpoints(dataset)
    weights_file = f"{_stem(spec.name, seed)}-{digest[:12]}.pt"
    atomic_write_bytes(folder / weights_file, data)
    manifest = Manifest(
        model=spec.name,
        dataset=dataset,
        seed=seed,
        config_hash=spec.config_hash(dataset),
        config=asdict(spec),
        epochs=spec.epochs,
        clean_accuracy=clean_accuracy,
        test_size=test_size,
        sha256=digest,
        weights_file=weights_file,
        trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        train_seconds=round(train_seconds, 2),
        device=device,
        versions=library_versions(),
        val_accuracy=val_accuracy,
    )
    atomic_write_text(manifest_path(paths, dataset, spec.name, seed), json.dumps(asdict(manifest), indent=2) + "\n")
    for old in folder.glob(f"{_stem(spec.name, seed)}-*.pt"):
        if old.name != weights_file:
            old.unlink()
    return manifest


def load_checkpoint(
    paths: Paths, spec: ModelSpec, info: DatasetInfo, seed: int, device: torch.device | str = "cpu"
) -> tuple[nn.Module, Manifest]:
    """The trained model in eval mode, after checking its hash and that it matches the spec."""
    data, manifest = checkpoint_bytes(paths, spec, info, seed)
    return model_from_bytes(spec, info, data, device), manifest


def model_from_bytes(spec: ModelSpec, info: DatasetInfo, data: bytes, device: torch.device | str = "cpu") -> nn.Module:
    """The model of `spec` with the weights saved in `data` (a checkpoint file's bytes), in eval mode.
    A model brought as an object (`family = EXTERNAL`) is the whole pickled module (`pack_module`)."""
    if spec.family == EXTERNAL:
        model = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    else:
        model = build_model(spec, info)
        model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return model.to(device).eval()


# The family of a model brought as an object (`evaluate_model`): no builder, the module travels pickled.
EXTERNAL = "external"


def pack_module(model: nn.Module) -> bytes:
    """A module as bytes a worker can load without its source: cloudpickle sends a class defined in
    a script, a notebook or a module outside the installed packages by value (plain pickle would
    send only its name); classes from installed packages (torch, nupic.torch, ...) go by name and
    must be installed where the bytes are loaded. A module that cannot be pickled is a UserError."""
    import sys
    import sysconfig

    import cloudpickle

    installed = {Path(p).resolve() for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                              sysconfig.get_paths()["stdlib"])}
    by_value = []
    for module in model.modules():
        source = sys.modules.get(type(module).__module__)
        where = getattr(source, "__file__", None)
        if source is None or where is None or type(module).__module__ in ("__main__", "builtins"):
            continue
        path = Path(where).resolve()
        if not any(path.is_relative_to(root) for root in installed) and source not in by_value:
            by_value.append(source)
    buffer = io.BytesIO()
    try:
        for source in by_value:
            cloudpickle.register_pickle_by_value(source)
        torch.save(model, buffer, pickle_module=cloudpickle)
    except Exception as err:  # noqa: BLE001 - whatever stops pickling, the user must fix it in the model
        raise UserError(f"the model cannot be pickled to run in workers ({type(err).__name__}: {err}); "
                        "unwrap torch.compile, and remove open files, locks or lambdas held as attributes") from None
    finally:
        for source in by_value:
            cloudpickle.unregister_pickle_by_value(source)
    return buffer.getvalue()


def module_identity(model: nn.Module) -> str:
    """SHA-256 of what a module computes with: its state_dict (tensors, in order), its
    non-persistent buffers and plain settings (numbers, strings, tuples held as attributes, such
    as a k-winners layer's k), and its classes' code (their source, or their compiled methods where
    Python has no source, as in a REPL). New weights, settings or code give a new identity; the
    same module gives the same one in any process (pickled bytes would not: they are not stable)."""
    import inspect
    import marshal

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    digest = hashlib.sha256(buffer.getvalue())
    plain = (int, float, str, bool, type(None), tuple)
    for name, module in model.named_modules():
        settings = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"
                    and isinstance(v, plain)}
        digest.update(repr((name, type(module).__qualname__, sorted(settings.items(), key=lambda kv: kv[0]))).encode())
        for key in sorted(getattr(module, "_non_persistent_buffers_set", ())):
            tensor = module._buffers.get(key)
            if tensor is not None:
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for cls in dict.fromkeys(type(m) for m in model.modules()):
        try:
            digest.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            for attr, value in sorted(vars(cls).items()):
                code = getattr(value, "__code__", None)
                digest.update(attr.encode() + (marshal.dumps(code) if code is not None else b""))
    return digest.hexdigest()


def checkpoint_bytes(paths: Paths, spec: ModelSpec, info: DatasetInfo, seed: int) -> tuple[bytes, Manifest]:
    """A checkpoint file's bytes (e.g. to send to a worker without a shared disk), after checking
    its hash and that it matches the spec."""
    manifest = read_manifest(paths, info.name, spec.name, seed)
    where = manifest_path(paths, info.name, spec.name, seed)
    if manifest is None:
        raise UserError(
            f"no trained checkpoint for {spec.name!r} (seed {seed}) on {info.name} at {where}; "
            f"run `rbs train --dataset {info.name}`"
        )
    if manifest.config_hash != spec.config_hash(info.name):
        raise UserError(
            f"checkpoint for {spec.name!r} on {info.name} was trained with different settings than "
            f"models/zoo.toml now declares; run `rbs train --dataset {info.name}` to retrain it"
        )
    weights = paths.checkpoints(info.name) / manifest.weights_file
    if not weights.exists():
        raise UserError(f"checkpoint weights {weights} are missing; run `rbs train --dataset {info.name}`")
    data = weights.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.sha256:
        raise UserError(
            f"checkpoint {weights} is corrupt: SHA-256 {actual[:12]}... does not match the manifest's "
            f"{manifest.sha256[:12]}...; refusing to load it. Retrain with `rbs train --dataset {info.name} --force`"
        )
    return data, manifest
