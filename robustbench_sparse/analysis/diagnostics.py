"""Signs that an attack's numbers measure a weak attack rather than a robust model.

Computed from stored records only (white-box records, and transfer records whose target is the
model), so every report and table can show them. Each flag carries the evidence behind it, in
words a reader can check against the tables. The checks (docs/masking.md#check-1 ... #check-10):

1. one-step beats iterative: FGSM below I-FGSM or PGD at the same eps (and accuracy rising with eps);
2. more effort does not help: PGD with >= 5x the steps x restarts no lower than plain PGD, while
   other attacks find adversarial examples PGD misses (so the gradients, not the model, stop it);
3. unbounded eps does not break it: PGD at eps >= 0.99 leaves accuracy above chance;
4. black-box or transfer beats white-box: Square, or the best transfer source, below plain PGD;
5. BPDA beats plain gradients: BPDA PGD below plain PGD by more than a few points;
6. dead gradients: inputs whose input gradient is zero, NaN or inf;
and AutoAttack's own (`autoattack/checks.py`):
7. randomised model: one input, different outputs over 5 forward passes (needs EOT, not PGD);
8. probability outputs: rows in [0, 1] summing to 1 (a loss on softmax saturates);
9. zero gradients at the attack's start: dead input gradients at PGD's random start in the ball;
10. AutoAttack beats PGD: AutoAttack or APGD more than 5 points below plain PGD (the PGD number
    overstates robustness, as on k-WTA: 52.4% under PGD, 18.5% under AutoAttack);
and the adaptive attacks' (`adaptive.py`):
11. an adaptive attack beats the standard ones: BPDA through any gradient attack, the smooth
    surrogate or the finite-difference attack below the best standard white-box attack (AutoAttack
    and Square included) by more than the tolerance (as on k-WTA: 18.5% under AutoAttack, 0.16%
    under Tramer et al.'s finite differences).

A check that compares two accuracies (1, 2, 4, 5, 10, 11), or one count with a fixed share (3, 6, 9),
fires only when the difference is beyond its margin AND a one-sided exact test on the images says
so (`stats.accuracy_test`, `stats.share_test`, p < `stats.MASKING_ALPHA`): two trainings of one
net differ by a few images, and a flag must not flip on them. A difference beyond the margin that
is not significant is no flag; it is kept (`Decisions.unproven`) so a reader sees why. Checks 7
and 8 need no test: one input whose logits change proves randomness, and probability rows are a
property of the output layer, not a rate estimated from a sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robustbench_sparse.analysis.adaptive import UNBOUNDED, adaptive
from robustbench_sparse.analysis.stats import Evidence, accuracy_test, correct_count, share_test
from robustbench_sparse.evaluation.cells import decode_flags
from robustbench_sparse.evaluation.kinds import parse_spec
from robustbench_sparse.perturb.attacks import ATTACKS, LABELS  # LABELS: attack name -> label, from the registry

# The checks: name, and what a suite must run for each (shown when it could not run).
CHECK_NEEDS = {
    1: ("one-step beats iterative",
        "FGSM beside I-FGSM or PGD at one eps, or an attack swept over two eps with prune = false"),
    2: ("more effort does not help",
        "PGD, PGD with >= 5x steps x restarts, and Square, BPDA or transfer at one eps < 1"),
    3: ("unbounded eps does not break it", "PGD at eps = 1"),
    4: ("black-box or transfer beats white-box", "PGD beside Square or a transfer attack at one eps"),
    5: ("BPDA beats plain gradients", "PGD beside BPDA PGD (bpda = relu) at one eps"),
    6: ("dead gradients", "a `gradients` evaluation"),
    7: ("randomised model", "a `determinism` evaluation"),
    8: ("probability outputs", "a `logits` evaluation"),
    9: ("zero gradients at the attack's start", "a `gradients` evaluation with eps > 0"),
    10: ("AutoAttack beats PGD", "PGD beside AutoAttack or APGD at one eps"),
    11: ("an adaptive attack beats the standard ones",
         "an adaptive attack (bpda = relu, identity or sigmoid, or fd-pgd) beside AutoAttack or APGD at one eps"),
}
# Each flag's check number (check 1 has three forms).
CHECK_OF = {
    "one-step beats iterative": 1,
    "PGD weaker than I-FGSM": 1,
    "accuracy rises with eps": 1,
    "more effort does not help": 2,
    "unbounded eps does not break it": 3,
    "black-box or transfer beats white-box": 4,
    "BPDA beats plain gradients": 5,
    "dead gradients": 6,
    "randomised model": 7,
    "probability outputs": 8,
    "zero gradients at the attack's start": 9,
    "AutoAttack beats PGD": 10,
    "adaptive attack beats standard attacks": 11,
}
CHECKS = tuple(CHECK_OF)
# Check 10: AutoAttack is the stronger attack, so it beats PGD-40 by a few points on any model
# (on `mnist5k`'s dense net: 12% vs 15% at eps = 0.2 on 100 images); it fires when PGD overstates
# robustness by more than this many points (the k-winner nets: 20-22% vs 32-33%).
AUTOATTACK_TOLERANCE = 5.0


@dataclass(frozen=True)
class Flag:
    """One decision of a check. `evidence` ends with the counts and the test, e.g. "(1 vs 7 of 200
    images, discordant 0 vs 6; one-sided McNemar p = 0.016: not significant)". `significant`
    False: beyond the check's margin but not significant, so not a flag (`Decisions.unproven`)."""

    model: str
    seed: int
    check: str
    evidence: str
    test: str = ""  # "McNemar", "Fisher exact (unpaired)", "binomial", or "conclusive" (checks 7, 8)
    p: float | None = None  # the one-sided p; None for a conclusive check
    significant: bool = True


@dataclass(frozen=True)
class Decisions:
    flags: list[Flag]  # fired: beyond the margin and significant
    unproven: list[Flag]  # beyond the margin, not significant: no flag
    checks: pd.DataFrame  # `masking_checks`


def check_label(flag: Flag) -> str:
    """The check a flag belongs to, as the checks table and baselines name it ("5. BPDA beats plain gradients")."""
    number = CHECK_OF[flag.check]
    return f"{number}. {CHECK_NEEDS[number][0]}"


def _decide(model: str, seed: int, check: str, text: str, evidence: Evidence) -> Flag:
    return Flag(model, seed, check, f"{text} ({evidence.describe()})", evidence.test, evidence.p,
                evidence.significant)


def _conclusive(model: str, seed: int, check: str, text: str) -> Flag:
    return Flag(model, seed, check, text, "conclusive")


def white_box(df: pd.DataFrame) -> pd.DataFrame:
    """Records of attacks crafted on the model they were evaluated on."""
    return df[df["kind"].isin(ATTACKS) & (df["source"] == df["model"])]


def _params(spec: str) -> dict[str, Any]:
    return parse_spec(spec)[1]


def _true_gradients(records: pd.DataFrame) -> pd.Series:
    """A mask (aligned with `records`, also when empty) of the records without BPDA."""
    return records["spec"].map(lambda s: _params(s).get("bpda", "none") == "none").astype(bool)


def _unpruned(records: pd.DataFrame) -> pd.Series:
    """A mask of the records whose sweep was not pruned: only there can accuracy rise with eps (a
    pruned sweep is monotone by construction, so it says nothing about the gradients)."""
    return records["spec"].map(lambda s: not _params(s).get("prune", False)).astype(bool)


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def _lowest(records: pd.DataFrame) -> pd.Series:
    """The record with the lowest accuracy (the first of ties)."""
    return records.iloc[records["accuracy"].to_numpy().argmin()]


def _ordering(df: pd.DataFrame, tolerance: float, monotone_tolerance: float) -> list[Flag]:
    """Check 1's decisions, significant or not (`ordering_flags`)."""
    flags = []
    wb = white_box(df)
    if "spec" in wb.columns:
        wb = wb[_true_gradients(wb)]
    for (model, seed), group in wb.groupby(["model", "seed"], sort=False):
        sweeps = group[_unpruned(group)] if "spec" in group.columns else group
        for evaluation, sweep in sweeps.groupby("evaluation", sort=False):
            sweep = sweep.sort_values("strength")
            acc, eps = sweep["accuracy"].to_numpy() * 100, sweep["strength"].to_numpy()
            for i in range(1, len(acc)):
                if acc[i] > acc[i - 1] + monotone_tolerance:
                    flags.append(_decide(
                        model, int(seed), "accuracy rises with eps",
                        f"{evaluation}: {_pct(acc[i - 1])} at eps={eps[i - 1]:g} -> {_pct(acc[i])} at eps={eps[i]:g}",
                        accuracy_test(sweep.iloc[i - 1], sweep.iloc[i], "less"),
                    ))
        for eps, at_eps in group.groupby("strength", sort=True):
            if eps == 0:
                continue
            # per kind its strongest record (lowest accuracy), as the check compares kinds
            best = {kind: _lowest(part) for kind, part in at_eps.groupby("kind", sort=False)}
            acc = {kind: row["accuracy"] * 100 for kind, row in best.items()}
            for strong in ("ifgsm", "pgd"):
                if "fgsm" in acc and strong in acc and acc[strong] > acc["fgsm"] + tolerance:
                    flags.append(_decide(
                        model, int(seed), "one-step beats iterative",
                        f"FGSM {_pct(acc['fgsm'])} < {LABELS[strong]} {_pct(acc[strong])} at eps={eps:g}",
                        accuracy_test(best["fgsm"], best[strong], "less"),
                    ))
            if "pgd" in acc and "ifgsm" in acc and acc["pgd"] > acc["ifgsm"] + tolerance:
                flags.append(_decide(model, int(seed), "PGD weaker than I-FGSM",
                                     f"PGD {_pct(acc['pgd'])} > I-FGSM {_pct(acc['ifgsm'])} at eps={eps:g}",
                                     accuracy_test(best["pgd"], best["ifgsm"], "greater")))
    return flags


def ordering_flags(df: pd.DataFrame, tolerance: float = 2.0, monotone_tolerance: float = 1.0) -> list[Flag]:
    """Check 1 on white-box gradient attacks (true gradients only), in accuracy points:
    accuracy must not rise with eps beyond `monotone_tolerance` (unpruned sweeps only), and at each
    eps > 0, PGD <= I-FGSM + tolerance and I-FGSM, PGD <= FGSM + tolerance; each only where the
    difference is also significant on the images (a few images either way are sampling noise)."""
    return [f for f in _ordering(df, tolerance, monotone_tolerance) if f.significant]


def _pgd_roles(own: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Plain PGD (true gradients, cross-entropy, least effort), stronger PGD (>= 5x its effort),
    and BPDA PGD records of one model."""
    pgd = own[own["kind"] == "pgd"].copy()
    if pgd.empty:
        return pgd, pgd, pgd
    params = [_params(s) for s in pgd["spec"]]
    pgd["effort"] = [p.get("steps", 1) * p.get("restarts", 1) for p in params]
    pgd["bpda"] = [p.get("bpda", "none") for p in params]
    pgd["loss"] = [p.get("loss", "ce") for p in params]
    true_grad = pgd[(pgd["bpda"] == "none")]
    if true_grad.empty:
        return true_grad, true_grad, pgd[pgd["bpda"] != "none"]
    base_effort = true_grad.loc[true_grad["loss"] == "ce", "effort"].min()
    plain = true_grad[(true_grad["effort"] == base_effort) & (true_grad["loss"] == "ce")]
    strong = true_grad[true_grad["effort"] >= 5 * base_effort]
    return plain, strong, pgd[pgd["bpda"] != "none"]


def _survivors(group: pd.DataFrame) -> float:
    """Per-sample worst case (%) over the records of one model at one eps."""
    n = int(group["n"].iloc[0])
    return float(np.logical_and.reduce([decode_flags(f, n) for f in group["flags"]]).mean() * 100)


def _plain_rows(plain: pd.DataFrame) -> dict[float, pd.Series]:
    """Per eps, the plain PGD record the checks compare with: the lowest."""
    return {float(eps): _lowest(part) for eps, part in plain.groupby("strength")}


def _strongest(beyond: pd.DataFrame, test: Callable[[pd.Series], Evidence]) -> tuple[pd.Series, Evidence] | None:
    """Of the records beyond a check's margin, the lowest whose difference is significant, else the
    lowest (an unproven decision). Each candidate is tested on its own: the lowest accuracy need
    not have the most one-sided discordant pairs."""
    tried = []
    for _, row in beyond.iloc[np.argsort(beyond["accuracy"].to_numpy(), kind="stable")].iterrows():
        evidence = test(row)
        if evidence.significant:
            return row, evidence
        tried.append((row, evidence))
    return tried[0] if tried else None


def _model_checks(records: pd.DataFrame, model: str, seed: int, chance: float, tolerance: float,
                  bpda_tolerance: float, dead_share: float) -> tuple[list[Flag], set[int]]:
    """Checks 2-10 on one model's records: the decisions (significant or not), and which checks had
    what they need."""
    flags: list[Flag] = []
    ran: set[int] = set()
    own = records[records["source"] == model]
    plain, strong, bpda = _pgd_roles(own)
    plain_rows = _plain_rows(plain)
    plain_at = {eps: row["accuracy"] * 100 for eps, row in plain_rows.items()}
    for eps, acc in plain_at.items():
        if eps >= 0.99:
            ran.add(3)
            if acc > chance:
                row = plain_rows[eps]
                flags.append(_decide(model, seed, "unbounded eps does not break it",
                                     f"PGD at eps={eps:g} leaves {_pct(acc)} (chance: {_pct(chance)})",
                                     share_test(correct_count(row), int(row["n"]), chance / 100)))
    # Attacks that do not follow the model's own gradients: Square, transfer, BPDA.
    others = records[records["kind"].isin(ATTACKS) & ((records["kind"] == "square") | (records["source"] != model))]
    detour = pd.concat([others, bpda], ignore_index=True)
    for eps, part in strong.groupby("strength"):
        around = detour[detour["strength"] == eps]
        if eps not in plain_at or eps >= 0.99 or around.empty:
            continue
        ran.add(2)
        strongest = _lowest(part)
        stronger = strongest["accuracy"] * 100
        if stronger <= plain_at[eps] - 0.5:
            continue
        decided = _strongest(around[around["accuracy"] * 100 < stronger - tolerance],
                             lambda row, strongest=strongest: accuracy_test(strongest, row, "greater"))
        if decided:
            best, evidence = decided
            flags.append(_decide(model, seed, "more effort does not help",
                                 f"PGD x{int(part['effort'].max() // plain['effort'].min())} effort "
                                 f"{_pct(stronger)} vs PGD {_pct(plain_at[eps])} at eps={eps:g}, while "
                                 f"{best['evaluation']} from {best['source']} leaves {_pct(best['accuracy'] * 100)}",
                                 evidence))
    for eps, part in others.groupby("strength"):
        if eps not in plain_at:
            continue
        ran.add(4)
        decided = _strongest(part[part["accuracy"] * 100 < plain_at[eps] - tolerance],
                             lambda row, eps=eps: accuracy_test(row, plain_rows[eps], "less"))
        if decided:
            worst, evidence = decided
            how = "Square" if worst["source"] == model else f"{LABELS.get(worst['kind'], worst['kind'])} from {worst['source']}"
            flags.append(_decide(model, seed, "black-box or transfer beats white-box",
                                 f"{how} {_pct(worst['accuracy'] * 100)} < white-box PGD {_pct(plain_at[eps])} "
                                 f"at eps={eps:g}", evidence))
    for eps, part in bpda.groupby("strength"):
        if eps not in plain_at:
            continue
        ran.add(5)
        decided = _strongest(part[part["accuracy"] * 100 < plain_at[eps] - bpda_tolerance],
                             lambda row, eps=eps: accuracy_test(row, plain_rows[eps], "less"))
        if decided:
            row, evidence = decided
            flags.append(_decide(model, seed, "BPDA beats plain gradients",
                                 f"BPDA ({row['bpda']}) PGD {_pct(row['accuracy'] * 100)} < PGD {_pct(plain_at[eps])} "
                                 f"at eps={eps:g}", evidence))
    for _, row in own[own["kind"] == "gradients"].iterrows():
        eps = _params(row["spec"]).get("eps", 0.0) if "spec" in row else 0.0
        number, check = (9, "zero gradients at the attack's start") if eps > 0 else (6, "dead gradients")
        ran.add(number)
        dead = 1 - row["accuracy"]
        if dead > dead_share:
            where = f" at a random start in the eps={eps:g} ball" if eps > 0 else ""
            flags.append(_decide(model, seed, check, f"{_pct(dead * 100)} of {row['n']} inputs have a zero or "
                                 f"non-finite input gradient{where}",
                                 share_test(int(row["n"]) - correct_count(row), int(row["n"]), dead_share)))
    for _, row in own[own["kind"] == "determinism"].iterrows():
        ran.add(7)
        if row["accuracy"] < 1:
            flags.append(_conclusive(model, seed, "randomised model",
                                     f"{_pct((1 - row['accuracy']) * 100)} of {row['n']} inputs get different logits "
                                     "over 5 forward passes: attack with EOT, plain gradients see one random draw"))
    for _, row in own[own["kind"] == "logits"].iterrows():
        ran.add(8)
        if row["accuracy"] < 0.5:
            flags.append(_conclusive(model, seed, "probability outputs",
                                     f"{_pct((1 - row['accuracy']) * 100)} of {row['n']} output rows are probability "
                                     "vectors: cross-entropy on softmax output saturates; return logits"))
    strongest_attacks = own[own["kind"].isin(["autoattack", "apgd"])]
    strongest_attacks = strongest_attacks[_true_gradients(strongest_attacks)]
    for eps, part in strongest_attacks.groupby("strength"):
        if eps not in plain_at:
            continue
        ran.add(10)
        decided = _strongest(part[part["accuracy"] * 100 < plain_at[eps] - AUTOATTACK_TOLERANCE],
                             lambda row, eps=eps: accuracy_test(row, plain_rows[eps], "less"))
        if decided:
            row, evidence = decided
            flags.append(_decide(model, seed, "AutoAttack beats PGD",
                                 f"{row['evaluation']} {_pct(row['accuracy'] * 100)} < PGD {_pct(plain_at[eps])} at "
                                 f"eps={eps:g}: the PGD number overstates robustness", evidence))
    flags += _adaptive_check(own, model, seed, tolerance, ran)
    return flags, ran


def _adaptive_check(own: pd.DataFrame, model: str, seed: int, tolerance: float, ran: set[int]) -> list[Flag]:
    """Check 11 on one model's white-box records: an adaptive attack below the lowest standard one."""
    attacked = own[own["kind"].isin(ATTACKS) & (own["strength"] > 0) & (own["strength"] < UNBOUNDED)]
    if attacked.empty:
        return []
    aimed = adaptive(attacked)
    flags = []
    for eps, part in attacked.groupby("strength"):
        mine = aimed[part.index]
        aimed_at, standard = part[mine], part[~mine]
        # The best standard attacks must be there: beside plain PGD alone this is check 5.
        if aimed_at.empty or not standard["kind"].isin(["autoattack", "apgd"]).any():
            continue
        ran.add(11)
        best = _lowest(standard)
        decided = _strongest(aimed_at[aimed_at["accuracy"] * 100 < best["accuracy"] * 100 - tolerance],
                             lambda row, best=best: accuracy_test(row, best, "less"))
        if decided:
            row, evidence = decided
            flags.append(_decide(model, seed, "adaptive attack beats standard attacks",
                                 f"{row['evaluation']} {_pct(row['accuracy'] * 100)} < {best['evaluation']} "
                                 f"{_pct(best['accuracy'] * 100)}, the lowest standard attack, at eps={eps:g}: the "
                                 "standard attacks overstate robustness", evidence))
    return flags


def _ordering_ran(records: pd.DataFrame, model: str) -> bool:
    """Check 1 has what it needs: FGSM beside I-FGSM or PGD (or I-FGSM beside PGD) at one eps > 0,
    or a white-box gradient attack swept over two eps without pruning."""
    wb = white_box(records[records["model"] == model])
    wb = wb[_true_gradients(wb) & (wb["kind"] != "square")]
    if (wb[_unpruned(wb)].groupby("evaluation")["strength"].nunique() >= 2).any():
        return True
    kinds_at = wb[wb["strength"] > 0].groupby("strength")["kind"].agg(set)
    return any(len(k & {"fgsm", "ifgsm", "pgd"}) >= 2 for k in kinds_at)


def _statuses(df: pd.DataFrame, num_classes: int, tolerance: float, bpda_tolerance: float,
              dead_share: float) -> tuple[list[Flag], list[dict[str, Any]]]:
    """Every decision (significant or not) and the checks table's rows: a check fires on its
    significant decisions; one that ran with only unproven ones passes, naming them."""
    if df.empty:
        return [], []
    decided = _ordering(df, tolerance, 1.0)
    rows = []
    chance = 100 / num_classes
    for (model, seed), records in df.groupby(["model", "seed"], sort=False):
        found, ran = _model_checks(records, model, int(seed), chance, tolerance, bpda_tolerance, dead_share)
        if _ordering_ran(records, model):
            ran.add(1)
        decided += found
        mine = [f for f in decided if f.model == model and f.seed == int(seed)]
        for number, (name, needs) in CHECK_NEEDS.items():
            fired = [f for f in mine if CHECK_OF[f.check] == number and f.significant]
            unproven = [f for f in mine if CHECK_OF[f.check] == number and not f.significant]
            status = "fired" if fired else ("passed" if number in ran else "not run")
            if fired:
                detail = "; ".join(f"{f.check}: {f.evidence}" for f in fired)
            elif status == "passed":
                detail = "; ".join(f"not significant, {f.check}: {f.evidence}" for f in unproven)
            else:
                detail = f"needs {needs}"
            rows.append({"model": model, "seed": int(seed), "check": f"{number}. {name}", "status": status,
                         "evidence / needs": detail})
    return decided, rows


def masking_decisions(df: pd.DataFrame, num_classes: int = 10, tolerance: float = 2.0,
                      bpda_tolerance: float = 3.0, dead_share: float = 0.01) -> Decisions:
    """The flags (with their tests and p), the differences beyond a margin that are not significant,
    and the checks table, in one pass."""
    decided, rows = _statuses(df, num_classes, tolerance, bpda_tolerance, dead_share)
    return Decisions([f for f in decided if f.significant], [f for f in decided if not f.significant],
                     pd.DataFrame(rows, columns=["model", "seed", "check", "status", "evidence / needs"]))


def masking_flags(df: pd.DataFrame, num_classes: int = 10, tolerance: float = 2.0,
                  bpda_tolerance: float = 3.0, dead_share: float = 0.01) -> list[Flag]:
    """The flags raised by the checks, per model and seed (significant decisions only). `df` holds
    white-box records and transfer records (targets = `model`, crafted on `source`)."""
    return masking_decisions(df, num_classes, tolerance, bpda_tolerance, dead_share).flags


def masking_checks(df: pd.DataFrame, num_classes: int = 10, tolerance: float = 2.0,
                   bpda_tolerance: float = 3.0, dead_share: float = 0.01) -> pd.DataFrame:
    """Each of the checks per model and seed: fired (with its evidence), passed (naming any
    difference beyond its margin that was not significant), or not run (with the evaluations it
    needs)."""
    return masking_decisions(df, num_classes, tolerance, bpda_tolerance, dead_share).checks


def check_summary(checks: pd.DataFrame, model: str) -> str:
    """One model's check statuses in one cell: fired checks by name, the others by number
    (a check counts as fired when it fired for any seed)."""
    mine = checks[checks["model"] == model]
    if mine.empty:
        return "not run (no records)"
    by_check = mine.groupby("check", sort=False)["status"].agg(set)
    fired = [c.split(". ", 1)[1] for c, s in by_check.items() if "fired" in s]
    passed = [c.split(".")[0] for c, s in by_check.items() if "fired" not in s and "passed" in s]
    not_run = [c.split(".")[0] for c, s in by_check.items() if s == {"not run"}]
    parts = [f"fired: {', '.join(fired)}" if fired else "none fired"]
    if passed:
        parts.append(f"passed: {', '.join(passed)}")
    if not_run:
        parts.append(f"not run: {', '.join(not_run)}")
    return "; ".join(parts)


def most_effective(records: pd.DataFrame) -> pd.DataFrame:
    """Per model, seed and eps > 0: plain PGD accuracy (%) beside the per-sample worst case over
    every attack run against the model (white-box, BPDA, black-box and transfer), and which
    single attack came closest."""
    rows = []
    attacked = records[records["kind"].isin(ATTACKS) & (records["strength"] > 0)]
    for (model, seed), part in attacked.groupby(["model", "seed"], sort=False):
        plain, _, _ = _pgd_roles(part[part["source"] == model])
        plain_at = (plain.groupby("strength")["accuracy"].min() * 100).to_dict()
        for eps, group in part.groupby("strength"):
            best = group.iloc[group["accuracy"].to_numpy().argmin()]
            label = best["evaluation"] if best["source"] == model else f"{best['evaluation']} from {best['source']}"
            rows.append({"model": model, "seed": seed, "strength": eps, "pgd": plain_at.get(eps, np.nan),
                         "worst": _survivors(group), "strongest single attack": label, "attacks": len(group)})
    return pd.DataFrame(rows, columns=["model", "seed", "strength", "pgd", "worst", "strongest single attack",
                                       "attacks"])
