"""reports/<dataset>/claims.md: each published claim (`analysis.claims`) tested on the dataset's
committed reports, from their records exports alone (no checkpoint, no store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robustbench_sparse.analysis.claims import CLAIMS, NOISE_SCORE, comparisons, verdicts
from robustbench_sparse.results.harness import Recorded, read_recorded
from robustbench_sparse.runtime import Paths, UserError, atomic_write_text


@dataclass(frozen=True)
class Claims:
    markdown: Path
    csv: Path
    verdicts: pd.DataFrame
    rows: pd.DataFrame


def _frame(recorded: Recorded) -> pd.DataFrame:
    exports = [recorded.records, *([recorded.transfer] if recorded.transfer else [])]
    return pd.DataFrame([r for e in exports for r in e.records])


def reports_by_suite(paths: Paths, dataset: str) -> dict[str, tuple[Path, Recorded]]:
    """Per suite, the dataset's report over the most training seeds (then the most records)."""
    best: dict[str, tuple[Path, Recorded]] = {}
    for folder in sorted(p.parent for p in paths.reports(dataset).glob("*/records.json")):
        recorded = read_recorded(folder)
        if recorded is None:
            continue
        suite = str(recorded.records.meta.get("suite", folder.name))
        rank = (len(recorded.seeds), len(recorded.records.records))
        held = best.get(suite)
        if held is None or rank > (len(held[1].seeds), len(held[1].records.records)):
            best[suite] = (folder, recorded)
    return best


def _seeds(recorded: Recorded) -> str:
    seeds = recorded.seeds
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds"


def build_claims(paths: Paths, dataset: str) -> Claims:
    """Test every claim on the dataset's committed reports; write claims.md and claims.csv beside them."""
    reports = reports_by_suite(paths, dataset)
    if not reports:
        raise UserError(f"no report with a records.json under {paths.reports(dataset)}: build one first "
                        f"(`rbs benchmark --dataset {dataset}`, or `rbs report` from imported records)")
    records = {suite: _frame(recorded) for suite, (_, recorded) in reports.items()}
    rows = comparisons(records)
    masking = records.get("masking")
    measured_on = {suite: f"[{folder.name}]({folder.name}/report.md) ({_seeds(recorded)}, "
                          f"{recorded.records.meta.get('test_size')} test images)"
                   for suite, (folder, recorded) in reports.items()}
    table = verdicts(rows, CLAIMS, masking, measured_on)
    folder = paths.reports(dataset)
    md, csv = folder / "claims.md", folder / "claims.csv"
    atomic_write_text(md, render(dataset, table, rows, measured_on.get("masking")))
    atomic_write_text(csv, rows.to_csv(index=False))
    return Claims(md, csv, table, rows)


def render(dataset: str, table: pd.DataFrame, rows: pd.DataFrame, masking: str | None) -> str:
    shown = rows.assign(
        strength=rows["strength"].map(lambda s: "" if pd.isna(s) else f"{s:g}"),
        difference=[f"{d:+,.0f} images" if e == NOISE_SCORE else f"{d:+.1f} points"
                    for d, e in zip(rows["difference"], rows["evaluation"], strict=True)],
        p=rows["p"].map(lambda p: "" if pd.isna(p) else f"{p:.2g}"),
        **{"p (Holm)": rows["p (Holm)"].map(lambda p: "" if pd.isna(p) else f"{p:.2g}")})
    lines = [
        f"# The published claims, tested on `{dataset}`", "",
        "Built by `rbs claims` from the records of the committed reports named in each row (no training). "
        "Each claim is a set of comparisons \"A is more robust than B\"; each comparison is tested like the "
        "reports' differences (Welch's t over training seeds, else McNemar over the same images; noise scores "
        "with Welch's t, else Wilcoxon over images), Holm-corrected over this whole page at α = 0.05. "
        "Verdicts: holds (every comparison significant in the claimed direction), holds in part, does not hold "
        "(significant the other way), mixed, not significant, and masked (an attack claim that holds under "
        "the standard attacks but leaves no significant gain under every attack of the masking report"
        + (f": {masking}" if masking else ", which this dataset does not have yet") + ").", "",
        table.to_markdown(index=False), "",
        "## Every comparison", "",
        "`difference`: A minus B (accuracy points, or images of the noise score); `source`: the model the "
        "adversarial examples were crafted on (transfer).", "",
        shown.to_markdown(index=False) if len(rows) else "(no comparison could be measured)", "",
    ]
    return "\n".join(lines)
