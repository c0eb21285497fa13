"""Tables that compare the regularisers, built from long-form records with pandas."""

from __future__ import annotations

import pandas as pd

from robustbench_sparse.diagnostics import ordering_flags


def noise_scores(df: pd.DataFrame) -> pd.Series:
    """The paper's noise score per model: total correct over every pixel-noise level (mean over seeds)."""
    pixel = df[df["kind"] == "pixel"]
    if pixel.empty:
        return pd.Series(dtype=float, name="noise score")
    per_seed = pixel.groupby(["model", "seed"], sort=False)["correct"].sum()
    return per_seed.groupby(level="model", sort=False).mean().rename("noise score")


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: clean accuracy, each evaluation at its strongest setting (%), the noise
    score, and the masking flags raised (accuracies are means over seeds)."""
    own = df[df["source"] == df["model"]]
    models = list(dict.fromkeys(own["model"]))
    table = pd.DataFrame(index=pd.Index(models, name="model"))
    for evaluation, group in own.groupby("evaluation", sort=False):
        top = group["strength"].max()
        column = "clean %" if evaluation == "clean" else f"{evaluation}@{top:g} %"
        at_top = group[group["strength"] == top].groupby("model", sort=False)["accuracy"].mean() * 100
        table[column] = at_top.round(1)
    scores = noise_scores(own)
    if not scores.empty:
        levels = own[own["kind"] == "pixel"].groupby("evaluation")["strength"].nunique().sum()
        n = int(own["n"].max())
        table[f"noise score (max {levels * n})"] = scores.round(0)
    flags = ordering_flags(own)
    table["masking flags"] = [
        "; ".join(sorted({f.check for f in flags if f.model == m})) or "-" for m in models
    ]
    return table.reset_index()
