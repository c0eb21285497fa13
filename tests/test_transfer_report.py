import dataclasses
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from robustbench_sparse.evaluation.cells import decode_flags
from robustbench_sparse.execution import executor
from robustbench_sparse.report.report import build_report
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
    for heading in ("Overview", "Worst case over attacks", "Mean robust accuracy", "Transfer: pgd, ε = 0.25"):
        assert f"## {heading}" in text
    assert "noise score" in text and "SHA-256" in text and "torchattacks" in text
    names = {p.name for p in report.figures}
    assert {"accuracy_vs_strength.png", "accuracy_vs_strength.svg", "transfer_pgd.png", "transfer_fgsm.svg"} <= names
    for path in report.figures:
        assert path.stat().st_size > 1000
    page = report.html.read_text()
    assert page.count("<img") == sum(p.suffix == ".png" for p in report.figures)
    assert "src='data:image/png;base64," in page and "http" not in page.split("<body>")[-1].split("<script>")[0]


def test_worst_case_is_per_sample_and_never_above_any_attack(home):
    from robustbench_sparse.report.report import worst_case

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
    # read top-down: the answer first, the key plot next, the provenance last
    text = report.html.read_text()
    assert text.index("class='answer'") < text.index("alt='accuracy_vs_strength'") < text.index("<h2>Overview")
    assert text.index("<h2>Overview") < text.index("<h2>Provenance")


def test_report_opens_with_the_answer_and_marks_significant_differences(home):
    plan = harness.plan("mnist5k", "moves", device="cpu", home=home.home)
    harness.run(plan)
    report = build_report(plan)
    text = report.markdown.read_text()
    first = text.split("\n\n")[1]
    assert "than dense" in first and "Holm-corrected" in first
    diffs = pd.read_csv(report.folder / "tables" / "differences_from_dense.csv")
    assert set(diffs["reference"]) == {"dense"} and "dense" not in set(diffs["model"])
    assert (diffs["p (Holm)"] >= diffs["p"] - 1e-12).all()  # Holm never lowers a p-value
    assert (diffs["significant"] == (diffs["p (Holm)"] < 0.05)).all()
    for row in diffs[diffs["significant"]].itertuples():
        assert row.model in first  # every significant difference is named up front
    assert text.index("## Provenance") > text.index("## Overview")


def test_cards_validate_against_the_schema_and_the_index_lists_every_run(home):
    import json

    import jsonschema

    from robustbench_sparse.report.report import CARD_SCHEMA

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


PDFLATEX = shutil.which("pdflatex")


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

    from robustbench_sparse.report.report import _rank_changes

    means = pd.DataFrame({
        "strength": [0.3] * 5,
        "model": ["dense", "dropout", "batchnorm", "kwinner-boost", "kwinner"],
        "pgd": [0.0, 0.0, 0.0, 1.3, 2.0],
        "worst": [0.0, 0.0, 0.0, 0.3, 0.0],
    })
    for column, rank in (("pgd", "rank (PGD)"), ("worst", "rank (worst case)")):
        means[rank] = means[column].rank(ascending=False, method="min").astype(int)
    changes = _rank_changes(means)
    assert changes == [
        "kwinner-boost at ε=0.3: 2nd by PGD, 1st by the worst case (now above kwinner)",
        "kwinner at ε=0.3: 1st by PGD, 2nd by the worst case (now below kwinner-boost)",
    ]
    assert not any(c.startswith("dense") for c in changes)
    same = means.assign(worst=means["pgd"], **{"rank (worst case)": means["rank (PGD)"]})
    assert _rank_changes(same) == []


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


def test_answer_keeps_clean_apart_and_says_at_how_many_strengths():
    from robustbench_sparse.report.report import answer

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
    text = " ".join(answer(tests, ["dense", "kwinner", "dropout", "batchnorm"], 100,
                           {"kwinner": ["BPDA beats plain gradients"]}))
    assert ("Significantly higher accuracy than dense: kwinner under pixel, pgd (at 2 of their 3 strengths; "
            "largest: +12.0 points, pgd at ε=0.1)") in text
    assert "masking checks fired for kwinner (BPDA beats plain gradients)" in text
    assert "Clean accuracy differs significantly from dense's for kwinner (-1.5 points)" in text
    assert "under clean" not in text
    assert "No significant difference from dense under any perturbation: dropout." in text
    assert "Not compared (no results beside dense's): batchnorm." in text
    assert "Holm-corrected over the 5 comparisons tested" in text


def test_answer_flags_a_clean_gap_beyond_the_fair_recipe_rule_significant_or_not():
    from robustbench_sparse.report.report import CLEAN_GAP_POINTS, answer

    def clean(model: str, difference: float, significant: bool) -> dict:
        return {"evaluation": "clean", "strength": 0.0, "param": "", "kind": "clean", "model": model,
                "reference": "dense", "difference": difference, "test": "Welch t", "p": 0.01 if significant else 0.4,
                "p (Holm)": 0.02 if significant else 0.8, "significant": significant}

    assert CLEAN_GAP_POINTS == 1.5
    tests = pd.DataFrame([clean("kwinner", -3.6, False), clean("dropout", 1.4, True), clean("batchnorm", 1.6, False)])
    text = " ".join(answer(tests, ["dense", "kwinner", "dropout", "batchnorm"], 2000))
    assert "Not within 1.5 points of dense's clean accuracy (mean over seeds): kwinner (-3.6), batchnorm (+1.6)." in text
    assert "dropout (+1.4)" not in text.split("Not within")[1]
    within = " ".join(answer(pd.DataFrame([clean("kwinner", -1.5, False)]), ["dense", "kwinner"], 2000))
    assert "Not within" not in within
    # significant and beyond the rule: said once, in the significance sentence
    both = " ".join(answer(pd.DataFrame([clean("kwinner", -2.4, True), clean("batchnorm", 1.6, False)]),
                           ["dense", "kwinner", "batchnorm"], 2000))
    assert ("Clean accuracy differs significantly from dense's for kwinner (-2.4 points): a gap that confounds the "
            "comparisons above; for kwinner it is beyond the 1.5-point rule of a fair recipe") in both
    assert "Not within 1.5 points of dense's clean accuracy (mean over seeds): batchnorm (+1.6)." in both
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
    from robustbench_sparse.report.report import noise_score_sentence

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
    sentence = noise_score_sentence(table.reset_index())
    assert "Holm-corrected over the 2 models" in sentence
    assert "significantly higher than dense's: kwinner (+50)" in sentence
    assert "not significantly different: dropout" in sentence


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
