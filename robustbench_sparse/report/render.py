"""One page, three renderings: Markdown, a self-contained HTML page (Jinja) and LaTeX (pdflatex).

Section text is Markdown-light: `**bold**`, `` `code` `` and `[text](link)`; each renderer maps it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup, escape

from robustbench_sparse.report.registry import Section, Table

TEMPLATES = Path(__file__).parent / "templates"
LINK = re.compile(r"\[([^\[\]]+)\]\(([^()\s]+)\)")


@dataclass(frozen=True, eq=False)
class Page:
    """A report's content in reading order."""

    title: str
    sections: tuple[Section, ...]
    missing: int  # declared cells with no stored result
    regime: str = ""  # under the title: which device and compute regime made the numbers


@cache
def templates() -> jinja2.Environment:
    """The report's Jinja templates, autoescaped."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["inline"] = inline_html
    env.filters["table"] = table_html
    env.filters["png"] = png_uri
    return env


# --- Markdown ----------------------------------------------------------------------------------------

def markdown(page: Page, folder: Path) -> str:
    lines = [f"# {page.title}", ""]
    lines += [f"*{page.regime}*", ""] if page.regime else []
    if page.missing:
        lines += [f"**{page.missing} declared cells have no stored result yet** (run `rbs evaluate` / "
                  "`rbs transfer`); their entries are blank.", ""]
    for section in page.sections:
        lines += [f"## {section.title}", ""]
        lines += [" ".join(section.paragraphs), ""] if section.paragraphs else []
        for table in section.tables:
            lines += [f"### {table.title}", ""] if table.title else []
            lines += [table.frame.to_markdown(index=False), ""]
        lines += [f"![{p.stem}]({p.relative_to(folder).as_posix()})\n" for p in section.pngs]
        if section.facts:
            lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in section.facts), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --- HTML --------------------------------------------------------------------------------------------

def inline_html(text: str) -> Markup:
    """Markdown-light text as HTML, everything else escaped."""
    out = str(escape(text))
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return Markup(LINK.sub(r"<a href='\2'>\1</a>", out))


def table_html(table: Table) -> Markup:
    """pandas' HTML table (escaped by pandas), with the links in its cells made links."""
    body = table.frame.to_html(index=False, classes="results", na_rep="", border=0)
    return Markup(LINK.sub(r"<a href='\2'>\1</a>", body))


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def html(page: Page) -> str:
    """One self-contained page (plots as data URIs, no external resources), read top-down."""
    return templates().get_template("report.html.j2").render(page=page)


# --- LaTeX -------------------------------------------------------------------------------------------

# pdflatex reads these through math mode or textcomp; everything else is escaped by pandas.
LATEX_CHARS = {"±": r"$\pm$", "ε": r"$\varepsilon$", "η": r"$\eta$", "σ": r"$\sigma$", "≤": r"$\leq$",
               "≥": r"$\geq$", "×": r"$\times$", "→": r"$\rightarrow$", "∞": r"$\infty$", "α": r"$\alpha$",
               "−": "-", "’": "'", "“": "``", "”": "''", "…": r"\ldots{}", "β": r"$\beta$", "Δ": r"$\Delta$"}


def _unlink(text: str) -> str:
    return LINK.sub(r"\1", text)


def tex(text: str) -> str:
    """Plain text for LaTeX: links reduced to their text, special characters escaped, the report's
    Greek and symbols mapped."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    out = "".join(special.get(c, c) for c in _unlink(text).replace("**", "").replace("`", ""))
    return _tex_symbols(out)


def _tex_symbols(text: str) -> str:
    for char, symbol in LATEX_CHARS.items():
        text = text.replace(char, symbol)
    return "".join(c if ord(c) < 128 else "?" for c in text)


def latex_table(table: pd.DataFrame) -> str:
    """A booktabs table from pandas' Styler (escaped for LaTeX), ± and * marks kept, squeezed to the
    text width when it has many columns."""
    frame = table.copy()
    frame.columns = [str(c) for c in frame.columns]
    styler = frame.style.hide(axis="index").format(
        lambda v: "" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else _unlink(str(v)), escape="latex")
    styler = styler.format_index(escape="latex", axis=1)
    body = _tex_symbols(styler.to_latex(hrules=True, column_format="l" + "r" * (len(frame.columns) - 1)))
    if len(frame.columns) > 6:
        body = "\\resizebox{\\linewidth}{!}{%\n" + body + "}"
    return "\\begin{center}\n" + body + "\\end{center}\n"


def latex(page: Page, folder: Path) -> str:
    """A standalone LaTeX document (booktabs, graphicx) in the HTML page's order; its tables paste
    into a paper as they are."""
    lines = [r"\documentclass[10pt]{article}", r"\usepackage[utf8]{inputenc}", r"\usepackage[T1]{fontenc}",
             r"\usepackage{booktabs}", r"\usepackage{graphicx}", r"\usepackage[margin=2cm]{geometry}",
             r"\begin{document}", f"\\section*{{{tex(page.title)}}}", ""]
    lines += [f"\\emph{{{tex(page.regime)}}}", ""] if page.regime else []
    if page.missing:
        lines += [f"\\textbf{{{page.missing} declared cells have no stored result yet.}}", ""]
    for section in page.sections:
        lines += [f"\\subsection*{{{tex(section.title)}}}\\label{{{section.id}}}"]
        lines += [tex(" ".join(section.paragraphs)), ""] if section.paragraphs else []
        for table in section.tables:
            lines += [f"\\paragraph*{{{tex(table.title)}}}"] if table.title else []
            lines.append(latex_table(table.frame))
        for plot in section.pngs:
            lines += [r"\begin{center}",
                      f"\\includegraphics[width=\\linewidth]{{{plot.relative_to(folder).as_posix()}}}", r"\end{center}"]
        if section.facts:
            lines += [r"\begin{itemize}", *(f"\\item \\textbf{{{tex(k)}}}: {tex(v)}" for k, v in section.facts),
                      r"\end{itemize}"]
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"
