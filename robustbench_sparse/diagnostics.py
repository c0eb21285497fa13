"""Signs that an attack's numbers measure a weak attack rather than a robust model.

Computed from stored records only (white-box records, and transfer records whose target is the
model), so every report and table can show them. Each flag carries the evidence behind it, in
words a reader can check against the tables. The six checks (REFERENCE.md section 7):

1. one-step beats iterative: FGSM below I-FGSM or PGD at the same eps (and accuracy rising with eps);
2. more effort does not help: PGD with >= 5x the steps x restarts no lower than plain PGD, while
   other attacks find adversarial examples PGD misses (so the gradients, not the model, stop it);
3. unbounded eps does not break it: PGD at eps >= 0.99 leaves accuracy above chance;
4. black-box or transfer beats white-box: Square, or the best transfer source, below plain PGD;
5. BPDA beats plain gradients: BPDA PGD below plain PGD by more than a few points;
6. dead gradients: inputs whose input gradient is zero, NaN or inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robustbench_sparse.attacks import ATTACKS
from robustbench_sparse.evaluations import parse_spec

LABELS = {"fgsm": "FGSM", "ifgsm": "I-FGSM", "mifgsm": "MI-FGSM", "pgd": "PGD", "square": "Square"}
CHECKS = (
    "one-step beats iterative",
    "PGD weaker than I-FGSM",
    "accuracy rises with eps",
    "more effort does not help",
    "unbounded eps does not break it",
    "black-box or transfer beats white-box",
    "BPDA beats plain gradients",
    "dead gradients",
)


@dataclass(frozen=True)
class Flag:
    model: str
    seed: int
    check: str
    evidence: str


def white_box(df: pd.DataFrame) -> pd.DataFrame:
    """Records of attacks crafted on the model they were evaluated on."""
    return df[df["kind"].isin(ATTACKS) & (df["source"] == df["model"])]


def _params(spec: str) -> dict[str, Any]:
    return parse_spec(spec)[1]


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def ordering_flags(df: pd.DataFrame, tolerance: float = 2.0, monotone_tolerance: float = 1.0) -> list[Flag]:
    """Check 1 on white-box gradient attacks (true gradients only), in accuracy points:
    accuracy must not rise with eps beyond `monotone_tolerance` (sampling noise), and at each
    eps > 0, PGD <= I-FGSM + tolerance and I-FGSM, PGD <= FGSM + tolerance."""
    flags = []
    wb = white_box(df)
    if "spec" in wb.columns:
        wb = wb[[_params(s).get("bpda", "none") == "none" for s in wb["spec"]]]
    for (model, seed), group in wb.groupby(["model", "seed"], sort=False):
        for evaluation, sweep in group.groupby("evaluation", sort=False):
            sweep = sweep.sort_values("strength")
            acc, eps = sweep["accuracy"].to_numpy() * 100, sweep["strength"].to_numpy()
            for i in range(1, len(acc)):
                if acc[i] > acc[i - 1] + monotone_tolerance:
                    flags.append(Flag(
                        model, int(seed), "accuracy rises with eps",
                        f"{evaluation}: {_pct(acc[i - 1])} at eps={eps[i - 1]:g} -> {_pct(acc[i])} at eps={eps[i]:g}",
                    ))
        by_eps = group.pivot_table(index="strength", columns="kind", values="accuracy", aggfunc="min") * 100
        for eps, row in by_eps.iterrows():
            if eps == 0:
                continue
            for strong in ("ifgsm", "pgd"):
                if "fgsm" in row and strong in row and row[strong] > row["fgsm"] + tolerance:
                    flags.append(Flag(
                        model, int(seed), "one-step beats iterative",
                        f"FGSM {_pct(row['fgsm'])} < {LABELS[strong]} {_pct(row[strong])} at eps={eps:g}",
                    ))
            if "pgd" in row and "ifgsm" in row and row["pgd"] > row["ifgsm"] + tolerance:
                flags.append(Flag(model, int(seed), "PGD weaker than I-FGSM",
                                  f"PGD {_pct(row['pgd'])} > I-FGSM {_pct(row['ifgsm'])} at eps={eps:g}"))
    return flags


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
    from robustbench_sparse.harness import decode_flags

    n = int(group["n"].iloc[0])
    return float(np.logical_and.reduce([decode_flags(f, n) for f in group["flags"]]).mean() * 100)


def masking_flags(df: pd.DataFrame, num_classes: int = 10, tolerance: float = 2.0,
                  bpda_tolerance: float = 3.0, dead_share: float = 0.01) -> list[Flag]:
    """All six checks, per model and seed. `df` holds white-box records and transfer records
    (targets = `model`, crafted on `source`)."""
    flags = ordering_flags(df, tolerance)
    chance = 100 / num_classes
    for (model, seed), records in df.groupby(["model", "seed"], sort=False):
        own = records[records["source"] == model]
        plain, strong, bpda = _pgd_roles(own)
        plain_at = (plain.groupby("strength")["accuracy"].min() * 100).to_dict()
        for eps, acc in plain_at.items():
            if eps >= 0.99 and acc > chance:
                flags.append(Flag(model, int(seed), "unbounded eps does not break it",
                                  f"PGD at eps={eps:g} leaves {_pct(acc)} (chance: {_pct(chance)})"))
        # Attacks that do not follow the model's own gradients: Square, transfer, BPDA.
        others = records[records["kind"].isin(ATTACKS) & ((records["kind"] == "square") | (records["source"] != model))]
        detour = pd.concat([others, bpda], ignore_index=True)
        for eps, part in strong.groupby("strength"):
            around = detour[detour["strength"] == eps]
            if eps not in plain_at or eps >= 0.99 or around.empty:
                continue
            stronger = part["accuracy"].min() * 100
            best = around.iloc[around["accuracy"].to_numpy().argmin()]
            if stronger > plain_at[eps] - 0.5 and best["accuracy"] * 100 < stronger - tolerance:
                flags.append(Flag(model, int(seed), "more effort does not help",
                                  f"PGD x{int(part['effort'].max() // plain['effort'].min())} effort "
                                  f"{_pct(stronger)} vs PGD {_pct(plain_at[eps])} at eps={eps:g}, while "
                                  f"{best['evaluation']} from {best['source']} leaves {_pct(best['accuracy'] * 100)}"))
        for eps, part in others.groupby("strength"):
            if eps not in plain_at:
                continue
            worst = part.iloc[part["accuracy"].to_numpy().argmin()]
            if worst["accuracy"] * 100 < plain_at[eps] - tolerance:
                how = "Square" if worst["source"] == model else f"{LABELS.get(worst['kind'], worst['kind'])} from {worst['source']}"
                flags.append(Flag(model, int(seed), "black-box or transfer beats white-box",
                                  f"{how} {_pct(worst['accuracy'] * 100)} < white-box PGD {_pct(plain_at[eps])} "
                                  f"at eps={eps:g}"))
        for eps, part in bpda.groupby("strength"):
            if eps in plain_at and part["accuracy"].min() * 100 < plain_at[eps] - bpda_tolerance:
                row = part.iloc[part["accuracy"].to_numpy().argmin()]
                flags.append(Flag(model, int(seed), "BPDA beats plain gradients",
                                  f"BPDA ({row['bpda']}) PGD {_pct(row['accuracy'] * 100)} < PGD {_pct(plain_at[eps])} "
                                  f"at eps={eps:g}"))
        for _, row in own[own["kind"] == "gradients"].iterrows():
            dead = 1 - row["accuracy"]
            if dead > dead_share:
                flags.append(Flag(model, int(seed), "dead gradients",
                                  f"{_pct(dead * 100)} of {row['n']} inputs have a zero or non-finite input gradient"))
    return flags


def flags_frame(flags: list[Flag]) -> pd.DataFrame:
    return pd.DataFrame([vars(f) for f in flags], columns=["model", "seed", "check", "evidence"])


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
