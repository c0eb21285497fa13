"""`build_report`: a run's report from stored results only (nothing is re-run).

Cells a suite declares that have no stored result are counted as missing and left blank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robustbench_sparse.report import render, sections  # noqa: F401  (sections: registers the built-in ones)
from robustbench_sparse.report.cards import write_cards
from robustbench_sparse.report.data import load_run
from robustbench_sparse.report.index import build_index
from robustbench_sparse.report.registry import make_sections
from robustbench_sparse.results import harness
from robustbench_sparse.runtime import UserError, atomic_write_text

FORMATS = ("markdown", "html", "latex")


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote."""

    folder: Path
    markdown: Path
    html: Path
    figures: list[Path]
    missing: int
    latex: Path | None = None


def build_report(plan: harness.Plan, formats: tuple[str, ...] = ("markdown", "html")) -> Report:
    """Write the report under reports/<dataset>/<run>/ (report.md and report.html, or report.tex
    with `formats=("latex",)`), tables/*.csv, figures/*, each model's card under
    reports/<dataset>/cards/, and reports/index.html."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise UserError(f"unknown report format(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                        f"valid: {', '.join(FORMATS)}")
    data = load_run(plan)
    folder = plan.folder
    page = render.Page(f"robustbench-sparse: {plan.info.name}, suite {plan.setup.run_name}",
                       tuple(make_sections(data)), data.missing)
    for section in page.sections:
        for table in section.tables:
            if not table.csv.empty:
                atomic_write_text(folder / "tables" / f"{table.name}.csv", table.csv.to_csv(index=False))
    written: dict[str, Path] = {}
    if "markdown" in formats:
        written["markdown"] = folder / "report.md"
        atomic_write_text(written["markdown"], render.markdown(page, folder))
    if "html" in formats:
        written["html"] = folder / "report.html"
        atomic_write_text(written["html"], render.html(page))
    if "latex" in formats:
        written["latex"] = folder / "report.tex"
        atomic_write_text(written["latex"], render.latex(page, folder))
    write_cards(plan, data.white, data.everything, data.checks, data.tests)
    build_index(plan.paths)
    figures = [f for s in page.sections for f in s.figures]
    return Report(folder, written.get("markdown", folder / "report.md"), written.get("html", folder / "report.html"),
                  figures, data.missing, written.get("latex"))
