"""Whether a difference between two models is real: tests against a reference model (`dense`).

For each model and each (evaluation, strength) the accuracy difference from the reference is tested
- across training seeds, when both models have at least two whose accuracies vary: Welch's t over
  the per-seed accuracies (`scipy.stats.ttest_ind(equal_var=False)`);
- otherwise paired over the same test images: McNemar's exact test on the per-image correctness
  (`statsmodels`' `mcnemar`), the images of every seed both models have pooled.
The p-values of one table are corrected together with Holm's method (`statsmodels`'
`multipletests`), and a difference is significant when the corrected p is below 0.05.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from robustbench_sparse.cells import decode_flags

ALPHA = 0.05
COLUMNS = ["evaluation", "strength", "model", "reference", "difference", "test", "p", "p (Holm)", "significant"]


def reference_model(models: list[str]) -> str:
    """The model every other is compared with: `dense` where present, else the first."""
    return "dense" if "dense" in models else models[0]


def _flags(rows: pd.DataFrame) -> dict[int, np.ndarray]:
    """Per seed, the per-image correctness; several rows of one seed (the levels of a noise score)
    are joined in order of strength, so two models' images line up."""
    rows = rows.sort_values("strength", kind="stable") if "strength" in rows.columns else rows
    out: dict[int, list[np.ndarray]] = {}
    for r in rows.itertuples(index=False):
        out.setdefault(int(r.seed), []).append(decode_flags(r.flags, int(r.n)))
    return {seed: np.concatenate(parts) for seed, parts in out.items()}


def _mcnemar(mine: pd.DataFrame, ref: pd.DataFrame) -> tuple[float, str, float]:
    """Paired over the same test images, the images of every seed both models have pooled; the
    difference is taken over exactly those images."""
    fa, fb = _flags(mine), _flags(ref)
    common = sorted(set(fa) & set(fb))
    if not common:
        return float("nan"), "none (no common seed)", float("nan")
    x = np.concatenate([fa[s] for s in common])
    y = np.concatenate([fb[s] for s in common])
    difference = float(x.mean() - y.mean()) * 100
    # only the discordant pairs (x right, y wrong) and (x wrong, y right) enter the exact test
    table = [[int((x & y).sum()), int((x & ~y).sum())], [int((~x & y).sum()), int((~x & ~y).sum())]]
    if table[0][1] + table[1][0] == 0:
        return difference, "McNemar exact", 1.0
    return difference, "McNemar exact", float(mcnemar(table, exact=True).pvalue)


def _test(mine: pd.DataFrame, ref: pd.DataFrame) -> tuple[float, str, float]:
    """(difference in points, test name, p) of `mine` against `ref`: rows of one cell per seed.
    Welch's t over seeds where both have at least two and the per-seed accuracies vary; else
    McNemar's test over the images of the common seeds (with no spread over seeds, Welch's t is
    undefined, and calling such a difference certain would be wrong)."""
    a = mine.groupby("seed")["accuracy"].mean() * 100
    b = ref.groupby("seed")["accuracy"].mean() * 100
    if len(a) >= 2 and len(b) >= 2 and (a.std(ddof=1) > 0 or b.std(ddof=1) > 0):
        return float(a.mean() - b.mean()), "Welch t", float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    return _mcnemar(mine, ref)


def compare_to_reference(records: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """One row per (evaluation, strength, model other than the reference): the difference in
    accuracy points, the test, its p and Holm-corrected p over all rows, and whether it is
    significant at 0.05. `records`: accuracy records with per-image `flags` (one per model,
    evaluation, strength and seed)."""
    if records.empty:
        return pd.DataFrame(columns=COLUMNS)
    models = list(dict.fromkeys(records["model"]))
    ref = reference or reference_model(models)
    rows = []
    for (evaluation, strength), group in records.groupby(["evaluation", "strength"], sort=False):
        base = group[group["model"] == ref]
        if base.empty:
            continue
        for model in dict.fromkeys(group["model"]):
            if model == ref:
                continue
            difference, test, p = _test(group[group["model"] == model], base)
            rows.append({"evaluation": evaluation, "strength": strength, "model": model, "reference": ref,
                         "difference": difference, "test": test, "p": p})
    frame = pd.DataFrame(rows, columns=COLUMNS[:-2])
    frame["p (Holm)"] = np.nan
    tested = frame["p"].notna()
    if tested.any():
        frame.loc[tested, "p (Holm)"] = multipletests(frame.loc[tested, "p"], method="holm")[1]
    frame["significant"] = frame["p (Holm)"] < ALPHA
    return frame


SCORE_COLUMNS = ["model", "reference", "noise score", "difference", "test", "p", "p (Holm)", "significant"]


def compare_noise_scores(pixel: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """The paper's noise score (total correct over every pixel-noise level) of each model against
    the reference: one comparison per model, Holm-corrected over the models. `pixel`: the records of
    the paper's pixel noise (one per model, level and seed, with `correct` and `flags`).

    Same tests as `compare_to_reference`: Welch's t over the per-seed scores (a model's per-seed
    score is its mean accuracy over the levels times a constant, so testing the mean accuracy is
    testing the score), else McNemar over the images of every level and common seed."""
    if pixel.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    models = list(dict.fromkeys(pixel["model"]))
    ref = reference or reference_model(models)
    base = pixel[pixel["model"] == ref]
    if base.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    base_score = base.groupby("seed")["correct"].sum().mean()
    rows = []
    for model in models:
        if model == ref:
            continue
        mine = pixel[pixel["model"] == model]
        _, test, p = _test(mine, base)
        score = mine.groupby("seed")["correct"].sum()
        rows.append({"model": model, "reference": ref, "noise score": float(score.mean()),
                     "difference": float(score.mean() - base_score), "test": test, "p": p})
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS[:-2])
    frame["p (Holm)"] = np.nan
    tested = frame["p"].notna()
    if tested.any():
        frame.loc[tested, "p (Holm)"] = multipletests(frame.loc[tested, "p"], method="holm")[1]
    frame["significant"] = frame["p (Holm)"] < ALPHA
    return frame
