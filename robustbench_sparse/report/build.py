"""`build_report`: a run's report from stored results only (nothing is re-run).

Cells a suite declares that have no stored result are counted as missing and left blank. A plan
made from the run's exports (`harness.report_plan`, when its checkpoints are not here) rebuilds the
report from the records committed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robustbench_sparse.report import render, sections  # noqa: F401  (sections: registers the built-in ones)
from robustbench_sparse.report.cards import check_architectures, write_cards
from robustbench_sparse.report.data import load_run
from robustbench_sparse.report.index import build_index
from robustbench_sparse.report.registry import make_sections
from robustbench_sparse.report.sections import regime_line
from robustbench_sparse.results import harness
from robustbench_sparse.results.reference import guard
from robustbench_sparse.runtime import UserError, atomic_write_text

FORMATS = ("markdown", "html", "latex")
FILES = {"markdown": "report.md", "html": "report.html", "latex": "report.tex"}


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote."""

    folder: Path
    markdown: Path
    html: Path
    figures: list[Path]
    missing: int
    latex: Path | None = None


def build_report(plan: harness.Plan, formats: tuple[str, ...] = ("markdown", "html"), replace: bool = False) -> Report:
    """Write the report under reports/<dataset>/<run>/ (report.md and report.html, or report.tex
    with `formats=("latex",)`, and every other format already there), tables/*.csv, figures/*, its records export (records.json/csv, and
    transfer.json/csv with transfer cells), each model's card under reports/<dataset>/cards/, and
    reports/index.html. Built twice from the same numbers, every file is the same, byte for byte:
    dates and versions are those the records export holds, not the clock's."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise UserError(f"unknown report format(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                        f"valid: {', '.join(FORMATS)}")
    if plan.recorded is not None or plan.imported:  # numbers of checkpoints not here: of the models their cards describe
        check_architectures(plan)
    if plan.recorded is None:  # numbers from the store: never written over a report made another way unless asked
        guard(plan.setup, replace)
    try:
        data = load_run(plan)
        page = render.Page(f"robustbench-sparse: {plan.info.name}, suite {plan.setup.run_name}",
                           tuple(make_sections(data)), data.missing, regime_line(data.meta))
    except TypeError as err:  # a per-image flag that is None: an export from before records carried them
        legacy = [e for e in (plan.recorded.records, plan.recorded.transfer) if e is not None and not e.complete] \
            if plan.recorded is not None else []
        if not legacy:
            raise
        raise UserError(f"{legacy[0].path} holds no per-image results (it was exported before records carried "
                        "them) and this report's worst cases and paired tests need them: rebuild it where its "
                        "checkpoints are (`rbs train`, `rbs evaluate`, `rbs report`), or `rbs import` the "
                        "results.jsonl of the machine that computed it") from err
    folder = plan.folder
    # A format already beside the report renders the same folder: it is written again too, and a
    # table or figure this build does not make is removed, so that no file there describes numbers
    # the folder no longer holds (a report.tex left from the report that --replace replaced).
    formats = tuple(f for f in FORMATS if f in formats or (folder / FILES[f]).is_file())
    tables = {folder / "tables" / f"{table.name}.csv": table.csv
              for section in page.sections for table in section.tables if not table.csv.empty}
    for path, frame in tables.items():
        atomic_write_text(path, frame.to_csv(index=False))
    figures = [f for s in page.sections for f in s.figures]
    made = {p.name for p in [*tables, *figures]}
    for stale in [*(folder / "tables").glob("*.csv"), *(folder / "figures").glob("*")]:
        if stale.is_file() and stale.name not in made:
            stale.unlink()
    renderers = {"markdown": lambda: render.markdown(page, folder), "html": lambda: render.html(page),
                 "latex": lambda: render.latex(page, folder)}
    written = {f: folder / FILES[f] for f in formats}
    for f, path in written.items():
        atomic_write_text(path, renderers[f]())
    frames = {"records": data.white, "transfer": data.moves}
    for stem, doc in data.exports.items():  # the records beside the report change with it, and only with it
        harness.write_export(doc, frames[stem], plan, stem)
    write_cards(plan, data.white, data.everything, data.checks, data.tests, data.meta, data.date)
    build_index(plan.paths)
    return Report(folder, written.get("markdown", folder / "report.md"), written.get("html", folder / "report.html"),
                  figures, data.missing, written.get("latex"))
