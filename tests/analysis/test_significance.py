"""Masking checks decide with evidence: beyond the margin AND significant on the images.

The CI failure this guards against: on another machine's weights, check 5 fired on `kwinner` with
"BPDA (relu) PGD 0.5% < PGD 3.5% at eps=0.3" on 200 test images, i.e. 1 vs 7 images (6 discordant
pairs, all one way: one-sided McNemar p = 1/64). That is sampling noise, not a flag; 0 vs 60 is.
Synthetic records only (no training): per-image flags are built by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_sparse.analysis.diagnostics import masking_checks, masking_decisions, masking_flags
from robustbench_sparse.analysis.regression import cell_stats, compare
from robustbench_sparse.analysis.stats import MASKING_ALPHA, accuracy_test, share_test
from robustbench_sparse.evaluation.cells import encode_flags

N = 200
MODEL = "kwinner"
PGD = ("pgd(alpha=0.01,backend=torchattacks,bpda={bpda},early_stop=true,eps={eps},loss=ce,prune=false,"
       "random_start=true,restarts=1,steps=40)")
IFGSM = "ifgsm(alpha=auto,backend=torchattacks,bpda=none,early_stop=true,eps={eps},prune=false,steps=10)"


def first(k: int, n: int = N) -> np.ndarray:
    """Per-image correctness: the first k images right. `first(1)` is a subset of `first(7)`, so
    1 vs 7 has 6 discordant pairs, all one way."""
    return np.arange(n) < k


def record(evaluation: str, kind: str, eps: float, correct: np.ndarray, spec: str, source: str = MODEL,
           model: str = MODEL, seed: int = 0) -> dict[str, Any]:
    return {"model": model, "seed": seed, "evaluation": evaluation, "kind": kind, "metric": "accuracy",
            "param": "eps", "strength": eps, "n": len(correct), "correct": int(correct.sum()),
            "accuracy": float(correct.mean()), "source": source, "spec": spec,
            "flags": encode_flags(torch.from_numpy(correct))}


def pgd(correct: np.ndarray, eps: float = 0.3) -> dict[str, Any]:
    return record("pgd", "pgd", eps, correct, PGD.format(bpda="none", eps=eps))


def check5(bpda: int, plain: int) -> pd.DataFrame:
    """Plain PGD and BPDA PGD at eps = 0.3: the CI failure's pair."""
    return pd.DataFrame([pgd(first(plain)),
                         record("pgd-bpda", "pgd", 0.3, first(bpda), PGD.format(bpda="relu", eps=0.3))])


def check1(ifgsm: int, plain: int) -> pd.DataFrame:
    """PGD above I-FGSM (the form of check 1 the committed baseline records for `kwinner`)."""
    return pd.DataFrame([pgd(first(plain)), record("ifgsm", "ifgsm", 0.3, first(ifgsm), IFGSM.format(eps=0.3))])


def check4(transfer: int, plain: int) -> pd.DataFrame:
    """White-box PGD beside PGD transferred from `dense`, scored on the same model and images."""
    return pd.DataFrame([pgd(first(plain)),
                         record("pgd", "pgd", 0.3, first(transfer), PGD.format(bpda="none", eps=0.3), source="dense")])


CASES = [
    (check5, "BPDA beats plain gradients", "5. BPDA beats plain gradients"),
    (check1, "PGD weaker than I-FGSM", "1. one-step beats iterative"),
    (check4, "black-box or transfer beats white-box", "4. black-box or transfer beats white-box"),
]


@pytest.mark.parametrize("frame, check, label", CASES)
def test_one_vs_seven_of_200_images_is_not_a_flag(frame, check, label):
    records = frame(1, 7)  # 0.5% vs 3.5%: beyond every margin, 6 discordant pairs
    assert masking_flags(records) == []
    decisions = masking_decisions(records)
    (unproven,) = [f for f in decisions.unproven if f.check == check]
    assert not unproven.significant and unproven.test == "McNemar" and unproven.p == pytest.approx(1 / 64)
    assert "of 200 images" in unproven.evidence and "p = 0.016: not significant" in unproven.evidence
    row = decisions.checks.set_index("check").loc[label]
    assert row["status"] == "passed" and "not significant" in row["evidence / needs"]


@pytest.mark.parametrize("frame, check, label", CASES)
def test_zero_vs_sixty_of_200_images_is_a_flag(frame, check, label):
    flags = [f for f in masking_flags(frame(0, 60)) if f.check == check]
    assert len(flags) == 1 and flags[0].significant and flags[0].p < 1e-15
    assert "0 vs 60 of 200 images" in flags[0].evidence or "60 vs 0 of 200 images" in flags[0].evidence
    assert masking_checks(frame(0, 60)).set_index("check").loc[label, "status"] == "fired"


def test_the_ci_failures_evidence_reads_with_counts_and_p():
    (unproven,) = masking_decisions(check5(1, 7)).unproven
    assert unproven.evidence == ("BPDA (relu) PGD 0.5% < PGD 3.5% at eps=0.3 (1 vs 7 of 200 images, discordant "
                                 "0 vs 6; one-sided McNemar p = 0.016: not significant)")


@pytest.mark.parametrize("plain, fired", [(7, False), (8, True)])
def test_the_level_needs_seven_discordant_pairs_all_one_way(plain, fired):
    """At 0.01 one-sided: 6 one-way pairs give p = 1/64, not enough; 7 give 1/128, enough."""
    records = check5(1, plain)
    assert (masking_flags(records) != []) is fired
    assert (accuracy_test(records.iloc[1], records.iloc[0], "less").p < MASKING_ALPHA) is fired


@pytest.mark.parametrize("low, high, fired", [(1, 7, False), (0, 60, True)])
def test_accuracy_rising_with_eps_needs_evidence_too(low, high, fired):
    spec = "fgsm(backend=torchattacks,bpda=none,eps={eps},prune=false)"
    records = pd.DataFrame([record("fgsm", "fgsm", eps, first(k), spec.format(eps=eps))
                            for eps, k in ((0.1, low), (0.2, high))])
    decided = masking_decisions(records)
    assert [f.check for f in decided.flags if f.check == "accuracy rises with eps"] == (
        ["accuracy rises with eps"] if fired else [])
    assert len(decided.flags) + len(decided.unproven) == 1


def test_discordant_pairs_both_ways_weaken_the_evidence():
    """Check 10 (margin 5 points): AutoAttack 9% vs PGD 15%, but only 20 vs 8 images differ."""
    plain = first(30)  # images 0-29 survive PGD
    auto = np.zeros(N, dtype=bool)
    auto[20:30] = True  # 10 both survive, 20 only PGD...
    auto[30:38] = True  # ...and 8 only AutoAttack: 18 of 200
    spec = "autoattack(backend=torchattacks,bpda=none,eps=0.3,n_queries=5000,prune=true,steps=100)"
    records = pd.DataFrame([pgd(plain), record("autoattack", "autoattack", 0.3, auto, spec)])
    assert masking_flags(records) == []
    (unproven,) = masking_decisions(records).unproven
    assert unproven.check == "AutoAttack beats PGD" and "discordant 8 vs 20" in unproven.evidence
    auto[30:38] = False  # AutoAttack's survivors a subset of PGD's: 20 pairs one way
    records = pd.DataFrame([pgd(plain), record("autoattack", "autoattack", 0.3, auto, spec)])
    assert [f.check for f in masking_flags(records)] == ["AutoAttack beats PGD"]


def test_without_per_image_flags_two_proportions_are_tested():
    """Records without flags (or of other images) fall back to Fisher's exact test on the counts."""
    noisy, clear = check5(1, 7).drop(columns="flags"), check5(0, 60).drop(columns="flags")
    assert masking_flags(noisy) == []
    assert masking_decisions(noisy).unproven[0].test == "Fisher exact (unpaired)"
    (flag,) = masking_flags(clear)
    assert flag.test == "Fisher exact (unpaired)" and flag.p < 1e-15
    other_images = check5(0, 60)
    other_images["key"] = ["mnist5k|kwinner|data=aaaa|x", "mnist5k|kwinner|data=bbbb|x"]
    assert masking_flags(other_images)[0].test == "Fisher exact (unpaired)"


@pytest.mark.parametrize("correct, fired", [(24, False), (100, True)])
def test_check_3_tests_accuracy_against_chance(correct, fired):
    """PGD at eps = 1: 12% of 200 is within noise of chance (10%); 50% is not."""
    records = pd.DataFrame([pgd(first(correct), eps=1.0)])
    assert (masking_flags(records) != []) is fired
    decided = masking_decisions(records)
    (decision,) = decided.flags or decided.unproven
    assert decision.check == "unbounded eps does not break it" and decision.test == "binomial"
    assert f"{correct} of 200 images against 10%" in decision.evidence


@pytest.mark.parametrize("dead, fired", [(4, False), (40, True)])
def test_check_6_tests_the_dead_share_against_one_percent(dead, fired):
    records = pd.DataFrame([record("live-gradients", "gradients", 0.0, ~first(dead), "gradients(eps=0.0)")])
    assert ([f.check for f in masking_flags(records)] == ["dead gradients"]) is fired
    status = masking_checks(records).set_index("check").loc["6. dead gradients"]
    assert status["status"] == ("fired" if fired else "passed")
    assert f"{dead} of 200 images against 1%" in status["evidence / needs"]


def test_share_test_is_one_sided_binomial():
    assert share_test(3, 200, 0.01).p == pytest.approx(0.3233, abs=1e-3)
    assert share_test(0, 0, 0.5).p == 1.0 and not share_test(0, 0, 0.5).significant


# --- `rbs check` (analysis.regression.compare) ------------------------------------------------------

def _baseline(frame: pd.DataFrame, fired: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A baseline of this run's own numbers (so no cell regresses or rises) in which no check
    fired: whatever fails is a new masking flag."""
    return {"seeds": [0], "cells": list(cell_stats(frame).values()), "fired": fired or {}}


@pytest.mark.parametrize("frame", [check5, check1, check4])
def test_rbs_check_passes_on_one_vs_seven_and_shows_why(frame):
    records = frame(1, 7)
    result = compare(_baseline(records), records, tolerance=2)
    assert result.passed() and result.new_flags.empty and result.regressions.empty and result.rises.empty
    (row,) = result.unproven.to_dict("records")
    assert "1 vs 7 of 200 images" in row["evidence"] or "7 vs 1 of 200 images" in row["evidence"]
    assert "not significant" in row["evidence"] and row["p"] == pytest.approx(1 / 64)


@pytest.mark.parametrize("frame, label", [(check5, CASES[0][2]), (check1, CASES[1][2]), (check4, CASES[2][2])])
def test_rbs_check_fails_on_zero_vs_sixty_with_counts_and_p(frame, label):
    records = frame(0, 60)
    result = compare(_baseline(records), records, tolerance=2)
    assert not result.passed() and result.unproven.empty
    (row,) = result.new_flags.to_dict("records")
    assert row["model"] == MODEL and row["check"] == label and row["test"] == "McNemar" and row["p"] < 1e-15
    assert "of 200 images" in row["evidence"] and "McNemar p = " in row["evidence"]
    # a check the baseline already fired is not new
    assert compare(_baseline(records, {MODEL: [label]}), records, tolerance=2).passed()
