"""Tables that compare the regularisers, built from long-form records with pandas.

With several training seeds every number is shown as mean ± std over the seeds (sample std);
with one seed, as the plain number.
"""

from __future__ import annotations

import pandas as pd

from robustbench_sparse.analysis.diagnostics import check_summary, masking_checks
from robustbench_sparse.evaluation.kinds import ACCURACY, parse_spec


def _fmt(mean: float, std: float, count: int, digits: int) -> float | str:
    if count <= 1:
        return round(mean, digits) if digits else round(mean)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def seed_stats(frame: pd.DataFrame, keys: list[str], value: str = "accuracy", scale: float = 100.0,
               digits: int = 1, reduce: str = "mean") -> pd.Series:
    """`value` per `keys` and seed (mean, or sum for counts), then mean ± std over seeds."""
    per_seed = frame.groupby([*keys, "seed"], sort=False)[value].agg(reduce) * scale
    over = per_seed.groupby(level=list(range(len(keys))), sort=False)
    stats = pd.DataFrame({"mean": over.mean(), "std": over.std(ddof=1).fillna(0.0), "count": over.count()})
    return pd.Series([_fmt(m, s, c, digits) for m, s, c in stats.itertuples(index=False)], index=stats.index)


def paper_pixel(df: pd.DataFrame) -> pd.DataFrame:
    """The records of the paper's pixel noise (fill = mean + 2 std), not the forum's variants."""
    pixel = df[df["kind"] == "pixel"]
    if "spec" not in pixel.columns or pixel.empty:
        return pixel
    return pixel[pixel["spec"].map(lambda s: parse_spec(s)[1].get("fill", "paper") == "paper").astype(bool)]


def noise_scores(df: pd.DataFrame) -> pd.Series:
    """The paper's noise score per model: total correct over every pixel-noise level."""
    pixel = paper_pixel(df)
    if pixel.empty:
        return pd.Series(dtype=object, name="noise score")
    return seed_stats(pixel, ["model"], "correct", scale=1.0, digits=0, reduce="sum").rename("noise score")


def accuracies(df: pd.DataFrame) -> pd.DataFrame:
    """The records whose number is an accuracy (not, e.g., the share of live gradients)."""
    return df[df["metric"] == ACCURACY]


def summary(df: pd.DataFrame, num_classes: int = 10) -> pd.DataFrame:
    """One row per model: clean accuracy, each evaluation at its strongest setting (%), the noise
    score, and the status of the masking checks (from `df`'s white-box and transfer records)."""
    own = accuracies(df[df["source"] == df["model"]])
    models = list(dict.fromkeys(own["model"]))
    table = pd.DataFrame(index=pd.Index(models, name="model"))
    for evaluation, group in own.groupby("evaluation", sort=False):
        top = group["strength"].max()
        column = "clean %" if evaluation == "clean" else f"{evaluation}@{top:g} %"
        table[column] = seed_stats(group[group["strength"] == top], ["model"])
    scores = noise_scores(own)
    if not scores.empty:
        pixel = paper_pixel(own)
        levels = pixel.groupby("evaluation")["strength"].nunique().sum()
        table[f"noise score (max {levels * int(pixel['n'].max())})"] = scores
    checks = masking_checks(df, num_classes)
    table["masking checks"] = [check_summary(checks, m) for m in models]
    return table.reset_index()
