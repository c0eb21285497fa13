"""The paper's Table 1 beside a run: shown only where the run measured the same quantity, with the
paper's numbers and differences as published and the run's from its own records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robustbench_sparse.analysis import paper
from robustbench_sparse.analysis.stats import compare_noise_scores

ETAS = [round(0.05 * i, 2) for i in range(11)]


def _pixel(model: str, seed: int, correct: list[int], n: int = 10_000) -> list[dict]:
    return [{"model": model, "source": model, "seed": seed, "evaluation": "pixel", "kind": "pixel",
             "strength": eta, "n": n, "correct": c, "accuracy": c / n, "flags": None}
            for eta, c in zip(ETAS, correct, strict=True)]


def _run(n: int = 10_000) -> pd.DataFrame:
    rows = []
    for seed, jitter in enumerate((0, 30, -20)):
        rows += _pixel("dense", seed, [9_930 + jitter] + [9_000 - 500 * i for i in range(10)], n)
        rows += _pixel("kwinner-boost", seed, [9_910] + [9_600 - 200 * i + jitter for i in range(10)], n)
        rows += _pixel("kwinner", seed, [9_900 + jitter] * 11, n)  # not a Table 1 network: left out
    return pd.DataFrame(rows)


def test_table1_gives_the_papers_numbers_beside_the_runs():
    pixel = _run()
    assert paper.comparable(pixel, "mnist")
    table = paper.table1(pixel, compare_noise_scores(pixel, "dense")).set_index("model")
    assert list(table.index) == ["dense", "kwinner-boost"]
    assert table.loc["dense", "Table 1 network"] == "Dense CNN-2"
    assert table.loc["kwinner-boost", "noise score (paper)"] == "103,764 ± 1,125"
    assert table.loc["kwinner-boost", "vs Dense CNN-2 (paper)"] == 103_764 - 97_040
    assert pd.isna(table.loc["dense", "vs Dense CNN-2 (paper)"])
    dense = [9_930 + j + sum(9_000 - 500 * i for i in range(10)) for j in (0, 30, -20)]
    boost = [9_910 + sum(9_600 - 200 * i + j for i in range(10)) for j in (0, 30, -20)]
    assert table.loc["dense", "noise score (here)"] == f"{np.mean(dense):.0f} ± {np.std(dense, ddof=1):.0f}"
    assert table.loc["kwinner-boost", "vs dense (here)"] == round(np.mean(boost) - np.mean(dense))
    assert table.loc["kwinner-boost", "p (Holm)"] < 0.05 and pd.isna(table.loc["dense", "p (Holm)"])
    assert table.loc["dense", "clean % (here)"] == f"{np.mean([99.30, 99.60, 99.10]):.2f} ± " \
                                                   f"{np.std([99.30, 99.60, 99.10], ddof=1):.2f}"
    assert (table["seeds"] == 3).all()
    clean = np.mean([99.30, 99.60, 99.10])
    assert table.loc["dense", "clean vs paper (points)"] == pytest.approx(round(clean - 99.31, 2))
    assert table.loc["kwinner-boost", "clean vs paper (points)"] == pytest.approx(99.10 - 99.09)


def test_a_clean_accuracy_far_from_table1s_is_named_and_one_close_is_not():
    pixel = _run()
    table = paper.table1(pixel, compare_noise_scores(pixel, "dense"))
    assert paper.clean_gaps(table) == "Every network's clean accuracy is within 0.5 points of Table 1's."
    lower = pixel.assign(correct=pixel["correct"].where(
        ~((pixel["model"] == "kwinner-boost") & (pixel["strength"] == 0)), 9_850))
    lower["accuracy"] = lower["correct"] / lower["n"]
    far = paper.table1(lower, compare_noise_scores(lower, "dense"))
    said = paper.clean_gaps(far)
    assert "Sparse CNN-2 (-0.59)" in said and "Dense CNN-2" not in said.replace("Sparse CNN-2", "")
    assert paper.clean_gaps(far, tolerance=0.6).startswith("Every network")


@pytest.mark.parametrize(("dataset", "n", "levels"), [("mnist5k", 10_000, 11), ("mnist", 1_000, 11),
                                                       ("mnist", 10_000, 6)])
def test_table1_is_not_shown_for_another_quantity(dataset, n, levels):
    pixel = _run(n)
    pixel = pixel[pixel["strength"].isin(ETAS[:levels])]
    assert not paper.comparable(pixel, dataset)
