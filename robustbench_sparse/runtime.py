"""Where things run and how they are made repeatable: device choice, seeds, versions, paths."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: `rbs --help` needs none of it
    import torch

DEVICES = ("auto", "cpu", "cuda")
REPO_ROOT = Path(__file__).resolve().parent.parent
# The shipped zoo (models/zoo.toml) and suites (attacks/*.toml): the repository's own copies in a
# checkout; inside an installed wheel, the copies its build put in the package (setup.py).
_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "models" / "zoo.toml").is_file()
SHIPPED = REPO_ROOT if _CHECKOUT else Path(__file__).resolve().parent / "shipped"


class BudgetViolation(RuntimeError):
    """An attack returned inputs outside its eps-ball or outside [0, 1]: no number is reported."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints it without a traceback."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when it is available, else the CPU."""
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; valid: {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private, seeded generator: random draws never depend on what ran before."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from a key, stable across runs and machines."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


_PACKAGES = ("robustbench-sparse", "torch", "torchvision", "torchattacks", "foolbox", "numpy", "pandas")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@dataclass(frozen=True)
class Paths:
    """The suite's folders. `home` holds checkpoints (models/), suites of one's own (attacks/),
    results and reports (reports/); folders are created when first written. A home without its own
    models/zoo.toml uses the shipped zoo, and suites not in its attacks/ come from the shipped ones.
    Default home (docs/zoo.md#where-things-live): $RBS_HOME; else the current folder if it has
    models/zoo.toml; else the repository when running from a checkout; else the current folder."""

    home: Path

    @classmethod
    def default(cls) -> Paths:
        env = os.environ.get("RBS_HOME")
        if env:
            return cls(Path(env))
        cwd = Path.cwd()
        if (cwd / "models" / "zoo.toml").exists() or not _CHECKOUT:
            return cls(cwd)
        return cls(REPO_ROOT)

    @property
    def zoo_spec(self) -> Path:
        own = self.home / "models" / "zoo.toml"
        return own if own.exists() else SHIPPED / "models" / "zoo.toml"

    @property
    def suite_folders(self) -> list[Path]:
        """Where suites are looked up by name, first match wins: the home's, then the shipped ones."""
        return list(dict.fromkeys([self.home / "attacks", SHIPPED / "attacks"]))

    def checkpoints(self, dataset: str) -> Path:
        return self.home / "models" / dataset

    @property
    def suites(self) -> Path:
        return self.home / "attacks"

    def reports(self, dataset: str) -> Path:
        return self.home / "reports" / dataset

    @property
    def cache(self) -> Path:
        return self.home / ".rbs-cache"


_TV_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)


def import_torchvision() -> Any:
    """Import torchvision even where its native extension does not match the installed torch.

    The only torchvision 0.28 wheel is a CUDA build; against the CPU torch its `_C` fails to load
    and the import dies on a missing `torchvision::nms` schema. Datasets and transforms need no
    native op, so declaring the two schemas first lets them work.
    """
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for mod in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[mod]
        import torch

        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TV_SCHEMAS:
            with contextlib.suppress(RuntimeError):
                lib.define(schema)
        _KEEP.append(lib)
        import torchvision
    return torchvision


_KEEP: list[Any] = []  # the Library object must outlive the import


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every module in eval mode and no parameter gradients (attacks need only input gradients);
    each module's mode and each parameter's flag restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode
        for param, flag in grads.items():
            param.requires_grad_(flag)


def progress_disabled() -> bool | None:
    """tqdm's `disable` argument: True when RBS_NO_PROGRESS is set to a true value (1, true, yes,
    on); otherwise None, which hides bars only when stderr is not a terminal (CI logs)."""
    value = os.environ.get("RBS_NO_PROGRESS", "").strip().lower()
    return True if value in ("1", "true", "yes", "on") else None


# --- the CPU compute regime ---------------------------------------------------------------------
# One spec and seed gave a different checkpoint for every thread count and CPU: torch's CPU path
# rounds differently with (1) the number of intra-op threads (how reductions and GEMMs are split),
# (2) the instruction set of its kernels (ATen dispatches AVX2 or AVX-512 kernels; oneDNN JITs its
# convolutions per CPU; NNPACK blocks them by cache size), and (3) the BLAS code path (MKL picks
# one per CPU). The portable regime fixes each, measured on the zoo (benchmarks/determinism.py):
# one intra-op thread per task (parallelism comes from running tasks side by side); ATen's AVX2
# kernels on every CPU that has them; convolutions through torch's own im2col + GEMM (oneDNN and
# NNPACK off); MKL's conditional numerical reproducibility on its COMPATIBLE branch, in strict
# (alignment-independent) mode: the one branch MKL runs on Intel and AMD alike (on an AMD CPU it
# maps every ISA branch, AVX2 included, to AUTO). The variables must be set before torch reads
# them (ATen at its first operator, MKL at its first call), so importing this package sets them.
CPU_REGIME = "cpu-portable-1"
NATIVE_REGIME = "native"  # RBS_CPU_REGIME=native: torch's own choices (fastest, machine-dependent)
REGIME_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT"}
TASK_THREADS = 1
_MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
                 10: "AVX2", 12: "AVX512", 14: "AVX512_E1"}
_MKL_STRICT = 0x10000


def requested_regime() -> str:
    """The CPU regime asked for: `RBS_CPU_REGIME` (default: the portable one)."""
    value = os.environ.get("RBS_CPU_REGIME", "").strip() or CPU_REGIME
    if value not in (CPU_REGIME, NATIVE_REGIME):
        raise UserError(f"RBS_CPU_REGIME={value!r} is not a regime; use {CPU_REGIME} (the default) or {NATIVE_REGIME}")
    return value


def pin_cpu_environment() -> None:
    """Set the portable regime's variables for torch and MKL in this process and its children
    (done when the package is imported, before torch reads them)."""
    with contextlib.suppress(UserError):  # a bad value is reported where the regime is read
        if requested_regime() == CPU_REGIME:
            os.environ.update(REGIME_ENV)


def _mkl_branch() -> str | None:
    """MKL's reproducibility branch in effect, asked of the MKL linked into torch (None where it
    cannot be asked: another platform or build)."""
    import ctypes

    import torch

    try:
        get = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
    code = get(-1)
    name = _MKL_BRANCHES.get(code & ~_MKL_STRICT, str(code & ~_MKL_STRICT))
    return name + (",STRICT" if code & _MKL_STRICT else "")


def compute_regime() -> dict[str, Any]:
    """The CPU regime this process computes in, as recorded in manifests, results and reports:
    `name` is the portable regime only when every part of it is in effect."""
    import torch

    requested = requested_regime()
    kernels, mkl = torch.backends.cpu.get_cpu_capability(), _mkl_branch()
    missing = []
    if requested == CPU_REGIME:
        if kernels != "AVX2":
            missing.append(f"torch's kernels are {kernels}, not AVX2 (a CPU without AVX2, or torch used before "
                           "robustbench_sparse was imported)")
        if mkl is not None and mkl != REGIME_ENV["MKL_CBWR"]:
            missing.append(f"MKL runs branch {mkl}, not {REGIME_ENV['MKL_CBWR']} (MKL used before robustbench_sparse "
                           "was imported)")
    portable = requested == CPU_REGIME and not missing
    regime: dict[str, Any] = {
        "name": CPU_REGIME if portable else NATIVE_REGIME,
        "threads": TASK_THREADS if requested == CPU_REGIME else torch.get_num_threads(),
        "kernels": kernels,
        "mkl": mkl or os.environ.get("MKL_CBWR", "unknown"),
        "convolution": "im2col+GEMM" if requested == CPU_REGIME else "oneDNN",
        "machine": platform.machine(),
    }
    if missing:
        regime["not_portable"] = "; ".join(missing)
    return regime


@contextlib.contextmanager
def regime_block() -> Iterator[None]:
    """Compute in the requested CPU regime while the block runs: one intra-op thread, oneDNN and
    NNPACK off (the portable regime); the native regime leaves torch as it is."""
    if requested_regime() == NATIVE_REGIME:
        yield
        return
    import torch

    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # (mkldnn.flags() would also reset its other settings)
    try:
        with torch_threads(TASK_THREADS), torch.backends.nnpack.flags(enabled=False):
            yield
    finally:
        torch.backends.mkldnn.enabled = onednn


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` (None: left as it is) while the block runs.
    The thread count may change float rounding (it changes trained weights here; an attack step's
    logits and input gradient came out the same with 1 and 2 threads), so a run is bit-for-bit
    repeatable for a given count."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
