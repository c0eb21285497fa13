"""The report's sections, each a function of the run's data, registered below in page order."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from robustbench_sparse.analysis import paper
from robustbench_sparse.analysis.adaptive import verdict_table
from robustbench_sparse.analysis.diagnostics import CHECK_NEEDS
from robustbench_sparse.analysis.tables import accuracies, paper_pixel, summary
from robustbench_sparse.evaluation.cells import environment
from robustbench_sparse.evaluation.kinds import kind_of
from robustbench_sparse.evaluation.suites import Suite
from robustbench_sparse.execution.executor import ENSEMBLE
from robustbench_sparse.perturb.attacks import early_stops
from robustbench_sparse.report import figures
from robustbench_sparse.report.data import RunData
from robustbench_sparse.report.registry import Section, Table, register_section, slug
from robustbench_sparse.report.tables import (
    marked,
    p_text,
    per_strength,
    rank_table,
    sweep_means,
    transfer_table,
    worst_case,
)
from robustbench_sparse.report.verdict import verdict_section
from robustbench_sparse.runtime import CPU_REGIME, UserError, library_versions
from robustbench_sparse.zoo.checkpoints import EXTERNAL

SEEDS_NOTE = "; with several training seeds: mean ± std over seeds"
MARK_NOTE = " A * marks a number significantly different from {ref}'s (Holm-corrected, α = 0.05; see the last table)."


def _one_table(id: str, title: str, text: str, frame: pd.DataFrame, data: pd.DataFrame | None = None,
               *more: str) -> Section:
    """A section of one table and the paragraphs before it: `text`, then `more`."""
    tables = (Table(frame, slug(title), data),) if not frame.empty else ()
    return Section(id, title, (text, *more), tables)


def _marks(data: RunData) -> str:
    return MARK_NOTE.format(ref=data.reference) if not data.tests.empty else ""


def key_plot(data: RunData) -> Section | None:
    made = figures.plot_sweeps(data.white, figures.palette(data.models), data.figures_dir)
    return Section("accuracy-plot", "Accuracy under each perturbation", figures=tuple(made)) if made else None


def overview(data: RunData) -> Section:
    return _one_table("overview", "Overview", "Clean accuracy, each evaluation at its strongest setting, the paper's "
                      "pixel-noise score, and the status of the gradient-masking checks "
                      f"(accuracy %{SEEDS_NOTE}).", summary(data.everything, data.plan.info.num_classes))


def ranking(data: RunData) -> Section | None:
    table, changes = rank_table(data.everything)
    if table.empty:
        return None
    text = ("Per model and ε: plain PGD accuracy beside the per-sample worst case over every attack run "
            "(white-box, BPDA, black-box and transfer), with the regularisers ranked by each (1 = most robust). ")
    text += ("Rankings that change: " + "; ".join(changes) + "." if changes
             else "No model's rank changes between plain PGD and the worst case.")
    return _one_table("ranking", "Most effective attack: ranking", text, table)


def noise_score(data: RunData) -> Section | None:
    scores, ref = data.scores, data.reference
    if scores.empty:
        return None
    shown = scores.drop(columns=["reference"]).assign(
        **{"noise score": scores["noise score"].round(0), "difference": scores["difference"].round(0),
           "p": scores["p"].map(p_text), "p (Holm)": scores["p (Holm)"].map(p_text)})
    return _one_table("noise-score", f"Noise score against {ref}", "The paper's noise score (total correct over every "
                      "pixel-noise level; mean over training seeds) of each model minus "
                      f"{ref}'s, counted over the levels both have (`levels`), one test per model (Welch's t over the "
                      "seeds' scores; with one seed, Wilcoxon's signed-rank test over the same images of how many "
                      "levels each survives), Holm-corrected over the models of this table.", shown, scores)


def paper_table(data: RunData) -> Section | None:
    """The paper's Table 1 beside this run, when the run measured the same quantity (full MNIST,
    the whole test set, the 11 pixel-noise levels) and `dense` is the reference."""
    pixel = paper_pixel(accuracies(data.white[data.white["source"] == data.white["model"]]))
    if not paper.comparable(pixel, data.plan.info.name) or data.reference != paper.PAPER_REFERENCE:
        return None
    table = paper.table1(pixel, data.scores)
    if table.empty:
        return None
    def images(value: object, sign: str = "") -> str:  # 101668 -> "101,668"; "101668 ± 1234" likewise
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        if isinstance(value, str):
            return " ± ".join(f"{int(part):,}" for part in value.split(" ± "))
        return f"{int(value):{sign},}"

    shown = table.assign(**{
        "clean vs paper (points)": table["clean vs paper (points)"].map(lambda v: f"{v:+.2f}"),
        "noise score (here)": table["noise score (here)"].map(images),
        "vs Dense CNN-2 (paper)": table["vs Dense CNN-2 (paper)"].map(lambda v: images(v, "+")),
        "vs dense (here)": table["vs dense (here)"].map(lambda v: images(v, "+")),
        "p (Holm)": table["p (Holm)"].map(lambda p: "" if pd.isna(p) else p_text(p))})
    return _one_table("table-1", "The paper's Table 1 beside this run", "Ahmad & Scheinkman (2019), Table 1 (full "
                      "MNIST, 10 training seeds, mean ± std; the noise score counts the images correct over the 11 "
                      "pixel-noise levels of the 10,000 test images, out of 110,000) beside the same networks here "
                      "(mean ± std over `seeds`). The paper kept each seed's best epoch on the test set; these are "
                      "the last epoch's weights, recipes chosen on the validation split. The differences from Dense "
                      "CNN-2 (`dense`): the paper's, and this run's with Welch's t over the seeds (with one seed, "
                      "Wilcoxon's signed-rank test over the images), Holm-corrected over the models as in the "
                      "noise-score table.", shown, table, paper.clean_gaps(table))


def sweep(data: RunData) -> Section | None:
    table = sweep_means(data.white).reset_index()
    if len(table.columns) <= 1:  # a suite without attacks has no eps sweep
        return None
    return _one_table("sweep-means", "Mean robust accuracy over the ε sweep", "Mean accuracy (%) over each attack's "
                      "ε > 0.", table)


def corruptions(data: RunData) -> Section | None:
    if data.corrupted.empty:
        return None
    ref = data.reference
    return _one_table("corruptions", "Common corruptions (MNIST-C)", "Accuracy (%) under each of MNIST-C's "
                      "corruptions (mean over the severities run), the mean corruption error, and the corruption "
                      f"error relative to {ref} (ImageNet-C's mCE: per corruption the model's summed error over "
                      f"severities / {ref}'s, averaged; below 100 = more robust than {ref}). With several training "
                      "seeds: mean ± std over seeds.", data.corrupted)


def worst(data: RunData) -> Section | None:
    table = worst_case(data.everything).reset_index()
    if len(table.columns) <= 1:  # a suite without attacks has no worst case
        return None
    return _one_table("worst-case", "Worst case over attacks", "Per model and ε, the share of test images that "
                      "survive every attack run against that model (white-box and transfer), judged per image."
                      + _marks(data), marked(table, data.tests, "worst"), table)


def strengths(data: RunData) -> Section:
    table = per_strength(data.white).reset_index()
    return _one_table("per-strength", "Accuracy per evaluation and strength", f"Accuracy (%{SEEDS_NOTE})."
                      + _marks(data), marked(table, data.tests, "per strength"), table)


def masking(data: RunData) -> Section:
    checks, title = data.checks, "Gradient-masking checks"
    if not checks.empty and (checks["status"] == "not run").all():  # e.g. a noise-only suite
        return Section("masking-checks", title, (
            f"This suite runs nothing the {len(CHECK_NEEDS)} gradient-masking checks read (no attack, no "
            "gradient, determinism or logits measurement): none could run, which says nothing either way. "
            "Run the `masking` suite (`rbs benchmark --suite masking`) for all of them.",))
    fired = int((checks["status"] == "fired").sum())
    not_run = int((checks["status"] == "not run").sum())
    text = (f"Each of the {len(CHECK_NEEDS)} checks per model: **fired** (a sign that an attack, not the model, may "
            "be weak for these numbers; with the evidence), **passed** (the suite ran what the check needs and it "
            "did not fire), or **not run** (the suite lacks what the check needs; named). "
            f"Here: {fired} fired, {not_run} not run.")
    if not_run:
        text += (" A check that did not run says nothing either way: run the `masking` suite "
                 f"(`rbs benchmark --suite masking`) for all {len(CHECK_NEEDS)}.")
    return _one_table("masking-checks", title, text, checks)


def adaptive_verdict(data: RunData) -> Section | None:
    """The verdict once the adaptive attacks ran (`analysis.adaptive`); none without them."""
    table = verdict_table(data.everything, data.reference)
    if table.empty:
        return None
    shown = table.assign(**{"p (Holm)": table["p (Holm)"].map(p_text)}).round(
        {"standard %": 1, "every attack %": 1, "vs ref (standard)": 1, "vs ref (every attack)": 1})
    ref = data.reference
    text = ("Per model and ε, the per-image worst case over the standard white-box attacks (true gradients, "
            "AutoAttack and Square included) beside the worst case over every attack run: the standard ones, the "
            "adaptive ones aimed at the k-winners mask (BPDA through each gradient attack, the smooth surrogate, "
            "FD-PGD's finite differences) and transfer. *Found the last points*: the attacks that alone fooled some "
            "images, with how many. *Square only*: images Square fooled that every gradient attack left correct "
            "(AutoAttack's own reliability warning: gradient-free search finding points the gradients miss). "
            f"The differences from {ref} are tested on the same images (McNemar's exact test, training seeds "
            "pooled), Holm-corrected over the whole table; the verdict reads the every-attack difference "
            "(docs/adaptive-attacks.md).")
    return Section("adaptive-verdict", "Adaptive attacks: the verdict", (text,), (Table(shown, "adaptive-verdict", table),))


def transfer(data: RunData) -> Section | None:
    moves = data.moves
    if moves.empty:
        return None
    tables = []
    for evaluation in dict.fromkeys(moves["evaluation"]):
        for eps in sorted(moves.loc[moves["evaluation"] == evaluation, "strength"].unique()):
            matrix = transfer_table(moves, evaluation, eps)
            matrix.index.name = "source \\\\ target"
            title = f"Transfer: {evaluation}, ε = {eps:g}"
            tables.append(Table(matrix.reset_index(), slug(title), title=title))
    return Section("transfer", "Transfer", (
        "Accuracy (%) of each target (columns) on examples crafted on each source (rows) by the full attack (no "
        "pruning, no early stopping: examples that only just fool their source would transfer worse); the diagonal "
        f"is that attack's white-box result; `{ENSEMBLE}` attacks the mean logits of "
        f"{', '.join(data.plan.suite.transfer.ensemble) or 'no models'}.",), tuple(tables))


def differences(data: RunData) -> Section | None:
    tests, ref = data.tests, data.reference
    if tests.empty:
        return None
    shown = tests.drop(columns=["reference", "param", "kind"]).assign(
        difference=tests["difference"].round(2), p=tests["p"].map(p_text), **{"p (Holm)": tests["p (Holm)"].map(p_text)})
    return _one_table("differences", f"Differences from {ref}", "Every comparison behind the * marks and the "
                      f"verdict: accuracy of each model minus {ref}'s (points), the test, its p-value and the "
                      "Holm-corrected p over this table.", shown, tests)


def more_plots(data: RunData) -> Section | None:
    made = []
    if not data.corrupted.empty:
        picture = data.plan.test_set()[0][:1]
        if not len(picture):
            raise UserError(f"the MNIST-C picture needs a {data.plan.info.name} test image, and the dataset is not "
                            "here (the rest of the report is rebuilt from its records)")
        made += figures.plot_corruptions(picture, data.plan.suite.seed, data.figures_dir)
    if not data.moves.empty:
        made += figures.plot_transfer(data.moves, data.figures_dir)
    return Section("more-plots", "More plots", figures=tuple(made)) if made else None


def attack_mode(suite: Suite) -> str:
    """Which attacks' numbers come from pruned sweeps and early stopping, in words."""
    attacks = [e for e in suite.evaluations if kind_of(e.kind).adversarial]
    if not attacks:
        return "no attacks"
    pruned = [e.name for e in attacks if e.pruned and len([s for s in e.strengths if s > 0]) > 1]
    plain = [e.name for e in attacks if not e.pruned and len([s for s in e.strengths if s > 0]) > 1]
    early = [e.name for e in attacks if early_stops(e.kind, dict(e.params))]
    parts = []
    if pruned:
        parts.append(f"pruned eps sweeps ({', '.join(pruned)}): accuracy at eps counts the images that no attack "
                     "of that evaluation at any eps' <= eps fooled")
    if plain:
        parts.append(f"unpruned sweeps ({', '.join(plain)}): every eps attacks every image")
    if early:
        parts.append(f"per-image early stopping ({', '.join(early)}): an image keeps its first adversarial iterate")
    return "; ".join(parts) or "every attack runs in full"


def regime_line(meta: dict[str, Any]) -> str:
    """Under the title: the device and compute regime that made the numbers (docs/reproducibility.md),
    so a reader knows whether a rerun elsewhere must give them bit for bit."""
    device, regime = str(meta.get("device", "cpu")), meta.get("regime")
    if "cuda" in device:
        return (f"Computed on CUDA ({device}): GPU kernels are not bit-for-bit reproducible, so a rerun agrees "
                "within seed noise, not bit for bit.")
    if not regime:
        return ("Computed before the portable CPU regime: these checkpoints and numbers depend on the machine "
                "that made them (a rerun elsewhere retrains other weights); see docs/reproducibility.md.")
    if regime.get("name") == CPU_REGIME:
        return (f"Computed on the CPU in the portable regime {CPU_REGIME} (one thread per task, AVX2 kernels, "
                "MKL's compatible branch): a rerun on any x86-64 CPU with AVX2 gives these numbers bit for bit.")
    why = regime.get("not_portable") or "RBS_CPU_REGIME=native"
    return f"Computed on the CPU in a machine-dependent regime ({why}): a rerun elsewhere may differ."


def provenance(data: RunData) -> Section:
    """Where the numbers come from. The date, versions and code are those the run's records export
    holds (those that computed the numbers), so that a report rebuilt from them is the same."""
    plan, meta = data.plan, data.meta
    date = dt.datetime.fromisoformat(data.date) if data.date else dt.datetime.now(dt.UTC)
    versions = meta.get("versions") or library_versions()
    hashes = ", ".join(f"{m} (seed {s}): `{h[:12]}`" for (m, s), h in plan.checkpoints.items())
    brought = [s for s in plan.specs if s.family == EXTERNAL]
    facts = (
        ("dataset", f"{plan.info.name} ({plan.info.description})"),
        ("split", meta.get("split", plan.data.split)),
        ("test images", str(plan.n)),
        ("test-set fingerprint (SHA-256)", f"`{plan.fingerprint[:16]}`"),
        ("suite", f"{plan.suite.name}: {plan.suite.description}"),
        ("attack backend", plan.setup.backend or "as the suite says"),
        ("attack mode", attack_mode(plan.suite)),
        ("training seeds", ", ".join(map(str, plan.seeds))),
        ("evaluation seed", str(plan.suite.seed)),
        ("date", date.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("compute regime", _regime_fact(meta)),
        ("perturbation code (SHA-256)", f"`{meta.get('code') or environment()['code']}`"),
        ("checkpoints (SHA-256)", hashes),
        *([("models brought as objects", "; ".join(f"{s.name}: {s.description}" for s in brought))] if brought else []),
        *([("notes", "; ".join(plan.setup.notes))] if plan.setup.notes else []),
    )
    return Section("provenance", "Provenance", facts=facts)


def _regime_fact(meta: dict[str, Any]) -> str:
    regime = meta.get("regime")
    if not regime:
        return "not recorded (made before the portable regime)"
    return ", ".join(f"{k} {v}" for k, v in regime.items())


# The page, top to bottom. A section of one's own: register_section(name, fn) puts it before provenance.
for _name, _fn in (("verdict", verdict_section), ("accuracy-plot", key_plot), ("overview", overview),
                   ("ranking", ranking), ("table-1", paper_table), ("noise-score", noise_score), ("sweep-means", sweep),
                   ("corruptions", corruptions), ("worst-case", worst), ("per-strength", strengths),
                   ("masking-checks", masking), ("adaptive-verdict", adaptive_verdict), ("transfer", transfer), ("differences", differences),
                   ("more-plots", more_plots), ("provenance", provenance)):
    register_section(_name, _fn, before=None)
