"""The paper's Table 1 beside the suite's own measurement of it.

Ahmad & Scheinkman (2019), "How Can We Be So Dense?", Table 1: eight networks on full MNIST, 10
training seeds each, mean ± std of the clean test accuracy (%) and of the noise score (images
correct over the 11 pixel-noise levels η = 0, 0.05, ..., 0.5 of the 10,000 test images: out of
110,000). The paper picked each seed's best epoch on the test set; the zoo's checkpoints are the
last epoch's, recipes chosen on the validation split (docs/zoo.md#recipes).
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from robustbench_sparse.analysis.tables import noise_scores, seed_stats


class PaperRow(NamedTuple):
    network: str
    clean: float
    clean_std: float
    noise_score: int
    noise_score_std: int


# zoo model -> its Table 1 row (the zoo's `dense` is Dense CNN-2, `kwinner-boost` Sparse CNN-2)
TABLE1 = {
    "dense-cnn1": PaperRow("Dense CNN-1", 99.14, 0.03, 74_569, 3_200),
    "dense": PaperRow("Dense CNN-2", 99.31, 0.06, 97_040, 2_853),
    "sparse-cnn1": PaperRow("Sparse CNN-1", 98.41, 0.08, 100_306, 1_735),
    "kwinner-boost": PaperRow("Sparse CNN-2", 99.09, 0.05, 103_764, 1_125),
    "dense-cnn2-sp3": PaperRow("Dense CNN-2 SP3", 99.13, 0.07, 100_318, 2_762),
    "sparse-cnn2-d3": PaperRow("Sparse CNN-2 D3", 98.89, 0.13, 102_328, 1_720),
    "sparse-cnn2-w1": PaperRow("Sparse CNN-2 W1", 98.2, 0.19, 100_322, 2_082),
    "sparse-cnn2-dsw": PaperRow("Sparse CNN-2 DSW", 98.92, 0.09, 70_566, 2_857),
}
PAPER_REFERENCE = "dense"
DATASET = "mnist"
LEVELS = 11
TEST_IMAGES = 10_000
# How far a network's clean accuracy may be from Table 1's before the report flags it: a larger gap
# is a difference in how well it was trained, which its noise score carries too.
CLEAN_TOLERANCE = 0.5


def comparable(pixel: pd.DataFrame, dataset: str) -> bool:
    """Whether the run measured Table 1's quantity: the paper's pixel noise at its 11 levels on
    full MNIST's 10,000 test images (a subset or the embedded digits count out of another total)."""
    return (dataset == DATASET and not pixel.empty and set(pixel["n"]) == {TEST_IMAGES}
            and pixel["strength"].nunique() == LEVELS)


def table1(pixel: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """One row per Table 1 network the run has: the paper's clean accuracy and noise score beside
    the run's (mean ± std over its seeds), each network's noise-score difference from Dense CNN-2
    in the paper and from `dense` here, with the run's test of it (`scores`:
    `stats.compare_noise_scores` against `dense`)."""
    rows = pixel[pixel["model"].isin(list(TABLE1))]
    if rows.empty:
        return pd.DataFrame()
    clean = seed_stats(rows[rows["strength"] == 0], ["model"], digits=2)
    clean_mean = rows[rows["strength"] == 0].groupby(["model", "seed"])["accuracy"].mean().groupby("model").mean() * 100
    score = noise_scores(rows)
    seeds = rows.groupby("model")["seed"].nunique()
    tested = scores.set_index("model") if not scores.empty else pd.DataFrame(columns=["difference", "p (Holm)"])
    base = TABLE1[PAPER_REFERENCE].noise_score
    out = []
    for model, paper in TABLE1.items():
        if model not in score.index:
            continue
        here = tested.loc[model] if model in tested.index else None
        out.append({
            "model": model, "Table 1 network": paper.network, "seeds": int(seeds[model]),
            "clean % (paper)": f"{paper.clean:.2f} ± {paper.clean_std:.2f}", "clean % (here)": clean.get(model),
            "clean vs paper (points)": round(float(clean_mean[model]) - paper.clean, 2),
            "noise score (paper)": f"{paper.noise_score:,} ± {paper.noise_score_std:,}",
            "noise score (here)": score[model],
            "vs Dense CNN-2 (paper)": paper.noise_score - base if model != PAPER_REFERENCE else None,
            "vs dense (here)": None if here is None else round(float(here["difference"])),
            "p (Holm)": None if here is None else float(here["p (Holm)"]),
        })
    return pd.DataFrame(out)


def clean_gaps(table: pd.DataFrame, tolerance: float = CLEAN_TOLERANCE) -> str:
    """The sentence that says which networks' clean accuracy (mean over seeds) is more than
    `tolerance` points from Table 1's, or that none is (`table`: `table1`'s)."""
    far = table[table["clean vs paper (points)"].abs() > tolerance]
    if far.empty:
        return f"Every network's clean accuracy is within {tolerance} points of Table 1's."
    named = ", ".join(f"{row['Table 1 network']} ({row['clean vs paper (points)']:+.2f})"
                      for _, row in far.iterrows())
    return (f"Clean accuracy more than {tolerance} points from Table 1's: {named}; such a network's noise score "
            "may differ from the paper's because it was trained to another accuracy.")
