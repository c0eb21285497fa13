"""reports/index.html: every dataset and run with a report, each with its overview table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from markupsafe import Markup

from robustbench_sparse.report.render import templates
from robustbench_sparse.runtime import Paths, atomic_write_text


def build_index(paths: Paths) -> Path:
    """Write reports/index.html from the reports present (their tables/overview.csv) and return its path."""
    root = paths.home / "reports"
    runs = sorted(p.parent.parent for p in root.glob("*/*/tables/overview.csv")
                  if any((p.parent.parent / f"report.{x}").exists() for x in ("html", "tex")))
    datasets: dict[str, list[dict[str, object]]] = {}
    for run in runs:
        table = pd.read_csv(run / "tables" / "overview.csv")
        link = f"{run.parent.name}/{run.name}/report.{'html' if (run / 'report.html').exists() else 'tex'}"
        datasets.setdefault(run.parent.name, []).append(
            {"name": run.name, "link": link, "table": Markup(table.to_html(index=False, na_rep="", border=0))})
    index = root / "index.html"
    atomic_write_text(index, templates().get_template("index.html.j2").render(datasets=datasets))
    return index
