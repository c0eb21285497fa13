"""The published claims about sparse networks, each tested on the suite's own records.

A claim is a set of comparisons "model A is more robust than model B under this evaluation" (at the
strengths the claim names, or over the evaluation's whole sweep). Each comparison is tested like
every difference in a report (`stats.compare_to_reference`: Welch's t over training seeds, else
McNemar over the same images; the noise score with `stats.compare_noise_scores`), and the p-values
of the whole claims table are Holm-corrected together. A comparison *holds* when A is significantly
above B, is *reversed* when significantly below, and is *not significant* otherwise.

A claim's verdict: "holds" (every comparison holds), "holds in part" (some do, none is reversed),
"does not hold" (some are reversed, none holds), "mixed", or "not significant". A claim about
gradient attacks whose comparisons hold is "masked" when the masking report's worst case over every
attack (the adaptive attacks aimed at the k-winners mask included: `adaptive.verdict_table`) leaves
no significant gain at the strengths both reports share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from robustbench_sparse.analysis.adaptive import verdict_table
from robustbench_sparse.analysis.paper import TABLE1
from robustbench_sparse.analysis.stats import ALPHA, compare_noise_scores, compare_to_reference
from robustbench_sparse.analysis.tables import accuracies, paper_pixel
from robustbench_sparse.perturb.attacks import ATTACKS

NOISE_SCORE = "noise score"  # the evaluation name of a comparison of the paper's noise scores
HOLDS, REVERSED, NOT_SIGNIFICANT, UNTESTED = "holds", "reversed", "not significant", "not tested"
NO_TEST = "none (no per-image flags, no spread over seeds)"
SAME = "none (equal on every seed)"


@dataclass(frozen=True)
class Comparison:
    """`better` more robust than `worse` under `evaluation` (a suite's evaluation name, or
    NOISE_SCORE) at `strengths` (empty: every strength above 0 the records have); with `source`, on
    the adversarial examples crafted on that model (transfer records)."""

    better: str
    worse: str
    evaluation: str
    strengths: tuple[float, ...] = ()
    source: str | None = None


@dataclass(frozen=True)
class Claim:
    id: str
    who: str  # who published it
    statement: str
    published: str  # the figures they gave
    suite: str  # the suite whose report measures it
    comparisons: tuple[Comparison, ...]

    @property
    def adversarial(self) -> bool:
        return any(c.evaluation in ATTACKS for c in self.comparisons)


_T1_SPARSE = [m for m in TABLE1 if m not in ("dense", "dense-cnn1")]
_ZOO_OTHERS = ["dense", "dropout", "batchnorm", "kwinner"]

CLAIMS: tuple[Claim, ...] = (
    Claim("paper-noise", "Ahmad & Scheinkman (2019), Table 1",
          "sparse CNNs score far above Dense CNN-2 under the paper's pixel noise",
          "Sparse CNN-2 103,764 ± 1,125 vs Dense CNN-2 97,040 ± 2,853 of 110,000 (10 seeds); every sparse "
          "net above Dense CNN-2 except DSW", "paper",
          tuple(Comparison(m, "dense", NOISE_SCORE) for m in _T1_SPARSE if m != "sparse-cnn2-dsw")),
    Claim("paper-dsw", "Ahmad & Scheinkman (2019), Table 1",
          "Sparse CNN-2 DSW scores lowest of the eight networks",
          "DSW 70,566 ± 2,857 of 110,000, below Dense CNN-1's 74,569", "paper",
          tuple(Comparison(m, "sparse-cnn2-dsw", NOISE_SCORE) for m in TABLE1 if m != "sparse-cnn2-dsw")),
    Claim("forum-pixel", "Numenta forum re-implementations",
          "k-winners resist random pixels set to random values better than dropout, batchnorm and a plain net",
          "at noise 0.5: k-winner 54.8%, plain 37.3%, dropout 21.1%, batchnorm 18.5%", "forum",
          tuple(Comparison("kwinner", m, "pixel-uniform", (0.5,)) for m in ("dense", "dropout", "batchnorm"))),
    Claim("forum-gaussian", "Numenta forum re-implementations",
          "k-winners + boosting is the most robust under Gaussian noise",
          "σ = 0.8: 69.7% vs 61.2% plain", "standard",
          tuple(Comparison("kwinner-boost", m, "gaussian", (0.8,)) for m in _ZOO_OTHERS)),
    Claim("forum-iterative", "Numenta forum re-implementations",
          "k-winners + boosting protects against I-FGSM and MI-FGSM",
          "no figures given", "standard",
          tuple(Comparison("kwinner-boost", "dense", e) for e in ("ifgsm", "mifgsm"))),
    Claim("forum-transfer", "Numenta forum re-implementations",
          "dropout's adversarial examples transfer badly to sparse nets",
          "no figures given", "standard",
          tuple(Comparison(m, "dense", e, (), "dropout") for m in ("kwinner", "kwinner-boost")
                for e in ("fgsm", "mifgsm", "pgd"))),
    Claim("new-dense", '"Sparse is the new dense" (2020)',
          "a sparse CNN is far more robust than a dense one under FGSM, PGD and occlusion on MNIST",
          "large gains (MNIST)", "standard",
          tuple(Comparison("kwinner-boost", "dense", e) for e in ("fgsm", "pgd", "occlusion"))),
)

ROW_COLUMNS = ["claim", "better", "worse", "evaluation", "strength", "source", "difference", "test", "p",
               "p (Holm)", "result"]


def _testable(rows: pd.DataFrame) -> bool:
    """Whether one cell's records (or a noise score's) can be tested: per-image flags (the paired
    tests; exports made before records carried them have none), or two or more seeds per model whose
    numbers vary (Welch)."""
    if "flags" in rows and rows["flags"].map(lambda f: isinstance(f, str) and bool(f)).all():
        return True
    per_seed = rows.groupby(["model", "seed"])["correct"].sum()
    seeds = per_seed.groupby(level="model")
    return bool(seeds.count().min() >= 2 and (seeds.std() > 0).any())


def _cell_rows(records: pd.DataFrame, c: Comparison) -> list[dict[str, object]]:
    """The comparison's tests, one per strength: the difference (better minus worse, in points, or
    in noise-score images), the test and its uncorrected p."""
    if c.evaluation == NOISE_SCORE:
        pixel = paper_pixel(records)
        pixel = pixel[(pixel["source"] == pixel["model"]) & pixel["model"].isin([c.better, c.worse])]
        if not {c.better, c.worse} <= set(pixel["model"]):
            return []
        if not _testable(pixel):
            score = pixel.groupby(["model", "seed"])["correct"].sum().groupby("model").mean()
            return [{"strength": np.nan, "difference": float(score[c.better] - score[c.worse]), "test": NO_TEST,
                     "p": np.nan}]
        tested = compare_noise_scores(pixel, reference=c.worse).iloc[0]
        return [{"strength": np.nan, "difference": float(tested["difference"]), "test": tested["test"],
                 "p": float(tested["p"])}]
    source = c.source
    rows = accuracies(records[records["evaluation"] == c.evaluation])
    rows = rows[(rows["source"] == source) if source else (rows["source"] == rows["model"])]
    rows = rows[rows["model"].isin([c.better, c.worse]) & (rows["strength"] > 0)]
    if c.strengths:
        rows = rows[rows["strength"].isin(c.strengths)]
    if not {c.better, c.worse} <= set(rows["model"]):
        return []
    out = []
    for strength, cell in rows.groupby("strength"):
        if not _testable(cell):
            means = cell.groupby("model")["accuracy"].mean() * 100
            difference = float(means[c.better] - means[c.worse])
            same = difference == 0 and cell.groupby("model")["seed"].nunique().min() >= 2
            # the same accuracy on every seed of both (0% under a strong attack): no difference to find
            out.append({"strength": float(strength), "difference": difference,
                        "test": SAME if same else NO_TEST, "p": 1.0 if same else np.nan})
            continue
        # one model pair per strength: the correction is made over every claim at once (`comparisons`)
        tested = compare_to_reference(cell.assign(evaluation=c.evaluation), reference=c.worse).iloc[0]
        out.append({"strength": float(strength), "difference": float(tested["difference"]), "test": tested["test"],
                    "p": float(tested["p"])})
    return out


def comparisons(records_by_suite: Mapping[str, pd.DataFrame], claims: tuple[Claim, ...] = CLAIMS) -> pd.DataFrame:
    """Every claim's comparisons on the records of the suite it names (absent suites: no rows), the
    p-values Holm-corrected over the whole table, each with its result."""
    rows = []
    for claim in claims:
        records = records_by_suite.get(claim.suite)
        if records is None or records.empty:
            continue
        for c in claim.comparisons:
            for row in _cell_rows(records, c):
                rows.append({"claim": claim.id, "better": c.better, "worse": c.worse, "evaluation": c.evaluation,
                             "source": c.source or "", **row})
    frame = pd.DataFrame(rows, columns=[c for c in ROW_COLUMNS if c not in ("p (Holm)", "result")])
    frame["p (Holm)"] = np.nan
    tested = frame["p"].notna()
    if tested.any():
        frame.loc[tested, "p (Holm)"] = multipletests(frame.loc[tested, "p"], method="holm")[1]
    significant = frame["p (Holm)"] < ALPHA
    frame["result"] = np.where(~tested, UNTESTED, np.where(
        significant & (frame["difference"] > 0), HOLDS,
        np.where(significant & (frame["difference"] < 0), REVERSED, NOT_SIGNIFICANT)))
    return frame


def _masked(claim: Claim, rows: pd.DataFrame, masking: pd.DataFrame | None) -> str | None:
    """Where the claim's attack comparisons against `dense` hold, whether the masking report shows
    the gain to be the attack's: at a strength both reports have, the standard attacks leave `better`
    above `dense` there too, and every attack (the adaptive ones included) takes points off that
    difference and leaves none that is significant. The strengths with both differences, else None."""
    if masking is None or masking.empty:
        return None
    table = verdict_table(masking)
    if table.empty:
        return None
    gone = {}
    held = rows[(rows["result"] == HOLDS) & rows["evaluation"].isin(list(ATTACKS)) & (rows["source"] == "")
                & (rows["worse"] == "dense")]  # the masking report tests every model against `dense`
    for r in held.itertuples():
        mine = table[(table["model"] == r.better) & np.isclose(table["ε"], r.strength)]
        if mine.empty:
            continue
        standard, every = float(mine["vs ref (standard)"].iloc[0]), float(mine["vs ref (every attack)"].iloc[0])
        significant = every > 0 and float(mine["p (Holm)"].iloc[0]) < ALPHA
        if standard > 0 and every < standard and not significant:
            gone[f"{r.better} at ε = {r.strength:g}"] = f"{standard:+.0f} → {every:+.0f}"
    return "; ".join(f"{where}: {change} points" for where, change in gone.items()) or None


def verdicts(rows: pd.DataFrame, claims: tuple[Claim, ...] = CLAIMS, masking: pd.DataFrame | None = None,
             measured_on: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per claim: what was published, how many comparisons hold / are reversed of those
    tested, the largest difference, and the verdict ("not measured" where its suite has no report)."""
    out = []
    for claim in claims:
        mine = rows[rows["claim"] == claim.id]
        tested = mine[mine["result"] != UNTESTED]
        holds, reversed_ = int((tested["result"] == HOLDS).sum()), int((tested["result"] == REVERSED).sum())
        if tested.empty:
            verdict = "not measured" if mine.empty else "not tested"
        elif holds == len(tested):
            verdict = "holds"
        elif holds and not reversed_:
            verdict = "holds in part"
        elif reversed_ and not holds:
            verdict = "does not hold"
        elif holds and reversed_:
            verdict = "mixed"
        else:
            verdict = "not significant"
        masked = _masked(claim, tested, masking) if claim.adversarial and holds else None
        if masked:
            verdict = (f"masked (vs dense, standard attacks → every attack of the masking report: {masked}); "
                       f"under the standard attacks alone: {verdict}")
        top = tested.loc[tested["difference"].abs().idxmax()] if len(tested) else None
        out.append({
            "claim": claim.id, "who": claim.who, "statement": claim.statement, "published": claim.published,
            "measured on": (measured_on or {}).get(claim.suite, f"no {claim.suite} report"),
            "comparisons": len(tested), "hold": holds, "reversed": reversed_,
            "largest difference": "" if top is None else _largest(top),
            "verdict": verdict})
    return pd.DataFrame(out)


def _largest(row: pd.Series) -> str:
    unit = " images" if row["evaluation"] == NOISE_SCORE else " points"
    where = row["evaluation"] if pd.isna(row["strength"]) else f"{row['evaluation']} {row['strength']:g}"
    source = f", examples from {row['source']}" if row["source"] else ""
    return f"{row['better']} vs {row['worse']}: {row['difference']:+,.1f}{unit} ({where}{source})"
