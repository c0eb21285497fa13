"""Reports built from stored results only: tables (Markdown, CSV, HTML) and seaborn plots.

Nothing is re-run here. Cells a suite declares that have no stored result are listed as missing.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed on servers and CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from robustbench_sparse.analysis.diagnostics import CHECK_NEEDS, masking_checks, most_effective
from robustbench_sparse.analysis.stats import compare_noise_scores, compare_to_reference, reference_model
from robustbench_sparse.analysis.tables import accuracies, paper_pixel, seed_stats, summary
from robustbench_sparse.evaluation.cells import decode_flags, encode_flags, environment
from robustbench_sparse.evaluation.kinds import CORRUPTION_KINDS, kind_of
from robustbench_sparse.evaluation.suites import Suite
from robustbench_sparse.execution.executor import ENSEMBLE
from robustbench_sparse.perturb.attacks import ATTACKS, early_stops
from robustbench_sparse.perturb.corruptions import CORRUPTIONS, corrupt
from robustbench_sparse.results import harness
from robustbench_sparse.results.transfer import transfer_cells, transfer_matrix
from robustbench_sparse.runtime import Paths, UserError, atomic_write_text, generator, library_versions, stable_seed
from robustbench_sparse.zoo.checkpoints import EXTERNAL

SEEDS_NOTE = "; with several training seeds: mean ± std over seeds"

UNITS = {
    "sigma": "noise std σ (pixel units, [0,1] scale)",
    "eta": "fraction η of pixels",
    "size": "patch side (pixels)",
    "eps": "L∞ budget ε (pixel units, [0,1] scale)",
}


@dataclass(frozen=True)
class Report:
    folder: Path
    markdown: Path
    html: Path
    figures: list[Path]
    missing: int
    latex: Path | None = None


def palette(models: list[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per model, the same in every plot (zoo order)."""
    colours = sns.color_palette("colorblind", len(models))
    return dict(zip(models, colours, strict=True))


def per_strength(white: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per evaluation and strength (rows) for each model (columns)."""
    table = seed_stats(accuracies(white), ["evaluation", "strength", "model"]).unstack("model")
    table = table.reindex(columns=list(dict.fromkeys(white["model"])))
    table.columns.name = None
    return table


def sweep_means(white: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy (%) over each attack's eps sweep (eps > 0), per model."""
    attacked = white[white["kind"].isin(ATTACKS) & (white["strength"] > 0)]
    table = seed_stats(attacked, ["model", "evaluation"]).unstack("evaluation")
    table = table.reindex(index=list(dict.fromkeys(white["model"])),
                          columns=list(dict.fromkeys(attacked["evaluation"])))
    table.columns.name = None
    return table


def worst_case_per_seed(records: pd.DataFrame) -> pd.DataFrame:
    """Per model, seed and eps: the share (0-1) of test images that survive every attack run
    against that model at that eps (white-box and transfer) -- a per-sample worst case, not a
    mean over attacks -- and which attacks were counted."""
    attacked = records[records["kind"].isin(ATTACKS) & (records["strength"] > 0)]
    rows = []
    for (model, seed, eps), group in attacked.groupby(["model", "seed", "strength"], sort=False):
        n = int(group["n"].iloc[0])
        survives = np.logical_and.reduce([decode_flags(f, n) for f in group["flags"]])
        rows.append({"model": model, "seed": seed, "strength": eps, "accuracy": float(survives.mean()),
                     "attacks": len(group), "n": n, "flags": encode_flags(torch.from_numpy(survives))})
    return pd.DataFrame(rows, columns=["model", "seed", "strength", "accuracy", "attacks", "n", "flags"])


def worst_case(records: pd.DataFrame) -> pd.DataFrame:
    """Worst case over attacks (%), models x eps."""
    table = seed_stats(worst_case_per_seed(records), ["model", "strength"]).unstack("strength")
    table.columns = [f"ε={c:g}" for c in table.columns]
    return table.reindex(index=list(dict.fromkeys(records["model"])))


def transfer_table(moves: pd.DataFrame, evaluation: str, strength: float) -> pd.DataFrame:
    """The transfer matrix (%) with mean ± std over seeds: sources (rows) x targets (columns)."""
    numeric = transfer_matrix(moves, evaluation, strength)
    cells = moves[(moves["evaluation"] == evaluation) & (moves["strength"] == strength)]
    table = seed_stats(cells, ["source", "model"]).unstack("model")
    return table.reindex(index=numeric.index, columns=numeric.columns)


def rank_table(records: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The ranking table and the sentences naming models whose rank changes."""
    best = most_effective(records)
    best = best[best["pgd"].notna()]  # ranked where plain PGD was run
    if best.empty:
        return pd.DataFrame(), []
    means = best.groupby(["strength", "model"], sort=False)[["pgd", "worst"]].mean().reset_index()
    means["rank (PGD)"] = means.groupby("strength")["pgd"].rank(ascending=False, method="min").astype("Int64")
    means["rank (worst case)"] = means.groupby("strength")["worst"].rank(ascending=False, method="min").astype("Int64")
    pgd = seed_stats(best.rename(columns={"pgd": "accuracy"}), ["strength", "model"], scale=1.0)
    worst = seed_stats(best.rename(columns={"worst": "accuracy"}), ["strength", "model"], scale=1.0)
    strongest = best.groupby(["strength", "model"], sort=False)["strongest single attack"].agg(
        lambda s: ", ".join(dict.fromkeys(s)))
    table = means[["strength", "model", "rank (PGD)", "rank (worst case)"]].copy()
    keys = list(zip(means["strength"], means["model"], strict=True))
    table.insert(2, "PGD %", [pgd[k] for k in keys])
    table.insert(3, "worst case %", [worst[k] for k in keys])
    table["strongest single attack"] = [strongest[k] for k in keys]
    table = table.sort_values(["strength", "rank (worst case)", "rank (PGD)"], kind="stable").rename(
        columns={"strength": "ε"})
    return table, _rank_changes(means)


def _rank_changes(means: pd.DataFrame) -> list[str]:
    """Sentences for the models whose order against another model flips between plain PGD and the
    worst case (above by one, below by the other). A model that only joins or leaves a tie has
    not changed places: "3rd by PGD, 2nd by the worst case" among models all at 0% is no news."""
    changes = []
    for eps, group in means.groupby("strength", sort=False):
        rows = group.to_dict("records")
        for r in rows:
            flipped = [o for o in rows if o["model"] != r["model"]
                       and (r["pgd"] - o["pgd"]) * (r["worst"] - o["worst"]) < 0]
            if not flipped:
                continue
            below = [o["model"] for o in flipped if r["worst"] < o["worst"]]
            above = [o["model"] for o in flipped if r["worst"] > o["worst"]]
            where = "; ".join(part for part in (f"now below {', '.join(below)}" if below else "",
                                                f"now above {', '.join(above)}" if above else "") if part)
            changes.append(f"{r['model']} at ε={eps:g}: {_ordinal(r['rank (PGD)'])} by PGD, "
                           f"{_ordinal(r['rank (worst case)'])} by the worst case ({where})")
    return changes


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def plot_sweeps(white: pd.DataFrame, colours: dict[str, tuple[float, float, float]], folder: Path) -> list[Path]:
    """Accuracy vs strength, one panel per evaluation, one line per model."""
    data = accuracies(white)
    data = data[data["param"] != ""].copy()
    data["accuracy (%)"] = data["accuracy"] * 100
    evaluations = list(dict.fromkeys(data["evaluation"]))
    if not evaluations:
        return []
    cols = min(4, len(evaluations))
    rows = -(-len(evaluations) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, evaluation in zip(axes.flat, evaluations, strict=False):
        part = data[data["evaluation"] == evaluation]
        sns.lineplot(data=part, x="strength", y="accuracy (%)", hue="model", palette=colours, marker="o",
                     errorbar="sd", ax=ax, legend=False)
        ax.set_title(evaluation)
        ax.set_xticks(sorted(part["strength"].unique()))
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_xlabel(UNITS.get(part["param"].iloc[0], part["param"].iloc[0]))
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(evaluations):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=c, marker="o", label=m) for m, c in colours.items()]
    fig.legend(handles=handles, title="model", loc="lower center", ncol=len(handles), bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Accuracy under each perturbation (higher is more robust)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, folder / "accuracy_vs_strength")


def plot_transfer(records: pd.DataFrame, folder: Path) -> list[Path]:
    """Source x target heatmaps of accuracy, one figure per attack, one panel per eps."""
    paths: list[Path] = []
    for evaluation in dict.fromkeys(records["evaluation"]):
        part = records[records["evaluation"] == evaluation]
        strengths = sorted(part["strength"].unique())
        fig, axes = plt.subplots(1, len(strengths), figsize=(4.6 * len(strengths), 4.2), squeeze=False)
        for ax, eps in zip(axes.flat, strengths, strict=True):
            matrix = transfer_matrix(part, evaluation, eps)
            sns.heatmap(matrix, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="viridis", ax=ax,
                        cbar_kws={"label": "target accuracy (%)"})
            ax.set_title(f"{evaluation}, ε = {eps:g}")
            ax.set_xlabel("target model (evaluated)")
            ax.set_ylabel("source model (crafted on)")
        fig.suptitle(f"Transfer of {evaluation} adversarial examples (diagonal = white-box)")
        fig.tight_layout()
        paths += _save(fig, folder / f"transfer_{evaluation}")
    return paths


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(out[0], dpi=110, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
    plt.close(fig)
    return out


def corruption_table(white: pd.DataFrame, reference: str) -> pd.DataFrame:
    """MNIST-C: per model, the accuracy (%) under each corruption (mean over the severities run),
    the mean corruption error (%, over every corruption and severity), and the corruption error
    relative to the reference model as ImageNet-C defines it: CE_c = sum over severities of the
    model's error / the reference's, mCE = the mean of CE_c over corruptions (100 = as the
    reference; lower is more robust)."""
    part = accuracies(white[white["kind"].isin(CORRUPTION_KINDS) & (white["source"] == white["model"])])
    if part.empty:
        return pd.DataFrame()
    models = list(dict.fromkeys(part["model"]))
    table = seed_stats(part, ["model", "evaluation"]).unstack("evaluation")
    table = table.reindex(index=models, columns=list(dict.fromkeys(part["evaluation"])))
    table.columns = [f"{c} %" for c in table.columns]
    error = part.assign(error=1 - part["accuracy"])
    table["mean corruption error %"] = seed_stats(error, ["model"], value="error")
    # ImageNet-C's CE: errors summed over the severities, each first averaged over the seeds, and
    # only over the severities both the model and the reference have.
    mean_error = error.groupby(["model", "evaluation", "strength"], sort=False)["error"].mean()
    if reference in mean_error.index.get_level_values("model"):
        base = mean_error.xs(reference, level="model")
        ratios = {}
        for model in models:
            mine = mean_error.xs(model, level="model")
            shared = mine.index.intersection(base.index)
            summed_mine = mine.loc[shared].groupby(level="evaluation").sum()
            summed_base = base.loc[shared].groupby(level="evaluation").sum()
            ratio = (summed_mine / summed_base[summed_base > 0]).dropna()  # a corruption dense never errs on: left out
            ratios[model] = round(float(ratio.mean() * 100), 1) if len(ratio) else np.nan
        table[f"mCE vs {reference} (100 = same)"] = pd.Series(ratios)
    table.index.name = "model"
    return table.reset_index()


def plot_corruptions(x: torch.Tensor, eval_seed: int, folder: Path) -> list[Path]:
    """One test image under each of MNIST-C's corruptions at its default severity."""
    names = list(CORRUPTIONS)
    fig, axes = plt.subplots(2, 8, figsize=(13, 3.8))
    panels = [("clean", x)] + [(n, corrupt(n, x, CORRUPTIONS[n].default_severity,
                                           [generator(stable_seed(eval_seed, "corruption picture", n))]))
                               for n in names]
    for ax, (name, image) in zip(axes.flat, panels, strict=True):
        picture = image[0].permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
        severity = "" if name == "clean" else f" ({CORRUPTIONS[name].default_severity})"
        ax.set_title(f"{name.replace('_', ' ')}{severity}", fontsize=9)
        ax.axis("off")
    fig.suptitle("A test image under each MNIST-C corruption (MNIST-C's default severity in brackets)")
    fig.tight_layout()
    return _save(fig, folder / "corruptions")


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


def _header(plan: harness.Plan) -> list[tuple[str, str]]:
    versions = library_versions()
    hashes = ", ".join(f"{m} (seed {s}): `{h[:12]}`" for (m, s), h in plan.checkpoints.items())
    brought = [s for s in plan.specs if s.family == EXTERNAL]
    return [
        ("dataset", f"{plan.info.name} ({plan.info.description})"),
        ("split", plan.data.split),
        ("test images", str(plan.n)),
        ("test-set fingerprint (SHA-256)", f"`{plan.fingerprint[:16]}`"),
        ("suite", f"{plan.suite.name}: {plan.suite.description}"),
        ("attack backend", plan.setup.backend or "as the suite says"),
        ("attack mode", attack_mode(plan.suite)),
        ("training seeds", ", ".join(map(str, plan.seeds))),
        ("evaluation seed", str(plan.suite.seed)),
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("perturbation code (SHA-256)", f"`{environment()['code']}`"),
        ("checkpoints (SHA-256)", hashes),
        *([("models brought as objects", "; ".join(f"{s.name}: {s.description}" for s in brought))] if brought else []),
        *([("notes", "; ".join(plan.setup.notes))] if plan.setup.notes else []),
    ]


SYMBOLS = {"eps": "ε", "eta": "η", "sigma": "σ", "size": "size "}
WORST = "worst case over attacks"


def _at(param: str, strength: float) -> str:
    symbol = SYMBOLS.get(param, f"{param} ")
    return f"{symbol}={strength:g}" if symbol.strip() == symbol else f"{symbol}{strength:g}"


def comparisons(white: pd.DataFrame, everything: pd.DataFrame) -> pd.DataFrame:
    """Every model against the reference (`dense`) at every accuracy cell with strength > 0 (and
    clean), and under the worst case over attacks at each eps: `stats.compare_to_reference`,
    Holm-corrected over the whole table."""
    own = accuracies(white[white["source"] == white["model"]])
    own = own[(own["strength"] > 0) | (own["kind"] == "clean")]
    worst = worst_case_per_seed(everything).assign(evaluation=WORST, kind="worst", param="eps")
    frame = pd.concat([own, worst], ignore_index=True) if not worst.empty else own
    table = compare_to_reference(frame[["evaluation", "strength", "model", "seed", "accuracy", "n", "flags"]])
    params = dict(zip(frame["evaluation"], frame["param"], strict=False))
    kinds = dict(zip(frame["evaluation"], frame["kind"], strict=False))
    table.insert(2, "param", [params.get(e, "") for e in table["evaluation"]])
    table.insert(3, "kind", [kinds.get(e, "") for e in table["evaluation"]])
    return table


# Models whose clean accuracy is further than this from the reference's are flagged in the answer:
# the fair-recipe rule of the full-size study (models/zoo.toml records the recipe search).
CLEAN_GAP_POINTS = 1.5


def answer(tests: pd.DataFrame, models: list[str], n: int, fired: dict[str, list[str]] | None = None,
           scores: pd.DataFrame | None = None) -> list[str]:
    """Two to five sentences: which models have significantly higher or lower accuracy than the
    reference under which perturbations (at how many of the strengths tested, and where the gap is
    largest), their clean accuracy apart, a warning where a masking check fired for a model whose
    attack numbers look better, how it was tested, and (with `scores`, from
    `stats.compare_noise_scores`) which noise scores differ significantly from the reference's.
    `fired`: model -> the masking checks that fired for it."""
    tested = tests[tests["p"].notna()] if not tests.empty else tests
    if tested.empty:
        return [f"Only {models[0] if models else 'no model'} was evaluated, or no comparison could be tested: "
                "there is nothing to compare."]
    ref = str(tested["reference"].iloc[0])
    fired = fired or {}
    robust = tested[tested["evaluation"] != "clean"]
    sig = robust[robust["significant"]]

    def listing(part: pd.DataFrame) -> str:
        per_model = []
        for model, rows in part.groupby("model", sort=False):
            evaluations = list(dict.fromkeys(rows["evaluation"]))
            of = int((robust["model"].eq(model) & robust["evaluation"].isin(evaluations)).sum())
            top = rows.loc[rows["difference"].abs().idxmax()]
            items = [f"{', '.join(evaluations)} (at {len(rows)} of their {of} strengths; largest: "
                     f"{top['difference']:+.1f} points, {top['evaluation']} at "
                     f"{_at(str(top['param']), float(top['strength']))})"]
            attacked = rows["kind"].isin([*ATTACKS, "worst"]).any()
            warning = (f" - but masking checks fired for {model} ({', '.join(fired[model])}), so its numbers "
                       "under attack may overstate its robustness" if attacked and fired.get(model) else "")
            per_model.append(f"{model} under {', '.join(items)}{warning}")
        return "; ".join(per_model)

    better, worse = sig[sig["difference"] > 0], sig[sig["difference"] < 0]
    sentences = [
        f"Significantly higher accuracy than {ref}: {listing(better)}." if not better.empty
        else f"No model has significantly higher accuracy than {ref} under any perturbation.",
        f"Significantly lower accuracy than {ref}: {listing(worse)}." if not worse.empty
        else f"No model has significantly lower accuracy than {ref} under any perturbation.",
    ]
    clean = tested[(tested["evaluation"] == "clean") & tested["significant"]]
    apart = tested[(tested["evaluation"] == "clean") & (tested["difference"].abs() > CLEAN_GAP_POINTS)]
    if not clean.empty:
        beyond = [m for m in clean["model"] if m in set(apart["model"])]
        sentences.append(f"Clean accuracy differs significantly from {ref}'s for "
                         + ", ".join(f"{r.model} ({r.difference:+.1f} points)" for r in clean.itertuples())
                         + ": a gap that confounds the comparisons above"
                         + (f"; for {', '.join(beyond)} it is beyond the {CLEAN_GAP_POINTS:g}-point rule of a fair "
                            f"recipe, so their recipes do not match {ref}'s clean accuracy." if beyond else "."))
        apart = apart[~apart["model"].isin(clean["model"])]  # named once
    if not apart.empty:
        sentences.append(f"Not within {CLEAN_GAP_POINTS:g} points of {ref}'s clean accuracy (mean over seeds): "
                         + ", ".join(f"{r.model} ({r.difference:+.1f})" for r in apart.itertuples())
                         + f". Their recipes do not match {ref}'s clean accuracy, so a robustness difference "
                         "may be a difference in how well they were trained.")
    compared = list(dict.fromkeys(tested["model"]))
    quiet = [m for m in compared if m not in set(sig["model"])]
    untested = [m for m in models if m != ref and m not in compared]
    how = {"McNemar exact": f"McNemar's exact test on the same {n} test images",
           "Welch t": "Welch's t-test over training seeds"}
    worst_too = f", and the {WORST} at each ε" if (tested["evaluation"] == WORST).any() else ""
    tail = (f"Tests: {' and '.join(how.get(t, t) for t in sorted(set(tested['test'])))}, Holm-corrected over the "
            f"{len(tested)} comparisons tested (every perturbation at every strength{worst_too}), α = 0.05; "
            "differences in accuracy points.")
    if scores is not None and scores["p"].notna().any():
        sentences.append(noise_score_sentence(scores))
    sentences.append((f"No significant difference from {ref} under any perturbation: {', '.join(quiet)}. "
                      if quiet else "")
                     + (f"Not compared (no results beside {ref}'s): {', '.join(untested)}. " if untested else "")
                     + tail)
    return sentences


def noise_score_sentence(scores: pd.DataFrame) -> str:
    """The paper's own measure in one sentence: which noise scores differ significantly from the
    reference's (one test per model, Holm-corrected over the models)."""
    tested = scores[scores["p"].notna()]
    ref = str(tested["reference"].iloc[0])

    def names(part: pd.DataFrame) -> str:
        return ", ".join(f"{r.model} ({r.difference:+.0f})" for r in part.itertuples())

    sig = tested[tested["significant"]]
    higher, lower = sig[sig["difference"] > 0], sig[sig["difference"] < 0]
    quiet = tested[~tested["significant"]]
    parts = [f"significantly higher than {ref}'s: {names(higher)}" if not higher.empty else "",
             f"significantly lower: {names(lower)}" if not lower.empty else "",
             f"not significantly different: {names(quiet)}" if not quiet.empty else ""]
    over = f"Holm-corrected over the {len(tested)} models" if len(tested) > 1 else "one model"
    return (f"Noise score (the paper's measure: one test per model, {over}; differences in images "
            "counted correct): " + "; ".join(p for p in parts if p) + ".")


def _marked(table: pd.DataFrame, tests: pd.DataFrame, key: str) -> pd.DataFrame:
    """`table` with " *" after every number significantly different from the reference's.
    key "per strength": rows (evaluation, strength), columns models; "worst": rows models, columns ε=…"""
    sig = tests[tests["significant"]]
    out = table.copy().astype(object)
    for row in sig.itertuples(index=False):
        if key == "per strength":
            hit = (out["evaluation"] == row.evaluation) & (out["strength"] == row.strength)
            column = row.model
        else:
            if row.evaluation != WORST:
                continue
            hit = out["model"] == row.model
            column = f"ε={row.strength:g}"
        if column in out.columns and hit.any():
            out.loc[hit, column] = [f"{v} *" for v in out.loc[hit, column]]
    return out


MARK_NOTE = " A * marks a number significantly different from {ref}'s (Holm-corrected, α = 0.05; see the last table)."


def build_report(plan: harness.Plan, formats: tuple[str, ...] = ("markdown", "html")) -> Report:
    """Write the report under reports/<dataset>/<run>/ (report.md and report.html, or report.tex
    with `formats=("latex",)`), tables/*.csv, figures/*, each model's card under
    reports/<dataset>/cards/, and reports/index.html."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise UserError(f"unknown report format(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                        f"valid: {', '.join(FORMATS)}")
    store = harness.open_store(plan.paths, plan.info.name)
    cells = plan.cells()
    has_transfer = bool(plan.suite.transfer_cells())
    moved = transfer_cells(plan) if has_transfer else []
    white = harness.cell_frame(store, cells, plan)
    moves = harness.cell_frame(store, moved, plan)
    missing = len({c.key for c in cells + moved} - store.present(c.key for c in cells + moved))
    if white.empty:
        backend = f" --backend {plan.setup.backend}" if plan.setup.backend else ""
        raise UserError(f"no stored results for run {plan.setup.run_name!r} on {plan.info.name}; run "
                        f"`rbs evaluate --dataset {plan.info.name} --suite {plan.suite.name}{backend}` first")
    folder = plan.folder
    figures_dir, tables_dir = folder / "figures", folder / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    models = [s.name for s in plan.specs]
    colours = palette(models)

    everything = pd.concat([white, moves[moves["source"] != moves["model"]]], ignore_index=True) if not moves.empty else white
    tests = comparisons(white, everything)
    ref = reference_model(list(dict.fromkeys(white["model"])))
    scores = compare_noise_scores(paper_pixel(accuracies(white[white["source"] == white["model"]])), ref)
    marks = MARK_NOTE.format(ref=ref) if not tests.empty else ""
    overview = summary(everything, plan.info.num_classes)
    strengths = per_strength(white).reset_index()
    worst = worst_case(everything).reset_index()
    sections: list[tuple[str, str, pd.DataFrame]] = [
        ("Overview", "Clean accuracy, each evaluation at its strongest setting, the paper's pixel-noise "
         f"score, and the status of the gradient-masking checks (accuracy %{SEEDS_NOTE}).", overview),
        ("Mean robust accuracy over the ε sweep", "Mean accuracy (%) over each attack's ε > 0.",
         sweep_means(white).reset_index()),
        ("Worst case over attacks", "Per model and ε, the share of test images that survive every attack "
         "run against that model (white-box and transfer), judged per image." + marks, worst),
        ("Accuracy per evaluation and strength", f"Accuracy (%{SEEDS_NOTE})." + marks, strengths),
    ]
    corrupted = corruption_table(white, ref)
    if not corrupted.empty:
        sections.insert(2, ("Common corruptions (MNIST-C)", "Accuracy (%) under each of MNIST-C's corruptions "
                            "(mean over the severities run), the mean corruption error, and the corruption error "
                            f"relative to {ref} (ImageNet-C's mCE: per corruption the model's summed error over "
                            f"severities / {ref}'s, averaged; below 100 = more robust than {ref})."
                            " With several training seeds: mean ± std over seeds.", corrupted))
    ranking, changes = rank_table(everything)
    if not ranking.empty:
        text = ("Per model and ε: plain PGD accuracy beside the per-sample worst case over every attack run "
                "(white-box, BPDA, black-box and transfer), with the regularisers ranked by each "
                "(1 = most robust). ")
        text += ("Rankings that change: " + "; ".join(changes) + "." if changes
                 else "No model's rank changes between plain PGD and the worst case.")
        sections.insert(1, ("Most effective attack: ranking", text, ranking))
    if not scores.empty:
        shown_scores = scores.drop(columns=["reference"]).assign(
            **{"noise score": scores["noise score"].round(0), "difference": scores["difference"].round(0),
               "p": scores["p"].map(_p), "p (Holm)": scores["p (Holm)"].map(_p)})
        sections.insert(1 + (not ranking.empty), (f"Noise score against {ref}", "The paper's noise score (total correct over every "
                            "pixel-noise level; mean over training seeds) of each model minus "
                            f"{ref}'s, counted over the levels both have (`levels`), one test per model (Welch's t over the "
                            "seeds' scores; with one seed, Wilcoxon's signed-rank test over the same images of how many "
                            "levels each survives), Holm-corrected over the models of this table.", shown_scores))
    checks = masking_checks(everything, plan.info.num_classes)
    fired = int((checks["status"] == "fired").sum())
    not_run = int((checks["status"] == "not run").sum())
    text = (f"Each of the {len(CHECK_NEEDS)} checks per model: **fired** (a sign that an attack, not the model, may be weak "
            "for these numbers; with the evidence), **passed** (the suite ran what the check needs and it did "
            "not fire), or **not run** (the suite lacks what the check needs; named). "
            f"Here: {fired} fired, {not_run} not run.")
    if not_run:
        text += (" A check that did not run says nothing either way: run the `masking` suite "
                 f"(`rbs benchmark --suite masking`) for all {len(CHECK_NEEDS)}.")
    if not checks.empty and (checks["status"] == "not run").all():  # e.g. a noise-only suite
        text = (f"This suite runs nothing the {len(CHECK_NEEDS)} gradient-masking checks read (no attack, no "
                "gradient, determinism or logits measurement): none could run, which says nothing either way. "
                "Run the `masking` suite (`rbs benchmark --suite masking`) for all of them.")
        sections.append(("Gradient-masking checks", text, pd.DataFrame()))
    else:
        sections.append(("Gradient-masking checks", text, checks))
    if not moves.empty:
        for evaluation in dict.fromkeys(moves["evaluation"]):
            for eps in sorted(moves.loc[moves["evaluation"] == evaluation, "strength"].unique()):
                matrix = transfer_table(moves, evaluation, eps)
                matrix.index.name = "source \\\\ target"
                sections.append((f"Transfer: {evaluation}, ε = {eps:g}",
                                 "Accuracy (%) of each target (columns) on examples crafted on each source (rows) "
                                 "by the full attack (no pruning, no early stopping: examples that only just fool "
                                 "their source would transfer worse); the diagonal is that attack's white-box "
                                 f"result; `{ENSEMBLE}` attacks the mean logits of "
                                 f"{', '.join(plan.suite.transfer.ensemble) or 'no models'}.",
                                 matrix.reset_index()))
    if not tests.empty:
        shown = tests.drop(columns=["reference", "param", "kind"]).assign(
            difference=tests["difference"].round(2), p=tests["p"].map(_p), **{"p (Holm)": tests["p (Holm)"].map(_p)})
        sections.append((f"Differences from {ref}", f"Every comparison behind the * marks and the opening "
                         f"sentences: accuracy of each model minus {ref}'s (points), the test, its p-value and "
                         "the Holm-corrected p over this table.", shown))
    # a suite without attacks has no eps sweep and no worst case: no such sections
    sections = [(t, x, tb) for t, x, tb in sections if not (tb is worst or t.startswith("Mean robust"))
                or len(tb.columns) > 1]
    for title, _, table in sections:
        if not table.empty:  # the comparisons with their unrounded p-values
            (tests if title.startswith("Differences from") else scores if title.startswith("Noise score against")
             else table).to_csv(
                tables_dir / f"{_slug(title)}.csv", index=False)
    # the presentation tables carry the significance marks (the CSV files keep plain numbers)
    sections = [(t, x, _marked(tb, tests, "worst") if tb is worst else
                 _marked(tb, tests, "per strength") if tb is strengths else tb) for t, x, tb in sections]

    figures = plot_sweeps(white, colours, figures_dir)
    if not corrupted.empty:
        figures += plot_corruptions(plan.test_set()[0][:1], plan.suite.seed, figures_dir)
    if not moves.empty:
        figures += plot_transfer(moves, figures_dir)
    fired_by_model = {m: sorted({c.split(". ", 1)[1] for c in rows["check"]})
                      for m, rows in checks[checks["status"] == "fired"].groupby("model", sort=False)}
    page = Page(f"robustbench-sparse: {plan.info.name}, suite {plan.setup.run_name}",
                answer(tests, models, plan.n, fired_by_model, scores), _header(plan), sections, figures, missing)
    written: dict[str, Path] = {}
    if "markdown" in formats:
        written["markdown"] = folder / "report.md"
        written["markdown"].write_text(_markdown(page, folder))
    if "html" in formats:
        written["html"] = folder / "report.html"
        written["html"].write_text(_html(page))
    if "latex" in formats:
        written["latex"] = folder / "report.tex"
        written["latex"].write_text(_latex(page, folder))
    write_cards(plan, white, everything, checks, tests)
    build_index(plan.paths)
    return Report(folder, written.get("markdown", folder / "report.md"), written.get("html", folder / "report.html"),
                  figures, missing, written.get("latex"))


FORMATS = ("markdown", "html", "latex")


def _p(p: float) -> str:
    return "" if pd.isna(p) else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


@dataclass(frozen=True)
class Page:
    """One report's content in reading order: the answer, the key plot, the tables, the other
    plots, the provenance."""

    title: str
    answer: list[str]
    header: list[tuple[str, str]]
    sections: list[tuple[str, str, pd.DataFrame]]
    figures: list[Path]
    missing: int

    @property
    def pngs(self) -> list[Path]:
        return [f for f in self.figures if f.suffix == ".png"]

    @property
    def key_plot(self) -> Path | None:
        return next((f for f in self.pngs if f.stem == "accuracy_vs_strength"), None)

    @property
    def other_plots(self) -> list[Path]:
        return [f for f in self.pngs if f != self.key_plot]


def _slug(text: str) -> str:
    """An ASCII file name for a section title."""
    text = text.lower().replace("ε", "eps")
    slug = "".join(c if c.isascii() and c.isalnum() else "_" for c in text)
    while "__" in slug:
        slug = slug.replace("__", "_")
    return slug.strip("_")


def _missing_note(missing: int) -> str:
    return (f"**{missing} declared cells have no stored result yet** (run `rbs evaluate` / `rbs transfer`); "
            "their entries are blank.\n\n" if missing else "")


def _markdown(page: Page, folder: Path) -> str:
    lines = [f"# {page.title}", "", " ".join(page.answer), "", _missing_note(page.missing)]
    if page.key_plot:
        lines += [f"![{page.key_plot.stem}]({page.key_plot.relative_to(folder).as_posix()})", ""]
    for heading, text, table in page.sections:
        lines += [f"## {heading}", "", text, ""]
        if not table.empty:
            lines += [table.to_markdown(index=False), ""]
    if page.other_plots:
        lines += ["## More plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(folder).as_posix()})\n" for p in page.other_plots]
    lines += ["## Provenance", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in page.header]
    return "\n".join(lines) + "\n"


CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;line-height:1.45}"
       ".scroll{overflow-x:auto;max-width:100%;margin:.5em 0 1.5em}"
       "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
       "table.results td{white-space:nowrap}"  # a wide table scrolls in its box rather than growing tall rows
       "th{background:#eee}img{max-width:100%;display:block;margin:1em 0}"
       ".answer{font-size:1.1em;background:#f4f8ff;border-left:4px solid #36c;padding:.6em 1em}"
       ".meta td{text-align:left;overflow-wrap:anywhere}.meta th{text-align:left;white-space:nowrap}")


def _img(path: Path, cls: str = "plot") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img class='{cls}' alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"


def _html(page: Page) -> str:
    """One self-contained page, read top-down: the answer, the key plot, the tables (each in its
    own horizontally scrolling box, so the page never scrolls sideways), the other plots, then the
    provenance. Plots are embedded as data URIs; no external resources."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(page.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(page.title)}</h1>",
        "<div class='answer'>" + "".join(f"<p>{html.escape(s)}</p>" for s in page.answer) + "</div>",
    ]
    if page.missing:
        parts.append(f"<p><strong>{page.missing} declared cells have no stored result yet.</strong></p>")
    if page.key_plot:
        parts.append(_img(page.key_plot))
    for heading, text, table in page.sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text.replace('**', ''))}</p>")
        if not table.empty:
            parts.append("<div class='scroll'>" + table.to_html(index=False, classes="results", na_rep="", border=0)
                         + "</div>")
    if page.other_plots:
        parts.append("<h2>More plots</h2>")
        parts += [_img(p) for p in page.other_plots]
    parts.append("<h2>Provenance</h2><div class='scroll'><table class='meta'>")
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v.replace('`', ''))}</td></tr>" for k, v in page.header]
    parts.append("</table></div>")
    # Lets a headless browser (and the tests) confirm that every plot rendered and that the page
    # does not scroll sideways at the window's width.
    parts.append("<script>window.addEventListener('load',()=>{const i=[...document.images];const d=document.body.dataset;"
                 "d.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;d.images=i.length;"
                 "d.tables=document.querySelectorAll('table.results').length;"
                 "d.pageWidth=document.documentElement.scrollWidth;d.viewWidth=window.innerWidth;});</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


# pdflatex reads these through math mode or textcomp; everything else is escaped by pandas.
LATEX_CHARS = {"±": r"$\pm$", "ε": r"$\varepsilon$", "η": r"$\eta$", "σ": r"$\sigma$", "≤": r"$\leq$",
               "≥": r"$\geq$", "×": r"$\times$", "→": r"$\rightarrow$", "∞": r"$\infty$", "α": r"$\alpha$",
               "−": "-", "’": "'", "“": "``", "”": "''", "…": r"\ldots{}", "β": r"$\beta$"}


def _tex(text: str) -> str:
    """Plain text for LaTeX: special characters escaped, the report's Greek and symbols mapped."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    out = "".join(special.get(c, c) for c in text.replace("**", "").replace("`", ""))
    return _tex_symbols(out)


def _tex_symbols(text: str) -> str:
    for char, tex in LATEX_CHARS.items():
        text = text.replace(char, tex)
    return "".join(c if ord(c) < 128 else "?" for c in text)


def latex_table(table: pd.DataFrame) -> str:
    """A booktabs table from pandas' Styler (escaped for LaTeX), ± and * marks kept, squeezed to the
    text width when it has many columns."""
    frame = table.copy()
    frame.columns = [str(c) for c in frame.columns]
    styler = frame.style.hide(axis="index").format(
        lambda v: "" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else str(v), escape="latex")
    styler = styler.format_index(escape="latex", axis=1)
    body = _tex_symbols(styler.to_latex(hrules=True, column_format="l" + "r" * (len(frame.columns) - 1)))
    if len(frame.columns) > 6:
        body = "\\resizebox{\\linewidth}{!}{%\n" + body + "}"
    return "\\begin{center}\n" + body + "\\end{center}\n"


def _latex(page: Page, folder: Path) -> str:
    """A standalone LaTeX document (pdflatex with booktabs and graphicx): the same order as the
    HTML page; tables paste into a paper as they are."""
    lines = [r"\documentclass[10pt]{article}", r"\usepackage[utf8]{inputenc}", r"\usepackage[T1]{fontenc}",
             r"\usepackage{booktabs}", r"\usepackage{graphicx}", r"\usepackage[margin=2cm]{geometry}",
             r"\begin{document}", f"\\section*{{{_tex(page.title)}}}", _tex(" ".join(page.answer)), ""]
    if page.missing:
        lines += [f"\\textbf{{{page.missing} declared cells have no stored result yet.}}", ""]

    def figure(path: Path) -> list[str]:
        return [r"\begin{center}", f"\\includegraphics[width=\\linewidth]{{{path.relative_to(folder).as_posix()}}}",
                r"\end{center}"]

    if page.key_plot:
        lines += figure(page.key_plot)
    for heading, text, table in page.sections:
        lines += [f"\\subsection*{{{_tex(heading)}}}", _tex(text), ""]
        if not table.empty:
            lines.append(latex_table(table))
    for plot in page.other_plots:
        lines += figure(plot)
    lines += [r"\subsection*{Provenance}", r"\begin{itemize}"]
    lines += [f"\\item \\textbf{{{_tex(k)}}}: {_tex(v)}" for k, v in page.header]
    lines += [r"\end{itemize}", r"\end{document}"]
    return "\n".join(lines) + "\n"


# --- model cards and the index ---------------------------------------------------------------------

CARD_SCHEMA = Path(__file__).parent / "schemas" / "card.schema.json"
CARD_FORMAT = "robustbench-sparse model card 1"


def _mean_std(values: pd.Series) -> tuple[float, float | None]:
    mean = float(values.mean())
    return round(mean, 2), (round(float(values.std(ddof=1)), 2) if len(values) > 1 else None)


def card_entry(plan: harness.Plan, model: str, white: pd.DataFrame, everything: pd.DataFrame,
               checks: pd.DataFrame, tests: pd.DataFrame) -> dict[str, object]:
    """One run's numbers for one model, in RobustBench's model-info spirit."""
    own = white[(white["model"] == model) & (white["source"] == model)]
    clean = own[own["kind"] == "clean"].groupby("seed")["accuracy"].mean() * 100
    worst = worst_case_per_seed(everything[everything["model"] == model])
    best = most_effective(everything[everything["model"] == model])
    robust = []
    for eps, rows in worst.groupby("strength"):
        mean, std = _mean_std(rows["accuracy"] * 100)
        strongest = best[best["strength"] == eps]["strongest single attack"]
        robust.append({"eps": float(eps), "accuracy": mean, "std": std, "attacks": int(rows["attacks"].max()),
                       "strongest_single_attack": ", ".join(dict.fromkeys(strongest)) or None})
    pixel = paper_pixel(own)
    noise = pixel.groupby("seed")["correct"].sum() if not pixel.empty else pd.Series(dtype=float)
    mine = tests[tests["model"] == model]
    clean_mean, clean_std = _mean_std(clean) if not clean.empty else (None, None)
    return {
        "run": plan.setup.run_name,
        "suite_file": plan.suite.source,
        "test_size": plan.n,
        "test_fingerprint": plan.fingerprint,
        "seeds": [s for s in plan.seeds if plan.has(model, s)],
        "checkpoints": {f"seed{s}": h for (m, s), h in plan.checkpoints.items() if m == model},
        "clean_accuracy": clean_mean,
        "clean_accuracy_std": clean_std,
        "robust_accuracy": robust,
        "noise_score": float(noise.mean()) if not noise.empty else None,
        "corruption_error": corruption_error(own),
        "masking_checks": {c: ("fired" if "fired" in set(st) else "passed" if "passed" in set(st) else "not run")
                           for c, st in checks[checks["model"] == model].groupby("check", sort=False)["status"]},
        "significant_differences": [
            {"evaluation": r["evaluation"], "strength": float(r["strength"]), "difference": round(float(r["difference"]), 2),
             "p_holm": float(r["p (Holm)"]), "test": r["test"]} for r in mine[mine["significant"]].to_dict("records")],
        "versions": library_versions(),
        "code": environment()["code"],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def corruption_error(own: pd.DataFrame) -> float | None:
    """The mean error (%) over every MNIST-C corruption and severity run, or None."""
    part = accuracies(own[own["kind"].isin(CORRUPTION_KINDS)])
    return None if part.empty else round(float((1 - part["accuracy"]).mean() * 100), 2)


def write_cards(plan: harness.Plan, white: pd.DataFrame, everything: pd.DataFrame, checks: pd.DataFrame,
                tests: pd.DataFrame) -> list[Path]:
    """reports/<dataset>/cards/<model>.json: per model, one entry per run (suite) reported, merged
    with the entries other runs wrote before."""
    folder = plan.paths.reports(plan.info.name) / "cards"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in plan.specs:
        if spec.name not in set(white["model"]):
            continue
        if plan.setup.label and spec.family != EXTERNAL:
            continue  # a run with a model of one's own leaves the zoo's cards as they are
        path = folder / f"{spec.name}.json"
        doc = json.loads(path.read_text()) if path.exists() else {}
        if doc.get("format") != CARD_FORMAT:
            doc = {}
        runs = doc.get("runs", {})
        runs[plan.setup.run_name] = card_entry(plan, spec.name, white, everything, checks, tests)
        architecture = ({"family": EXTERNAL, "class": spec.description} if spec.family == EXTERNAL
                        else {k: (v if isinstance(v, int | float | str | bool) else str(v))
                              for k, v in spec.summary().items() if k != "model"})
        doc = {"format": CARD_FORMAT, "name": spec.name, "dataset": plan.info.name,
               "description": spec.description, "architecture": architecture, "runs": dict(sorted(runs.items()))}
        atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def build_index(paths: Paths) -> Path:
    """reports/index.html: every dataset and run present, each with its overview table and a link."""
    root = paths.home / "reports"
    runs = sorted(p.parent.parent for p in root.glob("*/*/tables/overview.csv")
                  if any((p.parent.parent / f"report.{x}").exists() for x in ("html", "tex")))
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>robustbench-sparse reports</title><style>{CSS}</style></head><body>",
             "<h1>robustbench-sparse reports</h1>",
             "<p>Every dataset and suite with a report here, each with its overview table (accuracy % at each "
             "evaluation's strongest setting, the noise score and the masking checks). Model cards (JSON) are "
             "in each dataset's <code>cards/</code> folder.</p>"]
    for dataset in dict.fromkeys(r.parent.name for r in runs):
        parts.append(f"<h2>{html.escape(dataset)}</h2>")
        for run in (r for r in runs if r.parent.name == dataset):
            table = pd.read_csv(run / "tables" / "overview.csv")
            link = f"{dataset}/{run.name}/report.{'html' if (run / 'report.html').exists() else 'tex'}"
            parts.append(f"<h3><a href='{html.escape(link)}'>{html.escape(run.name)}</a></h3>")
            parts.append("<div class='scroll'>" + table.to_html(index=False, na_rep="", border=0) + "</div>")
    parts.append("</body></html>")
    index = root / "index.html"
    atomic_write_text(index, "\n".join(parts) + "\n")
    return index
