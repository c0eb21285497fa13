import dataclasses
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from robustbench_sparse.evaluation.cells import decode_flags
from robustbench_sparse.execution import executor
from robustbench_sparse.report import build_report
from robustbench_sparse.results import harness
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.results.transfer import run_transfer, transfer_matrix

SUITE = """
test_size = 50
batch_size = 25
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.2]
[[evaluations]]
kind = "fgsm"
eps = [0.0, 0.1, 0.25]
[[evaluations]]
kind = "pgd"
eps = [0.0, 0.25]
steps = 5
[transfer]
evaluations = ["fgsm", "pgd"]
strengths = [0.25]
{ensemble}
"""


@pytest.fixture()
def home(trained_home):
    """The session's trained tiny zoo, with fresh results, cache and a transfer suite."""
    for path in (trained_home.cache, trained_home.home / "reports"):
        shutil.rmtree(path, ignore_errors=True)
    (trained_home.suites / "moves.toml").write_text(SUITE.format(ensemble=""))
    (trained_home.suites / "moves-ens.toml").write_text(SUITE.format(ensemble='ensemble = ["dense", "dropout"]'))
    return trained_home


def _count_crafts(monkeypatch):
    """Counts the sets crafted, in this process (the local executor's pool is kept out)."""
    from robustbench_sparse.execution import local

    monkeypatch.setattr(local, "default_workers", lambda: 1)
    calls = []
    real = executor.perturbed_set
    monkeypatch.setattr(executor, "perturbed_set", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_each_source_crafts_once_per_attack_and_eps(home, monkeypatch):
    crafts = _count_crafts(monkeypatch)
    plan = harness.plan("mnist5k", "moves", device="cpu", home=home.home)
    frame = run_transfer(plan)
    assert len(crafts) == 5 * 2  # 5 sources x (fgsm, pgd) at one eps: not 25 x 2
    assert len(frame) == 5 * 5 * 2 and frame["accuracy"].notna().all()
    crafts.clear()
    run_transfer(harness.plan("mnist5k", "moves", device="cpu", home=home.home))
    assert crafts == []  # a re-run crafts nothing


def test_adding_a_model_crafts_only_its_own_sets(home, monkeypatch):
    crafts = _count_crafts(monkeypatch)
    run_transfer(harness.plan("mnist5k", "moves", ["dense", "dropout"], device="cpu", home=home.home))
    assert len(crafts) == 2 * 2
    crafts.clear()
    frame = run_transfer(harness.plan("mnist5k", "moves", ["dense", "dropout", "kwinner"], device="cpu",
                                      home=home.home))
    assert len(crafts) == 2  # kwinner's fgsm and pgd sets only
    assert len(frame) == 3 * 3 * 2


def test_diagonal_is_the_full_white_box_attack_and_never_below_the_fast_one(home, tmp_path):
    """Transfer sets are crafted by the library's full attack (no pruning, no early stopping): an
    example that only just fools its source transfers worse. So the diagonal is the full attack's
    white-box result, and the fast white-box run fools every image the diagonal does."""
    plan = harness.plan("mnist5k", "moves", device="cpu", home=home.home)
    white = harness.run(plan, ResultStore(tmp_path / "white.sqlite"))
    shutil.rmtree(home.cache)  # nothing shared: transfer crafts its own sets
    moved = run_transfer(plan, ResultStore(tmp_path / "moved.sqlite"))
    assert moved["spec"].str.contains("early_stop=false").sum() == (moved["kind"] == "pgd").sum()
    assert moved["spec"].str.contains("prune=false").all()
    full = harness.run(dataclasses.replace(plan, setup=dataclasses.replace(plan.setup, suite=dataclasses.replace(
        plan.suite, evaluations=tuple(e.full() for e in plan.suite.evaluations)))), ResultStore(tmp_path / "full.sqlite"))
    for evaluation in ("fgsm", "pgd"):
        matrix = transfer_matrix(moved, evaluation, 0.25)
        for model in matrix.columns:
            def cell(frame, model=model, evaluation=evaluation):
                return frame[(frame["model"] == model) & (frame["evaluation"] == evaluation)
                             & (frame["strength"] == 0.25) & (frame["source"] == model)]
            diag = cell(moved)
            assert diag["flags"].item() == cell(full)["flags"].item()
            assert matrix.loc[model, model] == pytest.approx(diag["accuracy"].item() * 100)
            fast = decode_flags(cell(white)["flags"].item(), 50)
            assert not (fast & ~decode_flags(diag["flags"].item(), 50)).any()


def test_ensemble_is_one_more_source_row(home, monkeypatch):
    crafts = _count_crafts(monkeypatch)
    frame = run_transfer(harness.plan("mnist5k", "moves-ens", device="cpu", home=home.home))
    assert len(crafts) == 6 * 2
    matrix = transfer_matrix(frame, "pgd", 0.25)
    assert list(matrix.index) == ["dense", "dropout", "batchnorm", "kwinner-boost", "kwinner", "ensemble"]
    assert matrix.notna().all().all()


def test_report_builds_from_stored_results_only(home, monkeypatch):
    plan = harness.plan("mnist5k", "moves-ens", device="cpu", home=home.home)
    harness.run(plan)
    run_transfer(plan)
    crafts = _count_crafts(monkeypatch)
    monkeypatch.setattr(harness, "make_record", lambda *a, **k: pytest.fail("report re-ran a cell"))
    report = build_report(plan)
    assert crafts == [] and report.missing == 0
    text = report.markdown.read_text()
    for heading in ("Overview", "Worst case over attacks", "Mean robust accuracy", "Transfer"):
        assert f"\n## {heading}" in text
    assert "\n### Transfer: pgd, ε = 0.25\n" in text and "\n### Transfer: fgsm, ε = 0.25\n" in text
    assert "noise score" in text and "SHA-256" in text and "torchattacks" in text
    names = {p.name for p in report.figures}
    assert {"accuracy_vs_strength.png", "accuracy_vs_strength.svg", "transfer_pgd.png", "transfer_fgsm.svg"} <= names
    for path in report.figures:
        assert path.stat().st_size > 1000
    page = report.html.read_text()
    assert page.count("<img") == sum(p.suffix == ".png" for p in report.figures)
    assert "src='data:image/png;base64," in page and "http" not in page.split("<body>")[-1].split("<script>")[0]


def test_worst_case_is_per_sample_and_never_above_any_attack(home):
    from robustbench_sparse.report.tables import worst_case

    plan = harness.plan("mnist5k", "moves", device="cpu", home=home.home)
    white = harness.run(plan)
    worst = worst_case(white)
    attacked = white[white["kind"].isin(["fgsm", "pgd"]) & (white["strength"] == 0.25)]
    for model, row in worst.iterrows():
        accs = attacked[attacked["model"] == model]["accuracy"] * 100
        assert row["ε=0.25"] <= accs.min() + 1e-9


def test_missing_cells_are_reported_not_rerun(home):
    plan = harness.plan("mnist5k", "moves", ["dense", "dropout"], device="cpu", home=home.home)
    harness.run(plan)
    report = build_report(plan)
    # every transfer cell: 2 attacks x 2 sources x 2 targets (the diagonal too: transfer sets are the
    # full attack's, not the pruned, early-stopped white-box sets)
    assert report.missing == 8
    assert "have no stored result yet" in report.markdown.read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow  # an external program
@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="chromium not installed")
def test_html_report_renders_in_headless_chromium(home, tmp_path):
    assert CHROMIUM, "CI must install Debian's chromium (see .ci/run)"
    plan = harness.plan("mnist5k", "moves-ens", device="cpu", home=home.home)
    harness.run(plan)
    run_transfer(plan)
    report = build_report(plan)
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--window-size=1280,900",
         "--dump-dom", report.html.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, result.stderr[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    pngs = sum(p.suffix == ".png" for p in report.figures)
    assert int(attrs["images"]) == pngs and int(attrs["images-loaded"]) == pngs
    assert int(attrs["tables"]) >= 6
    # a 1280 px window: the page itself never scrolls sideways (wide tables scroll in their own box)
    assert int(attrs["view-width"]) == 1280
    assert int(attrs["page-width"]) <= int(attrs["view-width"]), attrs
    # read top-down: the verdict first, the key plot next, the provenance last
    text = report.html.read_text(encoding="utf-8")
    assert text.index("class='answer'") < text.index("<h2>Verdict") < text.index("alt='accuracy_vs_strength'")
    assert text.index("alt='accuracy_vs_strength'") < text.index("<h2>Overview")
    assert text.index("<h2>Overview") < text.index("<h2>Provenance")


def test_report_opens_with_the_verdict_and_marks_significant_differences(home):
    plan = harness.plan("mnist5k", "moves", device="cpu", home=home.home)
    harness.run(plan)
    report = build_report(plan)
    text = report.markdown.read_text(encoding="utf-8")
    assert text.split("\n## ")[1].startswith("Verdict")  # the first section
    first = text.split("\n## ")[1]
    assert "minus dense" in first and "Holm-corrected" in first
    diffs = pd.read_csv(report.folder / "tables" / "differences_from_dense.csv")
    assert set(diffs["reference"]) == {"dense"} and "dense" not in set(diffs["model"])
    assert (diffs["p (Holm)"] >= diffs["p"] - 1e-12).all()  # Holm never lowers a p-value
    assert (diffs["significant"] == (diffs["p (Holm)"] < 0.05)).all()
    assert f"Holm-corrected over the {diffs['p'].notna().sum()} comparisons" in first
    # every significant difference is counted up front, in its model's row of the verdict
    verdict = pd.read_csv(report.folder / "tables" / "verdict.csv").set_index("model")
    assert list(verdict.index) == ["dense", "dropout", "batchnorm", "kwinner-boost", "kwinner"]
    robust = diffs[(diffs["evaluation"] != "clean") & diffs["p"].notna()]
    for model in verdict.index.drop("dense"):
        mine = robust[robust["model"] == model]
        assert verdict.loc[model, "tested"] == len(mine)
        assert verdict.loc[model, "higher"] == (mine["significant"] & (mine["difference"] > 0)).sum()
        assert verdict.loc[model, "lower"] == (mine["significant"] & (mine["difference"] < 0)).sum()
        clean = diffs[(diffs["model"] == model) & (diffs["evaluation"] == "clean")].iloc[0]
        assert verdict.loc[model, "clean difference"] == pytest.approx(clean["difference"])
        assert verdict.loc[model, "clean significant"] == clean["significant"]
        worst = diffs[(diffs["model"] == model) & (diffs["evaluation"] == "worst case over attacks")
                      & (diffs["strength"] == 0.25)].iloc[0]  # the suite's headline eps: fgsm and pgd share 0.25
        assert verdict.loc[model, "worst case difference"] == pytest.approx(worst["difference"])
        row = next(line for line in first.splitlines() if line.startswith(f"| {model} "))
        assert f"{clean['difference']:+.1f}{' *' if clean['significant'] else ''} " in row
    assert "worst case Δ at ε=0.25 (points)" in first
    assert text.index("## Provenance") > text.index("## Overview")


def test_cards_validate_against_the_schema_and_the_index_lists_every_run(home):
    import json

    import jsonschema

    from robustbench_sparse.report import CARD_SCHEMA

    for suite in ("moves", "moves-ens"):
        plan = harness.plan("mnist5k", suite, ["dense", "dropout", "kwinner"], device="cpu", home=home.home)
        harness.run(plan)
        build_report(plan)
    schema = json.loads(CARD_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    cards = sorted((home.reports("mnist5k") / "cards").glob("*.json"))
    assert {"dense", "dropout", "kwinner"} <= {c.stem for c in cards}
    for card in (c for c in cards if c.stem in ("dense", "dropout", "kwinner")):
        doc = json.loads(card.read_text())
        jsonschema.validate(doc, schema)
        assert {"moves", "moves-ens"} <= set(doc["runs"])  # both runs kept in one card
        run = doc["runs"]["moves"]
        assert run["checkpoints"]["seed0"] == plan.checkpoints[(card.stem, 0)]
        assert all(r["accuracy"] <= run["clean_accuracy"] + 1e-9 for r in run["robust_accuracy"])
    bad = json.loads(cards[0].read_text())
    bad["runs"]["moves"]["clean_accuracy"] = 140
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    index = (home.home / "reports" / "index.html").read_text()
    assert "mnist5k/moves/report.html" in index and "mnist5k/moves-ens/report.html" in index


def test_a_rebuild_leaves_no_file_of_the_report_it_replaced(home):
    plan = harness.plan("mnist5k", "moves", device="cpu", home=home.home)
    harness.run(plan)
    folder = build_report(plan).folder
    fresh = {name: (folder / name).read_bytes() for name in ("report.md", "report.html")}
    (folder / "report.tex").write_text("\\section{numbers of other weights}")
    (folder / "tables" / "a_table_no_longer_made.csv").write_text("x\n1\n")
    (folder / "figures" / "a_plot_no_longer_made.svg").write_text("<svg/>")
    (folder / "report.log").write_text("pdflatex's, not the report's")
    report = build_report(plan)
    assert report.latex == folder / "report.tex" and "\\toprule" in report.latex.read_text()
    assert "other weights" not in report.latex.read_text()
    assert not (folder / "tables" / "a_table_no_longer_made.csv").exists()
    assert not (folder / "figures" / "a_plot_no_longer_made.svg").exists()
    assert (folder / "report.log").exists() and {p.name for p in report.figures} <= set(os.listdir(folder / "figures"))
    assert {name: (folder / name).read_bytes() for name in fresh} == fresh
    assert build_report(plan, formats=("latex",)).markdown.read_bytes() == fresh["report.md"]


PDFLATEX = shutil.which("pdflatex")


@pytest.mark.slow  # an external program
@pytest.mark.skipif(not PDFLATEX, reason="pdflatex not installed (apt-get install texlive-latex-base "
                    "texlive-latex-recommended)")
def test_latex_report_compiles_with_pdflatex(home):
    plan = harness.plan("mnist5k", "moves-ens", device="cpu", home=home.home)
    harness.run(plan)
    run_transfer(plan)
    report = build_report(plan, formats=("latex",))
    tex = report.latex.read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex  # booktabs
    result = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", report.latex.name],
                            cwd=report.folder, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (report.folder / "report.pdf").stat().st_size > 10_000


def test_rank_changes_name_real_reorderings_not_ties():
    """At eps = 0.3 three models tie at 0% under both; kwinner (2% by PGD) falls into the tie
    under the worst case and kwinner-boost keeps 0.3%: only the pair that swapped is named."""
    import pandas as pd

    from robustbench_sparse.report.tables import rank_changes

    means = pd.DataFrame({
        "strength": [0.3] * 5,
        "model": ["dense", "dropout", "batchnorm", "kwinner-boost", "kwinner"],
        "pgd": [0.0, 0.0, 0.0, 1.3, 2.0],
        "worst": [0.0, 0.0, 0.0, 0.3, 0.0],
    })
    for column, rank in (("pgd", "rank (PGD)"), ("worst", "rank (worst case)")):
        means[rank] = means[column].rank(ascending=False, method="min").astype(int)
    changes = rank_changes(means)
    assert changes == [
        "kwinner-boost at ε=0.3: 2nd by PGD, 1st by the worst case (now above kwinner)",
        "kwinner at ε=0.3: 1st by PGD, 2nd by the worst case (now below kwinner-boost)",
    ]
    assert not any(c.startswith("dense") for c in changes)
    same = means.assign(worst=means["pgd"], **{"rank (worst case)": means["rank (PGD)"]})
    assert rank_changes(same) == []


def test_constant_per_seed_accuracies_are_not_called_certain():
    """Two seeds each, no spread over seeds: Welch's t is undefined, so the paired test decides."""
    import numpy as np

    from robustbench_sparse.analysis.stats import compare_to_reference
    from robustbench_sparse.evaluation.cells import encode_flags

    rows = []
    for model, right in (("dense", 50), ("kwinner", 51)):
        for seed in (0, 1):
            flags = np.zeros(100, dtype=bool)
            flags[:right] = True
            import torch

            rows.append({"evaluation": "pgd", "strength": 0.3, "model": model, "seed": seed,
                         "accuracy": right / 100, "n": 100, "flags": encode_flags(torch.from_numpy(flags))})
    table = compare_to_reference(pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["test"] == "McNemar exact" and row["difference"] == pytest.approx(1.0)
    assert row["p"] > 0.05 and not row["significant"]


def test_verdict_keeps_clean_apart_and_says_at_how_many_strengths():
    from robustbench_sparse.report.verdict import sentences, shown, verdict_frame

    tests = pd.DataFrame([
        {"evaluation": "clean", "strength": 0.0, "param": "", "kind": "clean", "model": "kwinner",
         "reference": "dense", "difference": -1.5, "test": "McNemar exact", "p": 0.001, "p (Holm)": 0.002,
         "significant": True},
        {"evaluation": "pixel", "strength": 0.3, "param": "eta", "kind": "pixel", "model": "kwinner",
         "reference": "dense", "difference": 9.0, "test": "McNemar exact", "p": 0.0001, "p (Holm)": 0.0003,
         "significant": True},
        {"evaluation": "pixel", "strength": 0.1, "param": "eta", "kind": "pixel", "model": "kwinner",
         "reference": "dense", "difference": 1.0, "test": "McNemar exact", "p": 0.3, "p (Holm)": 0.6,
         "significant": False},
        {"evaluation": "pgd", "strength": 0.1, "param": "eps", "kind": "pgd", "model": "kwinner",
         "reference": "dense", "difference": 12.0, "test": "McNemar exact", "p": 0.0001, "p (Holm)": 0.0004,
         "significant": True},
        {"evaluation": "pgd", "strength": 0.1, "param": "eps", "kind": "pgd", "model": "dropout",
         "reference": "dense", "difference": 0.5, "test": "McNemar exact", "p": 0.5, "p (Holm)": 1.0,
         "significant": False},
    ])
    models = ["dense", "kwinner", "dropout", "batchnorm"]
    frame = verdict_frame(tests, pd.DataFrame(), models, "dense",
                          fired={"kwinner": ["5. BPDA beats plain gradients"]})
    rows = frame.set_index("model")
    # kwinner: higher under pixel and pgd at 2 of its 3 strengths under a perturbation; largest +12.0 (pgd, eps 0.1)
    assert rows.loc["kwinner", ["higher", "lower", "tested"]].tolist() == [2, 0, 3]
    assert rows.loc["kwinner", "largest difference"] == 12.0 and rows.loc["kwinner", "largest at"] == "pgd at ε=0.1"
    # clean accuracy is kept apart: its own column, never counted among the perturbations
    assert rows.loc["kwinner", "clean difference"] == -1.5 and rows.loc["kwinner", "clean significant"]
    assert rows.loc["dropout", ["higher", "lower", "tested"]].tolist() == [0, 0, 1]  # no significant difference
    assert rows.loc["batchnorm", "tested"] == 0  # not compared
    printed = shown(frame, "dense", None).set_index("model")
    assert printed.loc["kwinner", "clean Δ (points)"] == "-1.5 *"
    assert printed.loc["kwinner", "significant: higher / lower of tested"] == "2 / 0 of 3"
    assert printed.loc["kwinner", "largest significant Δ"] == "+12.0 (pgd at ε=0.1)"
    assert printed.loc["kwinner", "masking warning"] == (
        "[check 5. BPDA beats plain gradients](../../../docs/masking.md#check-5)")
    assert printed.loc["dropout", "masking warning"] == "" and printed.loc["dense", "clean Δ (points)"] == "ref"
    assert printed.loc["batchnorm", "significant: higher / lower of tested"] == "not compared"
    said = sentences(frame, tests, pd.DataFrame(), "dense", 100)
    assert len(said) <= 3
    assert "Holm-corrected over the 5 comparisons" in said[0] and "McNemar's exact test on the same 100" in said[0]
    assert "masking warning" in said[-1]


def test_verdict_flags_a_clean_gap_beyond_the_fair_recipe_rule_significant_or_not():
    from robustbench_sparse.report.verdict import CLEAN_GAP_POINTS, sentences, shown, verdict_frame

    def clean(model: str, difference: float, significant: bool) -> dict:
        return {"evaluation": "clean", "strength": 0.0, "param": "", "kind": "clean", "model": model,
                "reference": "dense", "difference": difference, "test": "Welch t", "p": 0.01 if significant else 0.4,
                "p (Holm)": 0.02 if significant else 0.8, "significant": significant}

    def said(rows: list[dict], models: list[str]) -> tuple[pd.DataFrame, str]:
        tests = pd.DataFrame(rows)
        frame = verdict_frame(tests, pd.DataFrame(), models, "dense")
        return frame, " ".join(sentences(frame, tests, pd.DataFrame(), "dense", 2000))

    assert CLEAN_GAP_POINTS == 1.5
    frame, text = said([clean("kwinner", -3.6, False), clean("dropout", 1.4, True), clean("batchnorm", 1.6, False)],
                       ["dense", "kwinner", "dropout", "batchnorm"])
    rows = frame.set_index("model")
    assert rows["clean beyond the fair-recipe rule"].to_dict() == {
        "dense": False, "kwinner": True, "dropout": False, "batchnorm": True}
    assert rows.loc["dropout", "clean difference"] == 1.4 and rows.loc["dropout", "clean significant"]
    assert "Clean accuracy not within 1.5 points of dense's (mean over seeds): kwinner (-3.6), batchnorm (+1.6)," in text
    assert "dropout (+1.4)" not in text
    assert "Welch's t-test over training seeds" in text
    _, within = said([clean("kwinner", -1.5, False)], ["dense", "kwinner"])
    assert "not within" not in within
    # significant and beyond the rule: marked in the table, named once under it
    frame, both = said([clean("kwinner", -2.4, True), clean("batchnorm", 1.6, False)], ["dense", "kwinner", "batchnorm"])
    assert shown(frame, "dense", None).set_index("model").loc["kwinner", "clean Δ (points)"] == "-2.4 *"
    assert "Clean accuracy not within 1.5 points of dense's (mean over seeds): kwinner (-2.4), batchnorm (+1.6)," in both
    assert both.count("kwinner (-2.4") == 1


def _pixel_rows(model: str, seed: int, right_per_level: list[int], n: int = 100) -> list[dict]:
    import numpy as np
    import torch

    from robustbench_sparse.evaluation.cells import encode_flags

    rows = []
    for level, right in enumerate(right_per_level):
        flags = np.zeros(n, dtype=bool)
        flags[:right] = True
        rows.append({"evaluation": "pixel", "strength": level / 10, "model": model, "seed": seed,
                     "accuracy": right / n, "correct": right, "n": n,
                     "flags": encode_flags(torch.from_numpy(flags))})
    return rows


def test_noise_scores_are_tested_once_per_model_over_seeds_and_holm_corrected():
    from robustbench_sparse.analysis.stats import compare_noise_scores
    from robustbench_sparse.report.verdict import sentences, shown, verdict_frame

    rows = []
    for seed, jitter in enumerate((0, 2, -1)):
        rows += _pixel_rows("dense", seed, [90, 60 + jitter, 30])
        rows += _pixel_rows("kwinner", seed, [90, 80 + jitter, 60])   # clearly higher
        rows += _pixel_rows("dropout", seed, [90, 61 - jitter, 30])   # the same within noise
    table = compare_noise_scores(pd.DataFrame(rows)).set_index("model")
    assert list(table.index) == ["kwinner", "dropout"]
    # dense's scores 180, 182, 179; kwinner's 230, 232, 229
    assert table.loc["kwinner", "noise score"] == pytest.approx(691 / 3)
    assert table.loc["kwinner", "difference"] == pytest.approx(50)
    assert (table["test"] == "Welch t").all()
    assert table.loc["kwinner", "significant"] and not table.loc["dropout", "significant"]
    assert table.loc["kwinner", "p (Holm)"] == pytest.approx(2 * table.loc["kwinner", "p"])  # 2 models
    scores = table.reset_index()
    frame = verdict_frame(pd.DataFrame(), scores, ["dense", "kwinner", "dropout"], "dense")
    rows = frame.set_index("model")
    assert rows.loc["kwinner", "noise score difference"] == pytest.approx(50) and rows.loc["kwinner", "noise score significant"]
    assert not rows.loc["dropout", "noise score significant"]
    printed = shown(frame, "dense", None).set_index("model")["noise score Δ (images)"]
    assert printed["kwinner"] == "+50 *" and not printed["dropout"].endswith("*")
    assert "for the noise score, over the 2 models" in sentences(frame, pd.DataFrame(), scores, "dense", 100)[0]


def test_a_noise_score_from_one_seed_is_tested_paired_over_images_not_over_pooled_levels():
    from robustbench_sparse.analysis.stats import compare_noise_scores

    # 3 levels of 100 images: kwinner survives one more level than dense on 40 images, never fewer
    rows = _pixel_rows("dense", 0, [90, 60, 30]) + _pixel_rows("kwinner", 0, [90, 80, 50])
    row = compare_noise_scores(pd.DataFrame(rows)).iloc[0]
    assert row["test"] == "Wilcoxon signed-rank" and row["difference"] == pytest.approx(40)
    assert row["levels"] == 3 and row["p"] < 1e-6 and row["significant"]
    # identical per-image results: nothing to test
    same = _pixel_rows("dense", 0, [90, 60, 30]) + _pixel_rows("dense-too", 0, [90, 60, 30])
    tie = compare_noise_scores(pd.DataFrame(same)).iloc[0]
    assert tie["difference"] == 0 and tie["p"] == 1.0 and not tie["significant"]


def test_a_noise_score_is_counted_over_the_same_levels_and_seeds_for_both_models():
    from robustbench_sparse.analysis.stats import compare_noise_scores

    # dense has three seeds, seed 0 much stronger; kwinner has only seed 0 and is worse there
    rows = _pixel_rows("dense", 0, [95, 90, 85]) + _pixel_rows("dense", 1, [60, 50, 40])
    rows += _pixel_rows("dense", 2, [60, 50, 41]) + _pixel_rows("kwinner", 0, [80, 70, 60])
    row = compare_noise_scores(pd.DataFrame(rows)).iloc[0]
    assert row["test"] == "Wilcoxon signed-rank" and row["difference"] == pytest.approx(-60)  # over seed 0 only
    # a level missing for one model is left out of both scores instead of counting as all wrong
    rows = _pixel_rows("dense", 0, [90, 60, 30]) + _pixel_rows("kwinner", 0, [90, 60])
    row = compare_noise_scores(pd.DataFrame(rows)).iloc[0]
    assert row["levels"] == 2 and row["difference"] == 0 and row["noise score"] == 150
