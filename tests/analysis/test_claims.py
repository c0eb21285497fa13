"""The claims page: each published claim's comparisons tested (Welch over seeds, McNemar over images,
Holm over the page), its verdict, "masked" from a masking report's records, and `rbs claims` on the
committed reports (no training)."""

from __future__ import annotations

import shutil
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from robustbench_sparse.analysis.claims import (
    CLAIMS,
    HOLDS,
    NOISE_SCORE,
    NOT_SIGNIFICANT,
    REVERSED,
    Claim,
    Comparison,
    comparisons,
    verdicts,
)
from robustbench_sparse.cli import app
from robustbench_sparse.evaluation.cells import encode_flags
from robustbench_sparse.results.harness import read_recorded
from robustbench_sparse.runtime import REPO_ROOT, Paths
from tests.conftest import repository_clone

N = 400


def _record(model: str, seed: int, evaluation: str, strength: float, accuracy: float, kind: str | None = None,
            spec: str | None = None, source: str | None = None, rng: np.random.Generator | None = None) -> dict:
    # one draw per seed and cell, whatever the model: equal accuracies give equal records, and a
    # higher one is correct on a superset of the images (str hashes vary between processes: crc32)
    rng = rng or np.random.default_rng(zlib.crc32(repr((seed, evaluation, strength)).encode()))
    flags = rng.random(N) < accuracy
    kind = kind or evaluation
    return {"model": model, "seed": seed, "evaluation": evaluation, "kind": kind, "metric": "accuracy",
            "param": "eps", "strength": strength, "n": N, "correct": int(flags.sum()), "accuracy": float(flags.mean()),
            "source": source or model, "spec": spec or f"{kind}(eps={strength})",
            "flags": encode_flags(torch.from_numpy(flags))}


def _sweep(accuracy: dict[str, float], seeds=(0, 1, 2), evaluation="gaussian", strengths=(0.8,), **kw) -> pd.DataFrame:
    return pd.DataFrame([_record(m, s, evaluation, x, a + 0.01 * s, **kw)
                         for m, a in accuracy.items() for s in seeds for x in strengths])


def _one(better: str, worse: str, evaluation: str = "gaussian", strengths=(0.8,), source=None) -> tuple[Claim, ...]:
    return (Claim("c", "someone", "a claim", "figures", "standard",
                  (Comparison(better, worse, evaluation, strengths, source),)),)


@pytest.mark.parametrize(("better", "worse", "result", "verdict"), [
    (0.8, 0.4, HOLDS, "holds"), (0.4, 0.8, REVERSED, "does not hold"), (0.6, 0.6, NOT_SIGNIFICANT, "not significant")])
def test_a_comparison_holds_is_reversed_or_is_not_significant(better, worse, result, verdict):
    records = _sweep({"kwinner-boost": better, "dense": worse})
    claims = _one("kwinner-boost", "dense")
    rows = comparisons({"standard": records}, claims)
    assert list(rows["result"]) == [result]
    assert rows["test"].iloc[0] == "Welch t"  # three seeds each
    assert np.sign(rows["difference"].iloc[0]) == np.sign(better - worse) or better == worse
    assert verdicts(rows, claims)["verdict"].iloc[0] == verdict


def test_one_seed_is_tested_over_the_same_images_and_the_page_is_holm_corrected():
    records = _sweep({"kwinner-boost": 0.7, "dense": 0.6, "dropout": 0.6}, seeds=(0,), strengths=(0.4, 0.8))
    claims = (Claim("c", "someone", "a claim", "figures", "standard",
                    tuple(Comparison("kwinner-boost", m, "gaussian") for m in ("dense", "dropout"))),)
    rows = comparisons({"standard": records}, claims)
    assert len(rows) == 4 and set(rows["test"]) == {"McNemar exact"}
    assert (rows["p (Holm)"] >= rows["p"]).all()
    assert rows["p (Holm)"].max() <= 1


def test_a_claim_whose_suite_has_no_report_is_not_measured_and_a_missing_model_gives_no_row():
    claims = _one("kwinner", "dense", "pixel-uniform", (0.5,))
    assert comparisons({}, claims).empty
    assert verdicts(comparisons({}, claims), claims)["verdict"].iloc[0] == "not measured"
    only_dense = _sweep({"dense": 0.5}, evaluation="pixel-uniform", strengths=(0.5,))
    assert comparisons({"standard": only_dense}, claims).empty


def test_old_exports_without_flags_on_one_seed_give_the_difference_untested():
    records = _sweep({"kwinner-boost": 0.8, "dense": 0.4}, seeds=(0,)).drop(columns="flags")
    rows = comparisons({"standard": records}, _one("kwinner-boost", "dense"))
    assert rows["p"].isna().all() and rows["difference"].iloc[0] > 30
    assert verdicts(rows, _one("kwinner-boost", "dense"))["verdict"].iloc[0] == "not tested"


def test_transfer_comparisons_read_the_examples_crafted_on_the_source():
    own = _sweep({"kwinner": 0.1, "dense": 0.1}, evaluation="pgd", strengths=(0.2,))
    moved = _sweep({"kwinner": 0.9, "dense": 0.2}, evaluation="pgd", strengths=(0.2,), source="dropout")
    claims = _one("kwinner", "dense", "pgd", (), "dropout")
    rows = comparisons({"standard": pd.concat([own, moved])}, claims)
    assert list(rows["result"]) == [HOLDS] and rows["difference"].iloc[0] > 60


def test_noise_scores_are_compared_over_seeds():
    levels = [0.0, 0.25, 0.5]
    pixel = pd.concat([_sweep({"kwinner-boost": 0.9, "dense": 0.7}, evaluation="pixel", strengths=levels,
                              kind="pixel", spec="pixel(eta=x)")])
    claims = _one("kwinner-boost", "dense", NOISE_SCORE)
    rows = comparisons({"standard": pixel}, claims)
    assert list(rows["result"]) == [HOLDS]
    assert rows["difference"].iloc[0] == pytest.approx(0.2 * N * len(levels), rel=0.25)


def test_an_attack_gain_the_masking_report_takes_away_is_masked():
    """On the committed masking report (mnist5k, seed 0) every attack leaves kwinner-boost no
    significant gain over dense at eps = 0.2 where the standard attacks gave +13: a standard-suite
    gain there, however large, is called masked."""
    masking = read_recorded(REPO_ROOT / "reports" / "mnist5k" / "masking")
    assert masking is not None
    masking = pd.DataFrame(masking.records.records + (masking.transfer.records if masking.transfer else []))
    records = _sweep({"kwinner-boost": 0.6, "dense": 0.2}, evaluation="pgd", strengths=(0.2,))
    claims = _one("kwinner-boost", "dense", "pgd", (0.2,))
    rows = comparisons({"standard": records}, claims)
    assert list(rows["result"]) == [HOLDS]
    verdict = verdicts(rows, claims, masking)["verdict"].iloc[0]
    assert verdict.startswith("masked") and "kwinner-boost at ε = 0.2: +13 → +4 points" in verdict
    assert verdicts(rows, claims)["verdict"].iloc[0] == "holds"  # without the masking report


def test_every_claim_names_a_shipped_suite_and_models_of_the_zoo():
    suites = {p.stem for p in (REPO_ROOT / "attacks").glob("*.toml")}
    zoo = (REPO_ROOT / "models" / "zoo.toml").read_text()
    for claim in CLAIMS:
        assert claim.suite in suites
        for c in claim.comparisons:
            assert f"[models.{c.better}]" in zoo and f"[models.{c.worse}]" in zoo


def test_rbs_claims_rebuilds_the_committed_pages_from_the_reports_alone(tmp_path):
    """A home with the committed reports and no checkpoint: `rbs claims` writes each dataset's page,
    identical to the committed one; a dataset without reports is refused (exit 2)."""
    home = repository_clone(tmp_path / "home")
    runner = CliRunner()
    for dataset in ("mnist5k", "fashion-mnist", "mnist"):
        shutil.copytree(REPO_ROOT / "reports" / dataset, home / "reports" / dataset)
        (home / "reports" / dataset / "claims.md").unlink()
        result = runner.invoke(app, ["claims", "--dataset", dataset, "--home", str(home)])
        assert result.exit_code == 0, result.output
        written = Paths(home).reports(dataset) / "claims.md"
        assert written.read_text() == (REPO_ROOT / "reports" / dataset / "claims.md").read_text()
        assert all(c.id in written.read_text() for c in CLAIMS)
    refused = runner.invoke(app, ["claims", "--dataset", "cifar10", "--home", str(home)])
    assert refused.exit_code == 2 and "no report with a records.json" in refused.output
