"""One run's stored results and the statistics every report section reads, computed once."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_sparse.analysis.diagnostics import masking_checks
from robustbench_sparse.analysis.stats import compare_noise_scores, reference_model
from robustbench_sparse.analysis.tables import accuracies, paper_pixel
from robustbench_sparse.perturb.attacks import ATTACKS, attack_of
from robustbench_sparse.report.tables import comparisons, corruption_table
from robustbench_sparse.results import harness
from robustbench_sparse.results.transfer import transfer_cells
from robustbench_sparse.runtime import UserError

# The verdict's headline attack budget when every white-box attack of the suite runs it.
HEADLINE_EPS = 0.3


@dataclass(frozen=True, eq=False)
class RunData:
    """What a report is made of: the plan, its stored records and the comparisons with the reference."""

    plan: harness.Plan
    white: pd.DataFrame  # the suite's own cells (white-box and noise)
    moves: pd.DataFrame  # the transfer cells (empty without a [transfer] table)
    everything: pd.DataFrame  # white plus the transfer cells whose source is another model
    missing: int  # declared cells with no stored result
    reference: str  # the model every other is compared with (`dense` where present)
    tests: pd.DataFrame  # `comparisons`: every accuracy cell and worst case against the reference
    scores: pd.DataFrame  # `stats.compare_noise_scores` against the reference
    checks: pd.DataFrame  # `diagnostics.masking_checks`
    corrupted: pd.DataFrame  # `corruption_table` (empty without MNIST-C cells)
    # The exports written with the report, by stem ("records", "transfer"): `harness.export_doc`.
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        """The run's metadata as its records export holds it: the environment that computed the numbers."""
        return dict(self.exports["records"]["meta"]) if "records" in self.exports else {}

    @property
    def date(self) -> str:
        """When the numbers were last exported (ISO 8601): the report's date, a function of its data."""
        dates = [doc["meta"]["date"] for doc in self.exports.values()]
        return max(dates, key=dt.datetime.fromisoformat) if dates else ""

    @property
    def models(self) -> list[str]:
        return [s.name for s in self.plan.specs]

    @property
    def folder(self) -> Path:
        return self.plan.folder

    @property
    def figures_dir(self) -> Path:
        return self.plan.folder / "figures"

    @property
    def fired(self) -> dict[str, list[str]]:
        """Per model, the masking checks that fired for any seed ("5. BPDA beats plain gradients"), by number."""
        rows = self.checks[self.checks["status"] == "fired"]
        return {model: sorted(set(part["check"]), key=lambda c: int(c.split(".", 1)[0]))
                for model, part in rows.groupby("model", sort=False)}

    @property
    def headline_eps(self) -> float | None:
        """The largest eps > 0 every white-box attack of the suite runs (HEADLINE_EPS when they all do)."""
        shared: set[float] | None = None
        for evaluation in self.plan.suite.evaluations:
            if evaluation.kind in ATTACKS and attack_of(evaluation.kind).gradients:  # white-box
                eps = {s for s in evaluation.strengths if s > 0}
                shared = eps if shared is None else shared & eps
        if not shared:
            return None
        return HEADLINE_EPS if HEADLINE_EPS in shared else max(shared)


def load_run(plan: harness.Plan) -> RunData:
    """Read the plan's stored cells (re-running nothing) and compute the shared statistics. A plan
    made from the run's exports (`harness.report_plan` without the checkpoints) reads their records."""
    store = harness.open_store(plan.paths, plan.info.name)
    cells = plan.cells()
    moved = transfer_cells(plan) if plan.suite.transfer_cells() else []
    recorded = plan.recorded
    if recorded is None:
        white = harness.cell_frame(store, cells, plan)
        moves = harness.cell_frame(store, moved, plan)
        missing = len({c.key for c in cells + moved} - store.present(c.key for c in cells + moved))
    else:
        white = harness.recorded_frame(plan, cells, recorded.records, store)
        moves = harness.recorded_frame(plan, moved, recorded.transfer, store)
        missing = len(cells) + len(moved) - len(white) - len(moves)
    if white.empty:
        backend = f" --backend {plan.setup.backend}" if plan.setup.backend else ""
        if recorded is not None:
            raise UserError(f"no cell of suite {plan.suite.name!r} is in {recorded.records.path} (the suite changed "
                            "since its report was written?); train and evaluate its models to rebuild it")
        raise UserError(f"no stored results for run {plan.setup.run_name!r} on {plan.info.name}; run "
                        f"`rbs evaluate --dataset {plan.info.name} --suite {plan.suite.name}{backend}` first"
                        + harness.other_seeds(plan.setup))
    exports = {"records": harness.export_doc(white, plan, "records")}
    if not moves.empty:
        exports["transfer"] = harness.export_doc(moves, plan, "transfer")
    everything = (pd.concat([white, moves[moves["source"] != moves["model"]]], ignore_index=True)
                  if not moves.empty else white)
    reference = reference_model(list(dict.fromkeys(white["model"])))
    scores = compare_noise_scores(paper_pixel(accuracies(white[white["source"] == white["model"]])), reference)
    return RunData(plan, white, moves, everything, missing, reference, comparisons(white, everything), scores,
                   masking_checks(everything, plan.info.num_classes), corruption_table(white, reference), exports)
