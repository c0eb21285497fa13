"""Where finished work lives: results, one record per cell (crafted sets: `execution.cache`).

Results go to an SQLite database in WAL mode (`reports/<dataset>/results.sqlite`), safe for several
processes on one machine. Each record is written in its own transaction, so `kill -9` at any point
loses at most the cells being computed, never a finished one, and never leaves half a record.

While a job runs, its key is *leased* to the process running it: other processes skip it and
come back to it later. A lease expires unless its holder renews it (a background thread does,
every `lease_seconds / 4`), and a lease held by a process that no longer exists on this machine
is taken over at once, so a killed worker's job is picked up again. A record is inserted only if
its key is new: a cell is never stored twice.

SQLite's WAL mode needs a local filesystem; processes on several machines share work through an
executor (Ray) rather than a network folder. A readable copy of the records (`results.jsonl`,
one JSON object per line) is written beside the database after each run.

A store that cannot be used (not an SQLite database, damaged, locked past the timeout, unreadable)
is a `UserError` that names the file and the way out; the file is left as it is, never removed:
its records may still be salvaged, and another process may be using it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_sparse.evaluation.cells import COLUMNS
from robustbench_sparse.runtime import UserError, atomic_write_text
from robustbench_sparse.zoo.checkpoints import aside_name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    expires REAL NOT NULL
);
"""
_CHUNK = 500  # keys per SELECT (SQLite's limit on host parameters is 32766)
BUSY_TIMEOUT = 120.0  # seconds a statement waits for another process's write lock before giving up
_WAL_FILES = ("-wal", "-shm")  # SQLite's companions of a WAL database, named after it

# SQLite's primary result codes (an extended code's low byte) that are the store's fault, not a bug.
_LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_DAMAGED = {sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT}
_UNUSABLE = {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
             sqlite3.SQLITE_FULL, sqlite3.SQLITE_AUTH, sqlite3.SQLITE_NOLFS}


def _host_identity() -> str:
    """This machine and PID namespace: a lease's PID means something only within them (two
    containers can share a hostname and a folder)."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(Path(path).read_text().strip() if "boot_id" in path else os.readlink(path))
    return "|".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultStore:
    """Finished cells, keyed by cell key; leases on jobs being computed.

    `timeout`: seconds a statement waits while another process writes, before the store is
    reported as locked."""

    def __init__(self, path: Path, lease_seconds: float = 60.0, timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_seconds = lease_seconds
        self.timeout = timeout
        self.host = _host_identity()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._faults():
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a committed record survives a power cut
                yield db
            finally:
                db.close()

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        """An SQLite error that is the file's fault (on connecting, on the first statement or on
        any later one) raised as a UserError saying how to recover; any other raised as it is."""
        try:
            yield
        except sqlite3.Error as err:
            fault = self._fault(err)
            if fault is None:
                raise
            raise fault from err

    def _fault(self, err: sqlite3.Error) -> UserError | None:
        """The UserError for an error caused by the store's file (or another process holding it);
        None for any other error (a bug, such as bad SQL), which is raised as it is."""
        code = getattr(err, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        where = f"the result store {self.path}"
        if primary in _LOCKED:
            return UserError(
                f"{where} is locked by another process (still busy after waiting {self.timeout:g} s: {err}): "
                f"wait for it to finish or stop it, then rerun; `fuser -v {shlex.quote(str(self.path))}` "
                "lists the processes using it"
            )
        if primary in _DAMAGED:
            return UserError(f"{where} is not an SQLite database, or is damaged ({err}); {self._recovery()}")
        if primary in _UNUSABLE:
            return UserError(
                f"{where} cannot be opened, read or written ({err}): check that it is a file, that its "
                "folder is writable and that the disk has space, then rerun"
            )
        return None

    def _recovery(self) -> str:
        """How to recover from a damaged store: move it (and its WAL files) aside, rerun, and
        optionally import the last export. Moving is left to the user: another process may have the
        file open, and the damage may be repairable, so the file is never touched here."""
        aside = aside_name(self.path)
        moves = [(self.path, aside)] + [
            (self.path.with_name(self.path.name + s), aside.with_name(aside.name + s))
            for s in _WAL_FILES if self.path.with_name(self.path.name + s).exists()
        ]
        move = " && ".join(f"mv {shlex.quote(str(a))} {shlex.quote(str(b))}" for a, b in moves)
        text = f"it was left as it is. Move it aside with `{move}` and rerun: the cells it held are computed again"
        export = self.path.with_suffix(".jsonl")
        if export.exists():
            # A home's store lies at <home>/reports/<dataset>/results.sqlite (`rbs import` puts the
            # records back there); a store elsewhere is imported through its own method.
            home = self.path.parent.parent.parent
            if self.path.parent.parent.name == "reports":
                command = f"rbs import {shlex.quote(str(export))} --home {shlex.quote(str(home))}"
            else:
                code = (f"from robustbench_sparse.results.store import ResultStore; "
                        f"print(ResultStore({json.dumps(str(self.path))}).import_jsonl({json.dumps(str(export))}))")
                command = f"python -c {shlex.quote(code)}"
            text += (f". To reuse the records of the last finished run instead, import its copy {export} after "
                     f"moving the store aside: `{command}`")
        return text

    # --- results ---------------------------------------------------------------------------

    def __contains__(self, key: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone() is not None

    def present(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        with self._connect() as db:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i : i + _CHUNK]
                rows = db.execute(f"SELECT key FROM results WHERE key IN ({','.join('?' * len(part))})", part)
                found.update(r[0] for r in rows)
        return found

    def add(self, records: Iterable[dict[str, Any]]) -> int:
        """Insert records whose key is new, in one transaction; returns how many were new."""
        rows = [(r["key"], json.dumps(r)) for r in records]
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO results (key, record) VALUES (?, ?)", rows)
            added = db.total_changes - before
            db.execute("COMMIT")
        return added

    def records(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict[str, Any]] = {}
        with self._connect() as db:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i : i + _CHUNK]
                rows = db.execute(f"SELECT key, record FROM results WHERE key IN ({','.join('?' * len(part))})", part)
                out.update((k, json.loads(r)) for k, r in rows)
        return out

    def frame(self, keys: Iterable[str]) -> pd.DataFrame:
        """The stored records of `keys`, in that order (keys without a record are left out)."""
        keys = list(keys)
        found = self.records(keys)
        return pd.DataFrame([found[k] for k in keys if k in found], columns=COLUMNS)

    def checkpoints(self, dataset: str, env: str) -> dict[tuple[str, int], set[str]]:
        """(model, seed) -> the checkpoint SHA-256s that the records of `dataset` computed in
        environment `env` (the `|env=` of their keys) were computed on: what a report built from
        imported records, without the checkpoints here, evaluates."""
        out: dict[tuple[str, int], set[str]] = {}
        with self._connect() as db:
            rows = db.execute("SELECT DISTINCT json_extract(record, '$.model'), json_extract(record, '$.seed'), "
                              "json_extract(record, '$.checkpoint') FROM results "
                              "WHERE json_extract(record, '$.dataset') = ? AND key LIKE ?", (dataset, f"%|env={env}"))
            for model, seed, sha in rows:
                out.setdefault((str(model), int(seed)), set()).add(str(sha))
        return out

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def jsonl(self, keys: Iterable[str] | None = None) -> str:
        """Every record (or those of `keys`), one JSON object per line as stored, ordered by key."""
        with self._connect() as db:
            rows = list(db.execute("SELECT key, record FROM results ORDER BY key"))
        wanted = None if keys is None else set(keys)
        return "".join(record + "\n" for key, record in rows if wanted is None or key in wanted)

    def export_jsonl(self, path: Path | None = None) -> Path:
        """A readable copy of every record (`jsonl`)."""
        path = path or self.path.with_suffix(".jsonl")
        atomic_write_text(path, self.jsonl())
        return path

    def import_jsonl(self, path: Path | None = None) -> int:
        """Insert the records of an export (`export_jsonl`) whose key is new, e.g. into a fresh
        store after a damaged one was moved aside; returns how many were new."""
        path = Path(path) if path else self.path.with_suffix(".jsonl")
        with open(path) as f:
            return self.add(json.loads(line) for line in f if line.strip())

    # --- leases ----------------------------------------------------------------------------

    def claim(self, key: str) -> bool:
        """Lease `key` to this process unless another live process holds it."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT owner, host, pid, expires FROM leases WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] != self.owner:
                owner, host, pid, expires = row
                alive = expires > now and not (host == self.host and not _pid_alive(pid))
                if alive:
                    db.execute("COMMIT")
                    return False
            db.execute(
                "INSERT OR REPLACE INTO leases (key, owner, host, pid, expires) VALUES (?, ?, ?, ?, ?)",
                (key, self.owner, self.host, os.getpid(), now + self.lease_seconds),
            )
            db.execute("COMMIT")
        with self._lock:
            self._held.add(key)
        self._start_heartbeat()
        return True

    def release(self, key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM leases WHERE key = ? AND owner = ?", (key, self.owner))
        with self._lock:
            self._held.discard(key)

    def release_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held), set()
        with self._connect() as db:
            db.executemany("DELETE FROM leases WHERE key = ? AND owner = ?", [(k, self.owner) for k in held])

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._renew, name="rbs-lease-heartbeat", daemon=True)
        self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            expires = time.time() + self.lease_seconds
            with contextlib.suppress(sqlite3.Error, UserError), self._connect() as db:
                db.executemany("UPDATE leases SET expires = ? WHERE key = ? AND owner = ?",
                               [(expires, k, self.owner) for k in held])

    def close(self) -> None:
        self._stop.set()
        self.release_all()
