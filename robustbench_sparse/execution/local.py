"""The local executor: jobs and training on this machine, in a pool of worker processes.

Every task computes on one torch thread in the CPU regime (`runtime.CPU_REGIME`), so a machine's
cores are used by running tasks side by side, one per worker process, as Ray runs its one-CPU
tasks. Records and checkpoints are therefore the same with any number of workers, and the same as
Ray's. With one worker (or on CUDA, where one process fills the device) everything runs in this
process.

Workers are started with `spawn` (a fresh interpreter: forking a process whose OpenMP threads are
running can hang), once per process and size, and reused by every later run. Each job travels with
the test set (through shared memory) and the checkpoints it needs, as bytes. The driver hands jobs over lazily (it leases each one as it does)
and holds back a job whose set builds on a set still being crafted or itself held back (a pruned
sweep's next eps), so no set is crafted twice. Workers read and write the crafted-set cache, whose files are written
atomically; the driver alone writes the result store.
"""

from __future__ import annotations

import atexit
import concurrent.futures as futures
import itertools
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from robustbench_sparse.data.datasets import Dataset, DatasetInfo
from robustbench_sparse.evaluation.cells import Job
from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.execution.executor import ENSEMBLE, Outcome, TrainTask, Workspace, run_job
from robustbench_sparse.execution.registry import no_options
from robustbench_sparse.runtime import NATIVE_REGIME, UserError, regime_block, requested_regime
from robustbench_sparse.zoo.build import build_model
from robustbench_sparse.zoo.spec import ModelSpec

Recipe = tuple[ModelSpec, bytes]  # a model as it travels: its spec and its checkpoint's bytes


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --- what runs in a worker process ---------------------------------------------------------------

_STATE: dict[str, Any] = {}
Shared = tuple[DatasetInfo, torch.Tensor, torch.Tensor, str, str, tuple[str, ...]]  # what every job of a map needs


def _start() -> None:
    """A worker's start: it computes in the CPU regime for the rest of its life."""
    _STATE["regime"] = regime_block()
    _STATE["regime"].__enter__()


def _importable(paths: tuple[str, ...]) -> None:
    """The driver's import path in the worker: a family module beside a home's models/ (put on the
    driver's path by `load_zoo`) must import here too."""
    sys.path.extend(p for p in paths if p not in sys.path)


def _run(token: str, shared: Shared, job: Job, recipes: dict[tuple[str, int], Recipe],
         survivors: dict[str, torch.Tensor], paths: tuple[str, ...]) -> Outcome:
    """One job in a worker. `shared` travels with every job (its tensors through shared memory, so
    at the cost of a handle); the workspace built from it is kept while the same map (`token`) runs."""
    _importable(paths)
    if _STATE.get("token") != token:
        info, x, y, device, cache, ensemble = shared
        _STATE.update(token=token, recipes={}, ws=Workspace(
            info, x, y, torch.device(device), lambda name, seed: _STATE["recipes"][(name, seed)], ArtifactStore(cache),
            ensemble=ensemble))
    ws: Workspace = _STATE["ws"]
    _STATE["recipes"].update(recipes)
    ws.scored_on_source.update(survivors)
    return run_job(job, ws)


def _train(spec: ModelSpec, data: Dataset, seed: int, device: str,
           paths: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], float]:
    from robustbench_sparse.training.train import train_model

    _importable(paths)

    started = time.perf_counter()
    model = train_model(spec, data, seed, torch.device(device))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, time.perf_counter() - started


# One pool per size for the life of this process: starting a worker (a fresh interpreter that
# imports torch) takes seconds, so every run of a session (a test session, a notebook) reuses it.
_POOLS: dict[int, futures.ProcessPoolExecutor] = {}


@atexit.register
def _close_pools() -> None:
    """Stop the workers before the interpreter tears its modules down: a pool left to the garbage
    collector then prints "Exception ignored in ... weakref_cb" at every exit."""
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def _pool(size: int) -> futures.ProcessPoolExecutor:
    pool = _POOLS.get(size)
    if pool is None or getattr(pool, "_broken", False):
        pool = futures.ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("spawn"), initializer=_start)
        _POOLS[size] = pool
    return pool


# --- the executor --------------------------------------------------------------------------------

class LocalExecutor:
    """Jobs and training on this machine: `workers` processes (default: one per core; on CUDA or
    in the native regime, one), each task on one torch thread; with one worker, in this process,
    in the order given."""

    def __init__(self, workers: int | None = None, **unused: Any) -> None:
        no_options("local", unused)
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        self.workers = workers

    def _size(self, device: torch.device, tasks: int) -> int:
        # On CUDA one process fills the device; in the native regime torch already uses every core.
        alone = device.type == "cuda" or requested_regime() == NATIVE_REGIME
        wanted = self.workers if self.workers is not None else (1 if alone else default_workers())
        return max(1, min(wanted, tasks))

    def map(self, jobs: Iterable[Job], ws: Workspace) -> Iterator[Outcome]:
        jobs = iter(jobs)
        first = list(itertools.islice(jobs, 2))
        if self._size(ws.device, len(first)) == 1:  # one worker, or one job: not worth other processes
            for job in itertools.chain(first, jobs):
                with regime_block():
                    outcome = run_job(job, ws)
                yield outcome
            return
        size = self._size(ws.device, 2 ** 31)
        yield from self._schedule(_pool(size), size, itertools.chain(first, jobs), ws)

    def _schedule(self, pool: futures.ProcessPoolExecutor, size: int, jobs: Iterator[Job],
                  ws: Workspace) -> Iterator[Outcome]:
        token = uuid.uuid4().hex
        shared = (ws.info, ws.x, ws.y, str(ws.device), str(ws.cache.folder), ws.ensemble)
        running: dict[futures.Future[Outcome], str] = {}  # future -> the set key its job crafts
        held: list[Job] = []  # jobs whose set builds on a set being crafted
        scored: dict[str, torch.Tensor] = {}  # set key -> its source's flags on it (see Workspace)
        exhausted = False

        def waits_on(job: Job) -> str | None:
            """The set this job's set builds on, while a job running or held here still crafts it
            (a held one too: a sweep's third eps must not start while its second waits)."""
            previous = job.cells[0].previous
            if previous is None:
                return None
            busy = set(running.values()) | {j.cells[0].set_key for j in held}
            return previous.set_key if previous.set_key in busy else None

        def submit(job: Job) -> None:
            first = job.cells[0]
            names = {(c.model, c.seed) for c in job.cells} | {(first.crafted_on[0], first.seed)}
            if any(name == ENSEMBLE for name, _ in names):
                names |= {(m, first.seed) for m in ws.ensemble}
            recipes = {key: ws.checkpoint(*key) for key in names if key[0] != ENSEMBLE}
            previous = first.previous
            survivors = {previous.set_key: scored[previous.set_key]} if previous and previous.set_key in scored else {}
            running[pool.submit(_run, token, shared, job, recipes, survivors, tuple(sys.path))] = first.set_key

        try:
            while True:
                for job in list(held):  # in order: a sweep's next eps only once the one before it left
                    if waits_on(job) is None:
                        held.remove(job)
                        submit(job)
                # Lease little ahead: until every worker has a job and one more waits (held jobs,
                # the rest of sweeps under way, do not count: they would leave workers idle).
                while not exhausted and len(running) < 2 * size:
                    job = next(jobs, None)
                    if job is None:
                        exhausted = True
                    elif waits_on(job) is None:
                        submit(job)
                    else:
                        held.append(job)
                if not running:
                    return
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    outcome = future.result()  # a job that failed raises here
                    for cell, flags in zip(outcome.job.cells, outcome.flags, strict=True):
                        if outcome.job.crafts and cell.crafted_on[0] == cell.model:
                            scored[cell.set_key] = flags
                    yield outcome
        finally:
            for future in running:  # the run stopped early: jobs not started are dropped
                future.cancel()

    def train(self, tasks: list[TrainTask], data: Dataset, device: torch.device) -> Iterator[
            tuple[ModelSpec, int, nn.Module, float]]:
        from robustbench_sparse.training.train import train_model

        size = self._size(device, len(tasks))
        if size == 1:
            for spec, seed in tasks:
                started = time.perf_counter()
                with regime_block():
                    model = train_model(spec, data, seed, device)
                yield spec, seed, model, time.perf_counter() - started
            return
        running = {_pool(size).submit(_train, spec, data, seed, str(device), tuple(sys.path)): (spec, seed)
                   for spec, seed in tasks}
        try:
            for future in futures.as_completed(running):
                spec, seed = running[future]
                state, seconds = future.result()
                model = build_model(spec, data.info)
                model.load_state_dict(state)
                yield spec, seed, model.to(device).eval(), seconds
        finally:
            for future in running:
                future.cancel()

    def close(self) -> None:
        pass
