"""A report section of one's own is one function and one registration, and shows in every format."""

from __future__ import annotations

import pandas as pd
import pytest

from robustbench_sparse.report import (
    RunData,
    Section,
    Table,
    build_report,
    register_section,
    section_names,
    unregister_section,
)
from robustbench_sparse.results import harness

SUITE = """
test_size = 40
batch_size = 20
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.2]
[[evaluations]]
kind = "fgsm"
eps = [0.0, 0.1]
"""


def toy_section(data: RunData) -> Section:
    """Clean accuracy per model, counted from the stored records: a section any user could write."""
    clean = data.white[data.white["kind"] == "clean"]
    frame = pd.DataFrame({"model": clean["model"], "clean correct": (clean["accuracy"] * clean["n"]).round().astype(int)})
    return Section("toy", "Toy section", (f"Toy text: {len(frame)} models, reference {data.reference}.",),
                   (Table(frame, "toy_section"),))


@pytest.fixture()
def toy():
    register_section("toy", toy_section)
    yield
    unregister_section("toy")


def test_a_registered_section_appears_in_markdown_html_and_latex(trained_home, toy):
    (trained_home.suites / "toy.toml").write_text(SUITE)
    assert section_names()[-2:] == ["toy", "provenance"]  # before provenance unless told otherwise
    plan = harness.plan("mnist5k", "toy", ["dense", "kwinner"], device="cpu", home=trained_home.home)
    harness.run(plan)
    report = build_report(plan)
    latex = build_report(plan, formats=("latex",)).latex
    csv = pd.read_csv(report.folder / "tables" / "toy_section.csv")
    assert list(csv["model"]) == ["dense", "kwinner"]
    assert (csv["clean correct"] >= 0).all() and (csv["clean correct"] <= 40).all()
    rows = [f"| {m} " for m in csv["model"]]

    text = report.markdown.read_text(encoding="utf-8")
    toy_md = text.split("\n## Toy section\n")[1].split("\n## ")[0]
    assert "Toy text: 2 models, reference dense." in toy_md
    assert all(any(line.startswith(r) and line.rstrip(" |").endswith(str(n)) for line in toy_md.splitlines())
               for r, n in zip(rows, csv["clean correct"], strict=True))
    assert text.index("## Toy section") > text.index("## Differences from dense")
    assert text.index("## Toy section") < text.index("## Provenance")

    page = report.html.read_text(encoding="utf-8")
    toy_html = page.split("<section id='toy'>")[1].split("</section>")[0]
    assert "<h2>Toy section</h2>" in toy_html and "<p>Toy text: 2 models, reference dense.</p>" in toy_html
    assert all(f"<td>{n}</td>" in toy_html for n in csv["clean correct"])

    tex = latex.read_text(encoding="utf-8")
    toy_tex = tex.split("\\subsection*{Toy section}")[1].split("\\subsection*")[0]
    assert "Toy text: 2 models, reference dense." in toy_tex and "\\toprule" in toy_tex
    assert all(f"{m} & {n}" in toy_tex for m, n in zip(csv["model"], csv["clean correct"], strict=True))


def test_unregistered_section_is_gone_and_names_are_unique():
    before = section_names()
    register_section("toy", toy_section)
    with pytest.raises(ValueError, match="already registered"):
        register_section("toy", toy_section)
    unregister_section("toy")
    assert section_names() == before
    with pytest.raises(ValueError, match="no report section 'toy' is registered"):
        unregister_section("toy")


def test_a_section_placed_before_another_lands_there():
    register_section("toy", toy_section, before="overview")
    try:
        names = section_names()
        assert names.index("toy") == names.index("overview") - 1
    finally:
        unregister_section("toy")
