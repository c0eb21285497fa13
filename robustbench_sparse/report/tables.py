"""The report's tables, computed from stored records (pandas only: no plotting, no rendering)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from robustbench_sparse.analysis.diagnostics import most_effective
from robustbench_sparse.analysis.stats import compare_to_reference
from robustbench_sparse.analysis.tables import accuracies, seed_stats
from robustbench_sparse.evaluation.cells import decode_flags, encode_flags
from robustbench_sparse.evaluation.kinds import CORRUPTION_KINDS
from robustbench_sparse.perturb.attacks import ATTACKS
from robustbench_sparse.results.transfer import transfer_matrix

WORST = "worst case over attacks"
SYMBOLS = {"eps": "ε", "eta": "η", "sigma": "σ", "size": "size "}


def at(param: str, strength: float) -> str:
    """A strength with its parameter's symbol: "ε=0.3", "size 4"."""
    symbol = SYMBOLS.get(param, f"{param} ")
    return f"{symbol}={strength:g}" if symbol.strip() == symbol else f"{symbol}{strength:g}"


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
    against that model at that eps (white-box and transfer; per image, not a mean over attacks)."""
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
    return table, rank_changes(means)


def rank_changes(means: pd.DataFrame) -> list[str]:
    """Sentences for the models whose order against another model flips between plain PGD and the
    worst case. Joining or leaving a tie is not a change of places."""
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


def mce_column(reference: str) -> str:
    return f"mCE vs {reference} (100 = same)"


def corruption_table(white: pd.DataFrame, reference: str) -> pd.DataFrame:
    """MNIST-C: per model, the accuracy (%) under each corruption (mean over the severities run),
    the mean corruption error (%), and ImageNet-C's mCE relative to the reference (100 = as the
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
        table[mce_column(reference)] = pd.Series(ratios)
    table.index.name = "model"
    return table.reset_index()


def corruption_error(own: pd.DataFrame) -> float | None:
    """The mean error (%) over every MNIST-C corruption and severity run, or None."""
    part = accuracies(own[own["kind"].isin(CORRUPTION_KINDS)])
    return None if part.empty else round(float((1 - part["accuracy"]).mean() * 100), 2)


def comparisons(white: pd.DataFrame, everything: pd.DataFrame) -> pd.DataFrame:
    """Every model against the reference at every accuracy cell with strength > 0 (and clean), and
    under the worst case over attacks at each eps: `stats.compare_to_reference`, Holm-corrected
    over the whole table."""
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


def marked(table: pd.DataFrame, tests: pd.DataFrame, rows: str) -> pd.DataFrame:
    """`table` with " *" after every number significantly different from the reference's.
    rows "per strength": rows (evaluation, strength), columns models; "worst": rows models, columns ε=…"""
    sig = tests[tests["significant"]]
    out = table.copy().astype(object)
    for row in sig.itertuples(index=False):
        if rows == "per strength":
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


def p_text(p: float) -> str:
    """A p-value as shown: four decimals, "< 0.0001" below that, blank when untested."""
    return "" if pd.isna(p) else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")
