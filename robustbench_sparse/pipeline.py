"""The whole jobs, as Python functions: `benchmark`, `baseline` and `check`.

The CLI calls these and only prints; notebooks and CI scripts get the same behaviour. Every input
is checked before any training or evaluation starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_sparse.analysis.regression import (
    CheckResult,
    check_setup,
    compare,
    make_baseline,
    read_baseline,
    write_baseline,
)
from robustbench_sparse.data.datasets import default_data_root, load_dataset
from robustbench_sparse.evaluation.cells import test_fingerprint
from robustbench_sparse.execution.executor import Executor
from robustbench_sparse.execution.registry import open_executor
from robustbench_sparse.execution.zoo_training import TrainOutcome, train_zoo
from robustbench_sparse.report import Report, build_report
from robustbench_sparse.results import harness
from robustbench_sparse.results.reference import Comparison, guard
from robustbench_sparse.results.reference import compare as compare_with_reference
from robustbench_sparse.results.request import RunRequest
from robustbench_sparse.results.transfer import run_transfer
from robustbench_sparse.runtime import UserError

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def train_missing(
    setup: harness.Setup, data_root: Path | str | None = None, download: bool = False, force: bool = False,
    executor: Executor | str = "local",
) -> list[TrainOutcome]:
    """Train the setup's models that have no up-to-date checkpoint (for every seed)."""
    root = Path(data_root) if data_root else default_data_root()
    with open_executor(executor) as runner:
        return train_zoo(setup.paths, setup.specs, setup.info.name,
                         lambda: load_dataset(setup.info.name, root, download), setup.seeds, setup.device, force,
                         runner, setup.runs)


def _train_and_evaluate(
    setup: harness.Setup, request: RunRequest, executor: Executor, echo: Echo, step: str = "",
) -> tuple[harness.Plan, pd.DataFrame]:
    data_root, download = request.data_root, request.download
    echo(f"{step}train (only what is missing)")
    outcomes = train_missing(setup, data_root, download, executor=executor)
    trained = sum(o.action != "cached" for o in outcomes)
    echo(f"    trained {trained}, cached {len(outcomes) - trained}")
    the_plan = harness.plan_from(setup, data_root, download)
    for note in setup.notes:
        echo(f"    note: {note}")
    echo(f"{step}evaluate (suite {setup.run_name!r}, {the_plan.n} test images)")
    frame = harness.run(the_plan, executor=executor)
    return the_plan, frame


@dataclass(frozen=True)
class BenchmarkResult:
    plan: harness.Plan
    records: pd.DataFrame
    moves: pd.DataFrame | None
    report: Report
    # how the run compares with the report that was in its folder (None: there was none)
    reference: Comparison | None = None


def benchmark(*args: Any, echo: Echo = _quiet, replace: bool = False, **given: Any) -> BenchmarkResult:
    """Train what is missing, evaluate, transfer (when the suite declares it), report; takes a
    `RunRequest` or its fields. A report already in the run's folder that was made another way
    (other models, test images, regime) is refused before any work unless `replace`; one made the
    same way is the reference the run is compared with (`BenchmarkResult.reference`)."""
    request = RunRequest.of(*args, **given)
    setup = harness.prepare(request)
    reference = guard(setup, replace)
    with request.open_executor() as runner:
        the_plan, frame = _train_and_evaluate(setup, request, runner, echo, step="1-2/4 ")
        moves = transfer_step(the_plan, runner, echo)
    echo("4/4 report")
    report = build_report(the_plan, replace=True)  # checked above, before any work
    comparison = compare_with_reference(reference, the_plan, frame, moves) if reference is not None else None
    return BenchmarkResult(the_plan, frame, moves, report, comparison)


def transfer_step(plan: harness.Plan, runner: Executor, echo: Echo) -> pd.DataFrame | None:
    """The suite's transfer attacks (None when it declares none)."""
    if not plan.suite.transfer_cells():
        echo("3/4 transfer: the suite declares none")
        return None
    echo("3/4 transfer")
    return run_transfer(plan, executor=runner)


def baseline(out: Path | str, *args: Any, echo: Echo = _quiet, **given: Any) -> dict[str, Any]:
    """Write a robustness baseline: per model, evaluation and strength the accuracy (mean and std
    over seeds), and the masking checks that fired. Takes a `RunRequest` or its fields; the
    suite defaults to `quick`."""
    request = RunRequest.of(*args, **given).resolved(suite="quick")
    setup = harness.prepare(request)
    with request.open_executor() as runner:
        the_plan, frame = _train_and_evaluate(setup, request, runner, echo)
    doc = make_baseline(frame, the_plan)
    write_baseline(doc, Path(out))
    return doc


def check(
    baseline_file: Path | str, tolerance: float = 1.0, sigma: float | None = None, *args: Any, echo: Echo = _quiet,
    **given: Any,
) -> tuple[dict[str, Any], CheckResult]:
    """Re-run (or reuse) the baseline's evaluations on the baseline's models and seeds, and compare.
    The dataset, suite, backend, test size, seeds and batch size come from the baseline; options
    given here (a `RunRequest` or its fields: dataset, suite, backend) must match it; the request's
    models and seeds are not used. Everything is checked before any work."""
    request = RunRequest.of(*args, **given)
    dataset, suite, backend = request.dataset, request.suite, request.backend
    doc = read_baseline(Path(baseline_file))
    for what, given, recorded in (("--dataset", dataset, doc["dataset"]), ("--suite", suite, doc["suite"])):
        if given is not None and given != recorded:
            raise UserError(f"{what} {given} differs from the baseline's {recorded!r}")
    if tolerance < 0 or (sigma is not None and sigma < 0):
        raise UserError("--tolerance and --sigma must be >= 0")
    if sigma is not None and len(doc["seeds"]) < 2:
        raise UserError("--sigma needs a baseline over several seeds (this one has one); use --tolerance")
    recorded_run = replace(request, dataset=doc["dataset"], suite=doc["suite"], models=tuple(doc["models"]),
                           seeds=tuple(doc["seeds"]), backend=doc.get("backend"))
    setup = harness.prepare(recorded_run)
    if backend is not None:
        asked = harness.prepare(replace(recorded_run, backend=backend)).backend
        if asked != doc.get("backend"):
            raise UserError(f"--backend {backend} differs from the baseline's "
                            f"{doc.get('backend') or 'backend (as the suite says)'}")
    check_setup(doc, setup)
    data = load_dataset(setup.info.name, request.data_root or default_data_root(), request.download)
    n = len(data.test_x) if setup.suite.test_size is None else min(setup.suite.test_size, len(data.test_x))
    recorded = doc.get("environment", {}).get("test_fingerprint")
    if n != doc["test_size"] or (recorded and test_fingerprint(data.test_x[:n], data.test_y[:n]) != recorded):
        raise UserError(f"the test images differ from the baseline's ({n} now, {doc['test_size']} then, or other "
                        "images: a changed split or data file); regenerate the baseline")
    with request.open_executor() as runner:
        the_plan, frame = _train_and_evaluate(setup, request, runner, echo)
    return doc, compare(doc, frame, tolerance, sigma, the_plan.info.num_classes)
