"""The checkpoint cache under `models/<dataset>/`: weights named with their hash, a manifest beside.

The manifest (JSON) is written last and is the commit point: a checkpoint exists when its manifest
does, and loading checks the weights' SHA-256 and the spec's config hash before trusting them.

A damaged checkpoint is a UserError naming the file and the command that retrains it; the file is
left in place, and retraining moves damaged files aside (`<name>.damaged`) rather than replacing
them, so nothing that might explain the damage is lost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import pickle
import shlex
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # imported where used, so listing commands and datasets stays light
    import torch
    from torch import nn


from robustbench_sparse.data.datasets import DatasetInfo
from robustbench_sparse.runtime import (
    Paths,
    UserError,
    atomic_write_bytes,
    atomic_write_text,
    compute_regime,
    library_versions,
    sha256_file,
)
from robustbench_sparse.zoo.spec import ModelSpec

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
    regime: dict[str, Any] | None = None  # the CPU regime it was trained in (runtime.compute_regime)

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]


def _stem(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def aside_name(path: Path, suffix: str = ".damaged") -> Path:
    """Where a damaged file is moved aside: `path` with `suffix` appended, numbered when that name
    is taken, so that an earlier damaged copy is kept too."""
    candidate, n = path.with_name(path.name + suffix), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}{suffix}{n}")
    return candidate


def _one_line(err: BaseException) -> str:
    """An exception as a short single line (torch's errors span lines and can list every key)."""
    return textwrap.shorten(f"{type(err).__name__}: {err}", 200, placeholder=" ...")


def _retrain(dataset: str, model: str, seed: int | None) -> str:
    seeds = "" if seed is None else f" --seeds {seed}"
    return f"`rbs train --dataset {dataset} --models {model}{seeds} --force`"


def manifest_path(paths: Paths, dataset: str, model: str, seed: int) -> Path:
    return paths.checkpoints(dataset) / f"{_stem(model, seed)}.json"


def read_manifest(paths: Paths, dataset: str, model: str, seed: int) -> Manifest | None:
    path = manifest_path(paths, dataset, model, seed)
    if not path.exists():
        return None
    try:
        return Manifest(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:  # ValueError: bad JSON or bytes that are not UTF-8
        raise UserError(
            f"checkpoint manifest {path} is unreadable ({_one_line(err)}); it was left in place. Retrain it with "
            f"{_retrain(dataset, model, seed)}, which moves it aside to {aside_name(path).name}"
        ) from err


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
    try:
        intact = sha256_file(weights) == manifest.sha256
    except OSError:  # unreadable: as good as damaged, and retraining sets it aside
        intact = False
    return "trained" if intact else "corrupt"


def _set_aside_damaged(paths: Paths, dataset: str, model: str, seed: int) -> None:
    """Before a checkpoint is written: move aside (never delete, never overwrite) its damaged
    files, the weights whose SHA-256 does not match the hash in their name and a manifest that
    cannot be read. Intact superseded weights are removed after the new manifest is written."""
    stem = _stem(model, seed)
    for weights in paths.checkpoints(dataset).glob(f"{stem}-*.pt"):
        try:
            intact = sha256_file(weights).startswith(weights.stem.removeprefix(f"{stem}-"))
        except OSError:
            intact = False
        if not intact:
            weights.rename(aside_name(weights))
    try:
        read_manifest(paths, dataset, model, seed)
    except UserError:
        where = manifest_path(paths, dataset, model, seed)
        where.rename(aside_name(where))


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
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    folder = paths.checkpoints(dataset)
    weights_file = f"{_stem(spec.name, seed)}-{digest[:12]}.pt"
    _set_aside_damaged(paths, dataset, spec.name, seed)
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
        regime=compute_regime() if not device.startswith("cuda") else {"name": "cuda", "note": "CUDA kernels are not bit-for-bit "
                                                         "reproducible across GPUs: results agree within seed noise"},
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
    where = paths.checkpoints(info.name) / manifest.weights_file
    return model_from_bytes(spec, info, data, device, where=where, seed=seed), manifest


# What torch.load and load_state_dict raise on bytes that are not the weights the spec builds.
_UNLOADABLE = (RuntimeError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError)


def model_from_bytes(
    spec: ModelSpec,
    info: DatasetInfo,
    data: bytes,
    device: torch.device | str = "cpu",
    *,
    where: Path | None = None,
    seed: int | None = None,
) -> nn.Module:
    """The model of `spec` with the weights saved in `data` (a checkpoint file's bytes), in eval mode.
    A model brought as an object (`family = EXTERNAL`) is the whole pickled module (`pack_module`).
    Zoo weights that do not load are a UserError naming the file (`where`, when known) and the
    command that retrains them (with `seed`, when known)."""
    import torch

    if spec.family == EXTERNAL:
        model = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    else:
        from robustbench_sparse.zoo.build import build_model  # torch: only when a model is built

        model = build_model(spec, info)
        try:
            model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        except _UNLOADABLE as err:
            retrain = _retrain(info.name, spec.name, seed) + ("" if seed is not None else " (with the run's --seeds)")
            what, how = f"the checkpoint of {spec.name!r} on {info.name}", f"retrain it with {retrain}"
            if where is not None:  # retraining removes superseded weights whose hash is intact: keep it first
                what = f"checkpoint {where}"
                how = (f"it was left in place: move it aside with `mv {shlex.quote(str(where))} "
                       f"{shlex.quote(str(aside_name(where)))}`, then {how}")
            raise UserError(
                f"{what} cannot be loaded ({_one_line(err)}), although its SHA-256 matches its manifest: it was "
                f"saved damaged or for another architecture; {how}"
            ) from err
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
    import torch

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

    import torch

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
    retrain = _retrain(info.name, spec.name, seed)
    try:
        data = weights.read_bytes()
    except OSError as err:
        raise UserError(f"checkpoint {weights} cannot be read ({_one_line(err)}); it was left in place. Fix its "
                        f"permissions, or retrain it with {retrain}, which moves it aside") from err
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.sha256:
        raise UserError(
            f"checkpoint {weights} is corrupt: its SHA-256 {actual[:12]}... does not match its manifest's "
            f"{manifest.sha256[:12]}... ({where}); refusing to load it, and it was left in place. Retrain it with "
            f"{retrain}, which moves the damaged file aside to {aside_name(weights).name}"
        )
    return data, manifest
