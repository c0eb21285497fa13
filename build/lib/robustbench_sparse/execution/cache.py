"""The crafted-set cache: adversarial sets on disk, keyed by their set key, shared by every run."""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from robustbench_sparse.runtime import atomic_write_bytes


class ArtifactStore:
    """Adversarial sets on disk, one file per set key: written atomically (a reader never sees half
    a file) and never trusted when damaged."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, set_key: str) -> Path:
        digest = hashlib.sha256(set_key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest[2:26]}.pt"

    def load(self, set_key: str) -> torch.Tensor | None:
        """The stored set, or None when there is none (a damaged file is removed, never trusted)."""
        path = self.path(set_key)
        if not path.exists():
            return None
        try:
            return torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError):
            path.unlink(missing_ok=True)
            return None

    def save(self, set_key: str, adv: torch.Tensor) -> None:
        buffer = io.BytesIO()
        torch.save(adv, buffer)
        atomic_write_bytes(self.path(set_key), buffer.getvalue())

    def get(self, set_key: str, craft: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """The set, and whether it was crafted now (False: read from disk)."""
        adv = self.load(set_key)
        if adv is not None:
            return adv, False
        adv = craft()
        self.save(set_key, adv)
        return adv, True
