"""Reports built from stored results only: tables (Markdown, CSV, HTML) and seaborn plots.

Nothing is re-run here. Cells a suite declares that have no stored result are listed as missing.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed on servers and CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from robustbench_sparse import harness
from robustbench_sparse.attacks import ATTACKS, early_stops
from robustbench_sparse.cells import decode_flags, environment
from robustbench_sparse.diagnostics import masking_checks, most_effective
from robustbench_sparse.evaluations import kind_of
from robustbench_sparse.executor import ENSEMBLE
from robustbench_sparse.runtime import UserError, library_versions
from robustbench_sparse.suites import Suite
from robustbench_sparse.tables import accuracies, seed_stats, summary
from robustbench_sparse.transfer import transfer_cells, transfer_matrix

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
                     "attacks": len(group)})
    return pd.DataFrame(rows, columns=["model", "seed", "strength", "accuracy", "attacks"])


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
        *([("notes", "; ".join(plan.setup.notes))] if plan.setup.notes else []),
    ]


def build_report(plan: harness.Plan) -> Report:
    """Write report.md, report.html, tables/*.csv and figures/* under reports/<dataset>/<suite>/."""
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
    sections: list[tuple[str, str, pd.DataFrame]] = [
        ("Overview", "Clean accuracy, each evaluation at its strongest setting, the paper's pixel-noise "
         f"score, and the status of the six gradient-masking checks (accuracy %{SEEDS_NOTE}).",
         summary(everything, plan.info.num_classes)),
        ("Mean robust accuracy over the ε sweep", "Mean accuracy (%) over each attack's ε > 0.",
         sweep_means(white).reset_index()),
        ("Worst case over attacks", "Per model and ε, the share of test images that survive every attack "
         "run against that model (white-box and transfer), judged per image.", worst_case(everything).reset_index()),
        ("Accuracy per evaluation and strength", f"Accuracy (%{SEEDS_NOTE}).",
         per_strength(white).reset_index()),
    ]
    ranking, changes = rank_table(everything)
    if not ranking.empty:
        text = ("Per model and ε: plain PGD accuracy beside the per-sample worst case over every attack run "
                "(white-box, BPDA, black-box and transfer), with the regularisers ranked by each "
                "(1 = most robust). ")
        text += ("Rankings that change: " + "; ".join(changes) + "." if changes
                 else "No model's rank changes between plain PGD and the worst case.")
        sections.insert(1, ("Most effective attack: ranking", text, ranking))
    checks = masking_checks(everything, plan.info.num_classes)
    fired = int((checks["status"] == "fired").sum())
    not_run = int((checks["status"] == "not run").sum())
    text = ("Each of the six checks per model: **fired** (a sign that an attack, not the model, may be weak "
            "for these numbers; with the evidence), **passed** (the suite ran what the check needs and it did "
            "not fire), or **not run** (the suite lacks what the check needs; named). "
            f"Here: {fired} fired, {not_run} not run.")
    if not_run:
        text += (" A check that did not run says nothing either way: run the `masking` suite "
                 "(`rbs benchmark --suite masking`) for all six.")
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
    for title, _, table in sections:
        if not table.empty:
            table.to_csv(tables_dir / f"{_slug(title)}.csv", index=False)

    figures = plot_sweeps(white, colours, figures_dir)
    if not moves.empty:
        figures += plot_transfer(moves, figures_dir)
    header = _header(plan)
    title = f"robustbench-sparse: {plan.info.name}, suite {plan.setup.run_name}"
    markdown = folder / "report.md"
    markdown.write_text(_markdown(title, header, sections, figures, folder, missing))
    page = folder / "report.html"
    page.write_text(_html(title, header, sections, figures, missing))
    return Report(folder, markdown, page, figures, missing)


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


def _markdown(title: str, header: list[tuple[str, str]], sections: list[tuple[str, str, pd.DataFrame]],
              figures: list[Path], folder: Path, missing: int) -> str:
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in header]
    lines += ["", _missing_note(missing)]
    for heading, text, table in sections:
        lines += [f"## {heading}", "", text, ""]
        if not table.empty:
            lines += [table.to_markdown(index=False), ""]
    lines += ["## Plots", ""]
    for path in figures:
        if path.suffix == ".png":
            lines += [f"![{path.stem}]({path.relative_to(folder).as_posix()})", ""]
    return "\n".join(lines)


def _html(title: str, header: list[tuple[str, str]], sections: list[tuple[str, str, pd.DataFrame]],
          figures: list[Path], missing: int) -> str:
    """One self-contained page: plots embedded as data URIs, no external resources."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.25em .6em;"
        "text-align:right}th{background:#eee}img{max-width:100%;display:block;margin:1em 0}"
        ".meta td{text-align:left}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><table class='meta'>",
    ]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v.replace('`', ''))}</td></tr>" for k, v in header]
    parts.append("</table>")
    if missing:
        parts.append(f"<p><strong>{missing} declared cells have no stored result yet.</strong></p>")
    for heading, text, table in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>")
        if not table.empty:
            parts.append(table.to_html(index=False, classes="results", na_rep="", border=0))
    parts.append("<h2>Plots</h2>")
    for path in figures:
        if path.suffix == ".png":
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<img class='plot' alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>")
    # Lets a headless browser (and the tests) confirm that every plot decoded and rendered.
    parts.append("<script>window.addEventListener('load',()=>{const i=[...document.images];"
                 "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
                 "document.body.dataset.images=i.length;document.body.dataset.tables="
                 "document.querySelectorAll('table.results').length;});</script>")
    parts.append("</body></html>")
    return "\n".join(parts)
