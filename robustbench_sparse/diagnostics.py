"""Signs that an attack's numbers measure a weak attack rather than a robust model.

Computed from stored records only, so every report and table can show them. Each flag carries the
evidence behind it, in words a reader can check against the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from robustbench_sparse.attacks import ATTACKS

LABELS = {"fgsm": "FGSM", "ifgsm": "I-FGSM", "mifgsm": "MI-FGSM", "pgd": "PGD"}


@dataclass(frozen=True)
class Flag:
    model: str
    seed: int
    check: str
    evidence: str


def white_box(df: pd.DataFrame) -> pd.DataFrame:
    """Records of attacks crafted on the model they were evaluated on."""
    return df[df["kind"].isin(ATTACKS) & (df["source"] == df["model"])]


def ordering_flags(df: pd.DataFrame, tolerance: float = 2.0, monotone_tolerance: float = 1.0) -> list[Flag]:
    """Two checks on white-box attacks, in accuracy points:

    - accuracy must not rise with eps by more than `monotone_tolerance` (sampling noise);
    - at each eps > 0, PGD <= I-FGSM + tolerance and I-FGSM <= FGSM + tolerance: an iterative
      attack that does worse than a single step is the classic sign of masked gradients.
    """
    flags = []
    for (model, seed), group in white_box(df).groupby(["model", "seed"], sort=False):
        for evaluation, sweep in group.groupby("evaluation", sort=False):
            sweep = sweep.sort_values("strength")
            acc, eps = sweep["accuracy"].to_numpy() * 100, sweep["strength"].to_numpy()
            for i in range(1, len(acc)):
                if acc[i] > acc[i - 1] + monotone_tolerance:
                    flags.append(Flag(
                        model, int(seed), "accuracy rises with eps",
                        f"{evaluation}: {acc[i - 1]:.1f}% at eps={eps[i - 1]:g} -> {acc[i]:.1f}% at eps={eps[i]:g}",
                    ))
        by_eps = group.pivot_table(index="strength", columns="kind", values="accuracy", aggfunc="min") * 100
        for eps, row in by_eps.iterrows():
            if eps == 0:
                continue
            for strong, weak in (("ifgsm", "fgsm"), ("pgd", "ifgsm")):
                if strong in row and weak in row and row[strong] > row[weak] + tolerance:
                    flags.append(Flag(
                        model, int(seed), "iterative weaker than one-step" if weak == "fgsm" else "PGD weaker than I-FGSM",
                        f"{LABELS[strong]} {row[strong]:.1f}% > {LABELS[weak]} {row[weak]:.1f}% at eps={eps:g}",
                    ))
    return flags


def flags_frame(flags: list[Flag]) -> pd.DataFrame:
    return pd.DataFrame([vars(f) for f in flags], columns=["model", "seed", "check", "evidence"])
