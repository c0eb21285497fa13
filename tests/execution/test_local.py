"""The local pool's scheduling: a pruned sweep's sets are crafted in order, each exactly once, and
the workers are kept busy with other sweeps meanwhile."""

from __future__ import annotations

import concurrent.futures as futures
import threading
import time
from types import SimpleNamespace

import torch

from robustbench_sparse.data.datasets import DatasetInfo
from robustbench_sparse.evaluation.cells import Cell, Job
from robustbench_sparse.evaluation.suites import parse_suite
from robustbench_sparse.execution import local
from robustbench_sparse.execution.executor import Outcome

SUITE = """
description = "two pruned sweeps"
prune = true
[[evaluations]]
kind = "pgd"
eps = [0.0, 0.1, 0.15, 0.2, 0.25, 0.3]
steps = 2
alpha = 0.01
"""


def _jobs(info: DatasetInfo) -> list[Job]:
    pgd = parse_suite(SUITE, "two", info).evaluation("pgd")
    return [Job((Cell("mnist5k", model, 0, "c" * 64, pgd, eps, 4, 0, 4, "d" * 64),))
            for model in ("a", "b") for eps in pgd.strengths]


def test_a_pruned_sweep_is_crafted_in_order_once_while_other_sweeps_run(monkeypatch, small_mnist):
    lock = threading.Lock()
    started: list[str] = []
    finished: set[str] = set()
    running: set[str] = set()
    overlap = []

    def fake_run(token, shared, job, recipes, survivors, paths):  # what a worker would do, recorded
        cell = job.cells[0]
        with lock:
            previous = cell.previous
            # the set it builds on is finished: the worker reads it from the cache, never crafts it
            assert previous is None or previous.set_key in finished, (cell.strength, previous.strength)
            assert cell.set_key not in started, "a set crafted twice"
            started.append(cell.set_key)
            running.add(cell.model)
            overlap.append(len(running))
        time.sleep(0.05)
        with lock:
            finished.add(cell.set_key)
            running.discard(cell.model)
        return Outcome(job, (torch.ones(cell.n, dtype=torch.bool),), (0.0,))

    monkeypatch.setattr(local, "_run", fake_run)
    jobs = _jobs(small_mnist.info)
    ws = SimpleNamespace(info=small_mnist.info, x=torch.zeros(4, 1, 28, 28), y=torch.zeros(4, dtype=torch.long),
                         device=torch.device("cpu"), cache=SimpleNamespace(folder="unused"), ensemble=(),
                         checkpoint=lambda name, seed: None)
    with futures.ThreadPoolExecutor(2) as pool:
        outcomes = list(local.LocalExecutor(workers=2)._schedule(pool, 2, iter(jobs), ws))
    assert sorted(o.job.cells[0].set_key for o in outcomes) == sorted(j.cells[0].set_key for j in jobs)
    assert len(started) == len(jobs)
    assert max(overlap) == 2  # the two sweeps ran side by side
