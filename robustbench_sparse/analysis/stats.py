"""Whether a difference between two models is real: tests against a reference model (`dense`).

For each model and each (evaluation, strength) the accuracy difference from the reference is tested
- across training seeds, when both models have at least two whose accuracies vary: Welch's t over
  the per-seed accuracies (`scipy.stats.ttest_ind(equal_var=False)`);
- otherwise paired over the same test images: McNemar's exact test on the per-image correctness
  (`statsmodels`' `mcnemar`), the images of every seed both models have pooled.
The p-values of one table are corrected together with Holm's method (`statsmodels`'
`multipletests`), and a difference is significant when the corrected p is below 0.05.
The paper's noise score is tested once per model (`compare_noise_scores`): Welch's t over the
per-seed scores, else Wilcoxon's signed-rank test over images, Holm over the models.

The masking checks (`diagnostics`) decide with one-sided tests of a direction named in advance
(`accuracy_test`, `share_test`, at MASKING_ALPHA): see `Evidence`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from robustbench_sparse.evaluation.cells import decode_flags

ALPHA = 0.05
COLUMNS = ["evaluation", "strength", "model", "reference", "difference", "test", "p", "p (Holm)", "significant"]


def reference_model(models: list[str]) -> str:
    """The model every other is compared with: `dense` where present, else the first."""
    return "dense" if "dense" in models else models[0]


def _flags(rows: pd.DataFrame) -> dict[int, np.ndarray]:
    return {int(r.seed): decode_flags(r.flags, int(r.n)) for r in rows.itertuples(index=False)}


def _discordant(x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """The discordant pairs of two per-image correctness vectors: (x right and y wrong, x wrong and
    y right). Only these carry information about which is more accurate (McNemar)."""
    return int((x & ~y).sum()), int((~x & y).sum())


def welch_p(a: pd.Series, b: pd.Series) -> float:
    """Welch's t-test's two-sided p of two samples of per-seed numbers."""
    with warnings.catch_warnings():
        # scipy warns of precision loss when the numbers are nearly identical (two models at 0%
        # under a strong attack on every seed, or clean accuracies a few images apart); p is then
        # near 1 or decided by the spread alone, as it should be, and the warning only alarms
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


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
    right_wrong, wrong_right = _discordant(x, y)
    table = [[int((x & y).sum()), right_wrong], [wrong_right, int((~x & ~y).sum())]]
    if right_wrong + wrong_right == 0:
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
        return float(a.mean() - b.mean()), "Welch t", welch_p(a, b)
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
    return _holm(pd.DataFrame(rows, columns=COLUMNS[:-2]))


def _holm(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its p-values Holm-corrected together ("p (Holm)") and "significant" at ALPHA."""
    frame["p (Holm)"] = np.nan
    tested = frame["p"].notna()
    if tested.any():
        frame.loc[tested, "p (Holm)"] = multipletests(frame.loc[tested, "p"], method="holm")[1]
    frame["significant"] = frame["p (Holm)"] < ALPHA
    return frame


SCORE_COLUMNS = ["model", "reference", "levels", "noise score", "difference", "test", "p", "p (Holm)", "significant"]


def _score_test(mine: pd.DataFrame, ref: pd.DataFrame) -> tuple[float, float, str, float]:
    """(score, difference from the reference, test, p) of one model's noise score, both counted over
    the same cells (evaluation, strength) and, for the paired test, the same seeds.

    Welch's t over the per-seed scores where both have at least two seeds and the scores vary.
    Otherwise paired over images: each image's number of levels it survives (own minus the
    reference's, every common seed's images pooled) in Wilcoxon's signed-rank test. Not McNemar over
    the images of all levels pooled: one image under 11 noise levels is not 11 independent pairs,
    and treating it so makes p far too small."""
    a = mine.groupby("seed")["correct"].sum()
    b = ref.groupby("seed")["correct"].sum()
    if len(a) >= 2 and len(b) >= 2 and (a.std(ddof=1) > 0 or b.std(ddof=1) > 0):
        p = welch_p(a.astype(float), b.astype(float))
        return float(a.mean()), float(a.mean() - b.mean()), "Welch t", p
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return float(a.mean()), float("nan"), "none (no common seed)", float("nan")

    def survived(rows: pd.DataFrame, seed: int) -> np.ndarray:
        own = rows[rows["seed"] == seed].sort_values(["evaluation", "strength"])
        return np.sum([decode_flags(r.flags, int(r.n)) for r in own.itertuples(index=False)], axis=0)

    d = np.concatenate([survived(mine, s).astype(int) - survived(ref, s).astype(int) for s in common])
    difference = float(d.sum()) / len(common)
    p = 1.0 if not d.any() else float(scipy_stats.wilcoxon(d).pvalue)
    return float(a.loc[common].mean()), difference, "Wilcoxon signed-rank", p


def compare_noise_scores(pixel: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """The paper's noise score (total correct over every pixel-noise level) of each model against
    the reference: one comparison per model, Holm-corrected over the models. `pixel`: the records of
    the paper's pixel noise (one per model, level and seed, with `correct` and `flags`). Each
    comparison counts both scores over the levels both models have for every one of their seeds
    (`levels`; a level missing from the store would otherwise bias the score)."""
    if pixel.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    models = list(dict.fromkeys(pixel["model"]))
    ref = reference or reference_model(models)
    if ref not in models:
        return pd.DataFrame(columns=SCORE_COLUMNS)

    def levels(rows: pd.DataFrame) -> set[tuple[str, float]]:
        per_seed = [set(zip(g["evaluation"], g["strength"], strict=True)) for _, g in rows.groupby("seed")]
        return set.intersection(*per_seed)

    cells = pixel.set_index(["evaluation", "strength"]).index
    base_levels = levels(pixel[pixel["model"] == ref])
    rows = []
    for model in models:
        if model == ref:
            continue
        shared = levels(pixel[pixel["model"] == model]) & base_levels
        keep = cells.isin(list(shared))
        mine, base = pixel[keep & (pixel["model"] == model)], pixel[keep & (pixel["model"] == ref)]
        score, difference, test, p = _score_test(mine, base)
        rows.append({"model": model, "reference": ref, "levels": len(shared), "noise score": score,
                     "difference": difference, "test": test, "p": p})
    return _holm(pd.DataFrame(rows, columns=SCORE_COLUMNS[:-2]))


# --- the masking checks' evidence ---------------------------------------------------------------

# A masking check fires only when its difference (or its count against a threshold) is beyond the
# check's margin AND a one-sided exact test says so at this level. One-sided: each check names its
# direction before looking (BPDA *below* PGD). 0.01 rather than 0.05: a run tests dozens of such
# differences per model and seed (every eps, attack pair and transfer source), `rbs check` fails CI
# on any new flag, and a flag says "this number is wrong", so a false alarm is the costly error.
# It also keeps a flag from resting on a handful of images: on paired images at least 7 discordant
# pairs, all one way, are needed (6 give p = 1/64 = 0.016); 6 of 200 is sampling noise between
# two trainings of one net.
MASKING_ALPHA = 0.01

_DATA = re.compile(r"\|data=([^|]*)\|")


@dataclass(frozen=True)
class Evidence:
    """What a masking decision rests on, in numbers a reader can check: the correct counts of the
    records compared (in the order the check's text names them; one count for a threshold test),
    their sizes, the test and its one-sided p. `significant` is the test's half of the decision;
    the check's margin is the other."""

    counts: tuple[int, ...]
    n: tuple[int, ...]
    test: str
    p: float
    discordant: tuple[int, int] | None = None  # paired: (only the first correct, only the second correct)
    threshold: float | None = None  # a threshold test: the share tested against
    alpha: float = MASKING_ALPHA

    @property
    def significant(self) -> bool:
        return bool(self.p < self.alpha)

    def describe(self) -> str:
        """E.g. "1 vs 7 of 200 images, discordant 0 vs 6; one-sided McNemar p = 0.016: not significant"."""
        if self.threshold is not None:
            what = f"{self.counts[0]} of {self.n[0]} images against {self.threshold * 100:g}%"
        else:
            of = f"{self.n[0]}" if len(set(self.n)) == 1 else " and ".join(map(str, self.n))
            what = f"{self.counts[0]} vs {self.counts[1]} of {of} images"
            if self.discordant is not None:
                what += f", discordant {self.discordant[0]} vs {self.discordant[1]}"
        verdict = "" if self.significant else ": not significant"
        return f"{what}; one-sided {self.test} p = {self.p:.2g}{verdict}"


def correct_count(record: pd.Series) -> int:
    """A record's correct images (`correct`, else from `accuracy` and `n`)."""
    if "correct" in record and pd.notna(record["correct"]):
        return int(record["correct"])
    return round(float(record["accuracy"]) * int(record["n"]))


def _paired(first: pd.Series, second: pd.Series) -> bool:
    """Both records carry per-image flags of the same images (same count; the same test-image
    fingerprint, where their keys say)."""
    flags = [r.get("flags") for r in (first, second)]
    if not all(isinstance(f, str) and f for f in flags) or int(first["n"]) != int(second["n"]):
        return False
    a, b = (_DATA.search(str(r.get("key", ""))) for r in (first, second))
    return a is None or b is None or a.group(1) == b.group(1)


def accuracy_test(first: pd.Series, second: pd.Series, alternative: Literal["less", "greater"] = "less",
                  alpha: float = MASKING_ALPHA) -> Evidence:
    """One-sided: is `first`'s accuracy `alternative` than `second`'s? Two records (`n`, `correct`
    or `accuracy`, and `flags`) of one model on the same test images.

    With per-image flags: McNemar's exact test, i.e. a binomial test of the discordant pairs against
    1/2 (`statsmodels`' `mcnemar` is two-sided only). Without them: Fisher's exact test on the two
    counts as if independent; less powerful, but sound here, since two attacks' outcomes on the same
    images are positively correlated, which only makes the unpaired test conservative."""
    a, b = correct_count(first), correct_count(second)
    n = (int(first["n"]), int(second["n"]))
    if _paired(first, second):
        x, y = decode_flags(first["flags"], n[0]), decode_flags(second["flags"], n[1])
        only_first, only_second = _discordant(x, y)
        # "less": the pairs where only `second` is right must dominate
        hits = only_second if alternative == "less" else only_first
        pairs = only_first + only_second
        p = 1.0 if pairs == 0 else float(scipy_stats.binomtest(hits, pairs, 0.5, alternative="greater").pvalue)
        return Evidence((a, b), n, "McNemar", p, (only_first, only_second), alpha=alpha)
    if min(n) == 0:
        return Evidence((a, b), n, "Fisher exact (unpaired)", 1.0, alpha=alpha)
    table = [[a, n[0] - a], [b, n[1] - b]]
    p = float(scipy_stats.fisher_exact(table, alternative=alternative).pvalue)
    return Evidence((a, b), n, "Fisher exact (unpaired)", p, alpha=alpha)


def share_test(count: int, n: int, share: float, alpha: float = MASKING_ALPHA) -> Evidence:
    """One-sided exact binomial test: is the share of images behind `count` (of `n`) above `share`?
    For a single record against a fixed threshold (accuracy above chance, dead gradients above 1%)."""
    p = 1.0 if n == 0 else float(scipy_stats.binomtest(int(count), int(n), share, alternative="greater").pvalue)
    return Evidence((int(count),), (int(n),), "binomial", p, threshold=share, alpha=alpha)
