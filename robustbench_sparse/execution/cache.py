"""The crafted-set cache: adversarial sets on disk, keyed by their set key, shared by every run.

An entry is `torch.save`'s zip archive, whose members carry CRC-32 checksums: an entry is trusted
only when it reads back whole and every checksum matches. Entries are derived data, so one that
fails is moved aside (never deleted: it may help find what damaged it) and crafted again, with a
warning in the log and nothing on stdout.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from robustbench_sparse.runtime import atomic_write_bytes
from robustbench_sparse.zoo.checkpoints import aside_name

log = logging.getLogger(__name__)

# What reading a damaged archive raises, from zipfile (checksums, headers) and from torch.load.
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
               zlib.error, pickle.UnpicklingError)


class ArtifactStore:
    """Adversarial sets on disk, one file per set key: written atomically (a reader never sees half
    a file) and never trusted when damaged."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, set_key: str) -> Path:
        digest = hashlib.sha256(set_key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest[2:26]}.pt"

    def load(self, set_key: str) -> torch.Tensor | None:
        """The stored set, or None when there is none, or when the entry is damaged (it is then
        moved aside to `<name>.damaged`, so that the caller crafts it again)."""
        path = self.path(set_key)
        if not path.exists():
            return None
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # torch.load checks no checksum: a flipped bit would load
            if bad is not None:
                raise ValueError(f"member {bad} fails its CRC-32 check")
            adv = torch.load(path, weights_only=True)
            if not isinstance(adv, torch.Tensor):
                raise ValueError(f"it holds a {type(adv).__name__}, not a tensor")
        except _UNREADABLE as err:
            self._set_aside(path, err)
            return None
        return adv

    def _set_aside(self, path: Path, err: Exception) -> None:
        aside = aside_name(path)
        try:
            path.rename(aside)
        except FileNotFoundError:  # another process set it aside first
            return
        except OSError as move_err:
            log.warning("adversarial-set cache entry %s is damaged (%s) and could not be moved aside (%s); "
                        "it is crafted again", path, err, move_err)
            return
        log.warning("adversarial-set cache entry %s is damaged (%s): moved aside to %s; it is crafted again",
                    path, err, aside.name)

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
