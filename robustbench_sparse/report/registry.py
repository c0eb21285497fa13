"""A report is an ordered list of sections; each is made by a function of the run's data.

Adding a section is one function and one `register_section` call:

    @register_section("my-section")
    def my_section(data: RunData) -> Section | None:
        return Section("my-section", "My section", paragraphs=("What it shows.",))

`build_report` calls every registered function in order and leaves out those that return None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from robustbench_sparse.registry import Registry

if TYPE_CHECKING:
    from robustbench_sparse.report.data import RunData


@dataclass(frozen=True, eq=False)
class Table:
    """A table as shown, and what its CSV file (tables/<name>.csv) holds."""

    frame: pd.DataFrame
    name: str  # the CSV file's stem
    data: pd.DataFrame | None = None  # the CSV's content where it differs from what is shown (plain numbers)
    title: str = ""  # a sub-heading, for a section with several tables

    @property
    def csv(self) -> pd.DataFrame:
        return self.frame if self.data is None else self.data


@dataclass(frozen=True, eq=False)
class Section:
    """One part of the page: Markdown-light text (`**bold**`, `` `code` ``, `[text](link)`), tables,
    figures (the files written; the PNGs are shown) and key-value facts."""

    id: str  # its anchor
    title: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[Path, ...] = ()
    facts: tuple[tuple[str, str], ...] = ()
    lead: bool = False  # the page's answer, set apart

    @property
    def pngs(self) -> list[Path]:
        return [f for f in self.figures if f.suffix == ".png"]


SectionFn = Callable[["RunData"], Section | None]
_SECTIONS: Registry[SectionFn] = Registry("report section")
LAST = "provenance"  # new sections go before this one unless told otherwise


def register_section(name: str, fn: SectionFn | None = None, *, before: str | None = LAST
                     ) -> Callable[[SectionFn], SectionFn] | SectionFn:
    """Add a section to every report, before section `before` (None: at the end). Usable as a
    decorator. A name already registered is refused."""
    def add(f: SectionFn) -> SectionFn:
        return _SECTIONS.add(name, f, before=before)

    return add if fn is None else add(fn)


def unregister_section(name: str) -> None:
    """Remove a registered section."""
    _SECTIONS.remove(name)


def section_names() -> list[str]:
    """The registered sections, in page order."""
    return list(_SECTIONS)


def make_sections(data: RunData) -> list[Section]:
    """Every registered section for this run, in order, those with nothing to show left out."""
    made = (fn(data) for fn in _SECTIONS.values())
    return [s for s in made if s is not None]


def slug(text: str) -> str:
    """An ASCII file name for a title."""
    text = text.lower().replace("ε", "eps")
    name = "".join(c if c.isascii() and c.isalnum() else "_" for c in text)
    while "__" in name:
        name = name.replace("__", "_")
    return name.strip("_")
