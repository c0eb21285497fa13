"""Reports from stored results: sections (a registry), the verdict, figures, Markdown/HTML/LaTeX
renderings, model cards and the index page. `build_report` is the entry point."""

from robustbench_sparse.report.build import FORMATS, Report, build_report
from robustbench_sparse.report.cards import CARD_SCHEMA, write_cards
from robustbench_sparse.report.data import RunData
from robustbench_sparse.report.index import build_index
from robustbench_sparse.report.registry import Section, Table, register_section, section_names, unregister_section

__all__ = ["CARD_SCHEMA", "FORMATS", "Report", "RunData", "Section", "Table", "build_index", "build_report",
           "register_section", "section_names", "unregister_section", "write_cards"]
