"""The verdict on each model's robustness once the adaptive attacks have run.

An attack record is *adaptive* when it is aimed at the k-winners mask itself: BPDA through any
gradient attack (bpda = relu, identity or the smooth surrogate) or the finite-difference attack
(`fd-pgd`, forward passes only). The *standard* attacks are the other white-box attacks (true
gradients, AutoAttack and Square included); transfer records come from other models.

Per model and eps the verdict table puts the per-image worst case over the standard attacks
beside the worst case over every attack run (standard, adaptive, transfer), names the attacks
that found the last points (the images no other attack fooled), and compares both with the
reference model (`dense`) on the same images: McNemar's exact test, Holm over the whole table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from robustbench_sparse.analysis.stats import compare_to_reference, reference_model
from robustbench_sparse.evaluation.cells import decode_flags, encode_flags
from robustbench_sparse.evaluation.kinds import parse_spec
from robustbench_sparse.perturb.attacks import ATTACKS, attack_of

FINITE_DIFFERENCES = "fd-pgd"
STANDARD, EVERY = "standard attacks", "every attack"
UNBOUNDED = 0.99  # eps at or above this is the "unbounded" check, not a threat model


def adaptive(records: pd.DataFrame) -> pd.Series:
    """A mask over attack records: aimed at the mask (BPDA, surrogate, finite differences)."""
    return pd.Series([kind == FINITE_DIFFERENCES or parse_spec(spec)[1].get("bpda", "none") != "none"
                      for kind, spec in zip(records["kind"], records["spec"], strict=True)],
                     index=records.index, dtype=bool)


def roles(records: pd.DataFrame) -> pd.Series:
    """Each attack record's role: "standard", "adaptive" or "transfer" (crafted on another model)."""
    role = pd.Series("standard", index=records.index, dtype=object)
    role[adaptive(records)] = "adaptive"
    role[records["source"] != records["model"]] = "transfer"
    return role


def _attacked(records: pd.DataFrame) -> pd.DataFrame:
    attacked = records[records["kind"].isin(ATTACKS) & (records["strength"] > 0)
                       & (records["strength"] < UNBOUNDED)]
    return attacked.assign(role=roles(attacked))


def _survivors(group: pd.DataFrame) -> np.ndarray:
    n = int(group["n"].iloc[0])
    return np.logical_and.reduce([decode_flags(f, n) for f in group["flags"]])


def _label(row: pd.Series) -> str:
    return row["evaluation"] if row["source"] == row["model"] else f"{row['evaluation']} from {row['source']}"


def last_points(group: pd.DataFrame) -> str:
    """The attacks that alone fooled some images (no other record of the group did), with how
    many, most first: "fd-pgd 3, square 1"; "none" when every image fooled was fooled twice."""
    n = int(group["n"].iloc[0])
    flags = [decode_flags(f, n) for f in group["flags"]]
    fooled = np.array([~f for f in flags])
    alone = fooled & (fooled.sum(axis=0) == 1)
    counts = {_label(row): int(alone[i].sum()) for i, (_, row) in enumerate(group.iterrows()) if alone[i].any()}
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return ", ".join(f"{label} {count}" for label, count in ordered) or "none"


def square_only(group: pd.DataFrame) -> int:
    """Images Square fooled that every white-box gradient attack of the group left correct: the
    evidence behind AutoAttack's own reliability warning (Square, gradient-free, finding points the
    gradient attacks missed)."""
    own = group[group["role"] == "standard"]
    square = own[own["kind"].map(lambda k: not attack_of(k).gradients)]
    gradient = own[own["kind"].map(lambda k: attack_of(k).gradients)]
    if square.empty or gradient.empty:
        return 0
    return int((~_survivors(square) & _survivors(gradient)).sum())


def _worst_rows(attacked: pd.DataFrame, keep: Callable[[pd.DataFrame], pd.DataFrame], name: str) -> list[dict[str, object]]:
    """Per model, seed and eps: the worst case over the records `keep` selects, as a record."""
    rows = []
    for (model, seed, eps), group in attacked.groupby(["model", "seed", "strength"], sort=False):
        part = keep(group)
        if part.empty:
            continue
        survives = _survivors(part)
        rows.append({"evaluation": name, "strength": eps, "model": model, "seed": seed,
                     "accuracy": float(survives.mean()), "n": int(part["n"].iloc[0]),
                     "flags": encode_flags(torch.from_numpy(survives))})
    return rows


def verdict_table(records: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Per model and eps (0 < eps < 1; training seeds pooled): the worst case (%) over the
    standard attacks and over every attack, the attacks that found the last points, the images only
    Square found, the differences from the reference with Holm-corrected p, and the verdict."""
    columns = ["model", "ε", "standard %", "every attack %", "found the last points", "Square only",
               "vs ref (standard)", "vs ref (every attack)", "p (Holm)", "verdict"]
    attacked = _attacked(records)
    if attacked.empty or not (attacked["role"] == "adaptive").any():
        return pd.DataFrame(columns=columns)
    ref = reference or reference_model(list(dict.fromkeys(records["model"])))
    worst = pd.DataFrame(_worst_rows(attacked, lambda g: g[g["role"] == "standard"], STANDARD)
                         + _worst_rows(attacked, lambda g: g, EVERY))
    tests = compare_to_reference(worst, ref).set_index(["evaluation", "strength", "model"])
    rows = []
    for (model, eps), group in attacked.groupby(["model", "strength"], sort=False):
        mine = worst[(worst["model"] == model) & (worst["strength"] == eps)]
        share = mine.groupby("evaluation")["accuracy"].mean() * 100
        row = {"model": model, "ε": eps, "standard %": share.get(STANDARD, np.nan), "every attack %": share[EVERY],
               "found the last points": last_points(group[group["seed"] == group["seed"].iloc[0]]),
               "Square only": sum(square_only(part) for _, part in group.groupby("seed"))}
        std, every = (tests.loc[(name, eps, model)] if (name, eps, model) in tests.index else None
                      for name in (STANDARD, EVERY))
        row["vs ref (standard)"] = float(std["difference"]) if std is not None else np.nan
        row["vs ref (every attack)"] = float(every["difference"]) if every is not None else np.nan
        row["p (Holm)"] = float(every["p (Holm)"]) if every is not None else np.nan
        row["verdict"] = _verdict(model, eps, ref, std, every, group)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _verdict(model: str, eps: float, ref: str, std: pd.Series | None, every: pd.Series | None,
             group: pd.DataFrame) -> str:
    if model == ref:
        return "reference"
    if every is None:
        return f"no {ref} records at this eps"
    d = float(every["difference"])
    if bool(every["significant"]):
        word = "keeps" if d > 0 else "falls"
        return f"{model} {word} {d:+.1f} points {'over' if d > 0 else 'below'} {ref} at ε = {eps:g} (significant)"
    if std is not None and bool(std["significant"]) and float(std["difference"]) > 0:
        adaptive_rows = group[group["role"] == "adaptive"]
        best = adaptive_rows.iloc[adaptive_rows["accuracy"].to_numpy().argmin()] if len(adaptive_rows) else None
        under = best["evaluation"] if best is not None else "the adaptive attacks"
        return (f"the edge vanishes under {under}: {float(std['difference']):+.1f} points over {ref} under the "
                f"standard attacks, {d:+.1f} under every attack (not significant)")
    return f"no significant difference from {ref} at ε = {eps:g} ({d:+.1f} points)"
