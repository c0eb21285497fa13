"""Robustness regression checks: a committed baseline, and a comparison that fails on a drop.

A baseline is a readable JSON file: per (model, evaluation, strength) the accuracy in points, its
mean and std over seeds, and the environment it came from. `check` compares current results
with it cell by cell, and fails on a masking check that fires now and did not in the baseline:
only on a flag decided with evidence (beyond the check's margin and significant on the images,
`diagnostics`), since a flip on a handful of images is what another machine's weights give.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_sparse.analysis.diagnostics import Flag, check_label, masking_checks, masking_decisions
from robustbench_sparse.evaluation.kinds import ACCURACY, kind_of
from robustbench_sparse.results.harness import Plan, Setup, run_metadata
from robustbench_sparse.runtime import UserError, atomic_write_text

FORMAT = "robustbench-sparse baseline 2"
FLAG_COLUMNS = ["model", "seed", "check", "evidence", "test", "p"]  # CheckResult.new_flags and .unproven


def cell_stats(frame: pd.DataFrame) -> dict[tuple[str, str, float], dict[str, Any]]:
    """(model, evaluation, strength) -> kind, spec, per-seed value (points), mean and std over seeds."""
    cells = {}
    own = frame[frame["source"] == frame["model"]]
    for (model, evaluation, strength), group in own.groupby(["model", "evaluation", "strength"], sort=False):
        per_seed = {str(int(s)): round(a * 100, 4) for s, a in zip(group["seed"], group["accuracy"], strict=True)}
        series = pd.Series(list(per_seed.values()))
        cells[(model, evaluation, float(strength))] = {
            "model": model,
            "evaluation": evaluation,
            "strength": float(strength),
            "kind": group["kind"].iloc[0],
            "metric": group["metric"].iloc[0],
            "spec": group["spec"].iloc[0],
            "accuracy": {
                "mean": round(float(series.mean()), 4),
                "std": round(float(series.std(ddof=1)), 4) if len(series) > 1 else 0.0,
                "per_seed": per_seed,
            },
        }
    return cells


def fired_checks(checks: pd.DataFrame) -> dict[str, list[str]]:
    """Model -> the masking checks that fired for it (on any seed)."""
    fired = checks[checks["status"] == "fired"]
    return {m: sorted(set(group["check"])) for m, group in fired.groupby("model", sort=False)}


def _over_seeds(statuses: set[str]) -> str:
    """A check's status over seeds: fired if it fired for any seed, else passed if it ran."""
    return next(s for s in ("fired", "passed", "not run") if s in statuses)


def make_baseline(frame: pd.DataFrame, plan: Plan) -> dict[str, Any]:
    meta = run_metadata(plan)
    checks = masking_checks(frame, plan.info.num_classes)
    return {
        "format": FORMAT,
        "dataset": plan.info.name,
        "suite": plan.suite.name,
        "backend": plan.setup.backend,
        "test_size": plan.n,
        "suite_test_size": plan.suite.test_size,
        "eval_seed": plan.suite.seed,
        "batch_size": plan.suite.batch_size,
        "seeds": plan.seeds,
        "models": [s.name for s in plan.specs],
        "environment": {k: meta[k] for k in ("split", "test_fingerprint", "device", "versions", "code", "checkpoints",
                                            "date", "suite_file")},
        "cells": list(cell_stats(frame).values()),
        "masking_checks": {m: {check: _over_seeds(set(rows["status"])) for check, rows in part.groupby("check")}
                           for m, part in checks.groupby("model", sort=False)},
        "fired": fired_checks(checks),
    }


def write_baseline(baseline: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(baseline, indent=1, ensure_ascii=False) + "\n")


def read_baseline(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"baseline {path} does not exist; write one with `rbs baseline --out {path}`") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"baseline {path} is unreadable: {err}") from None
    if not isinstance(doc, dict) or not str(doc.get("format", "")).startswith("robustbench-sparse baseline"):
        raise UserError(f"{path} is not a robustbench-sparse baseline (expected format {FORMAT!r})")
    if doc["format"] != FORMAT:
        raise UserError(f"baseline {path} has the older format {doc['format']!r} (no masking-check statuses); "
                        f"regenerate it with `rbs baseline --out {path}`")
    for key in ("dataset", "suite", "seeds", "models", "cells", "test_size", "eval_seed", "batch_size", "fired"):
        if key not in doc:
            raise UserError(f"baseline {path} lacks {key!r}; regenerate it with `rbs baseline`")
    return doc


def check_setup(baseline: dict[str, Any], setup: Setup) -> None:
    """Refuse, before any work, a run that cannot be compared with the baseline: another suite
    (a changed spec, an evaluation added or removed), test size, evaluation seed or batch size."""
    suite = setup.suite
    regenerate = "; regenerate the baseline with `rbs baseline`"
    declared = baseline.get("suite_test_size", baseline["test_size"])
    for what, was, now in (("test size", declared, suite.test_size), ("evaluation seed", baseline["eval_seed"], suite.seed),
                           ("batch size", baseline["batch_size"], suite.batch_size)):
        if was != now:
            raise UserError(f"the suite {suite.name!r} changed since the baseline: {what} {was} -> {now}{regenerate}")
    expected = {(m, e.name, float(s)): e.spec(s) for m in baseline["models"] for e in suite.evaluations
                for s in e.strengths}
    before = {(c["model"], c["evaluation"], float(c["strength"])): c["spec"] for c in baseline["cells"]}
    for key in sorted(before.keys() & expected.keys()):
        if before[key] != expected[key]:
            raise UserError(f"the suite changed since the baseline: {key[1]} at {key[2]:g} was {before[key]}, "
                            f"now {expected[key]}{regenerate}")
    added = sorted({(e, s) for _, e, s in expected.keys() - before.keys()})
    removed = sorted({(e, s) for _, e, s in before.keys() - expected.keys()})
    if added or removed:
        parts = ([f"added {', '.join(f'{e}@{s:g}' for e, s in added)}"] if added else []) + (
            [f"removed {', '.join(f'{e}@{s:g}' for e, s in removed)}"] if removed else [])
        raise UserError(f"the suite {suite.name!r} changed since the baseline: {'; '.join(parts)}{regenerate}")


@dataclass(frozen=True)
class CheckResult:
    regressions: pd.DataFrame  # accuracy fell beyond the allowed drop
    improvements: pd.DataFrame  # noise accuracy rose beyond it (passes)
    rises: pd.DataFrame  # attack accuracy rose beyond it: suspicious (a weaker attack looks like robustness)
    new_flags: pd.DataFrame  # masking checks that fire now (significantly) and did not in the baseline
    missing: list[str]
    compared: int
    # beyond a check's margin but not significant, for a check the baseline did not fire: no flag,
    # never fails; listed so that a reader sees the counts and p behind the pass
    unproven: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FLAG_COLUMNS))

    def passed(self, allow_missing: bool = False, allow_rise: bool = False) -> bool:
        return (self.regressions.empty and self.new_flags.empty and (allow_rise or self.rises.empty)
                and (allow_missing or not self.missing))


_COLUMNS = ["model", "evaluation", "strength", "baseline %", "now %", "change (points)", "allowed drop"]


def _flag_table(flags: list[Flag]) -> pd.DataFrame:
    """One row per decision: its check as baselines name it, the evidence (with the counts), test and p."""
    rows = [{"model": f.model, "seed": f.seed, "check": check_label(f), "evidence": f"{f.check}: {f.evidence}",
             "test": f.test, "p": f.p} for f in flags]
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)


def compare(
    baseline: dict[str, Any], frame: pd.DataFrame, tolerance: float = 1.0, sigma: float | None = None,
    num_classes: int = 10,
) -> CheckResult:
    """A cell regresses when its mean accuracy fell by more than the allowed drop, in points:
    `tolerance`, or with `sigma`, max(tolerance, sigma x the baseline's std over seeds). An attack's
    accuracy rising by more than that is suspicious, not an improvement, and so is any masking
    check that fires now and did not in the baseline. A check fires only on a decision with
    evidence (its margin and a one-sided exact test on the images, `diagnostics`); differences
    beyond a margin that are not significant are listed in `unproven` and pass."""
    if tolerance < 0 or (sigma is not None and sigma < 0):
        raise UserError("--tolerance and --sigma must be >= 0")
    if sigma is not None and len(baseline["seeds"]) < 2:
        raise UserError("--sigma needs a baseline over several seeds (this one has one); use --tolerance")
    before = {(c["model"], c["evaluation"], float(c["strength"])): c for c in baseline["cells"]}
    now = cell_stats(frame)
    rows, attack = [], []
    for key in sorted(before.keys() & now.keys(), key=lambda k: (k[0], k[1], k[2])):
        if now[key]["metric"] != ACCURACY:
            continue  # not an accuracy: judged by the masking checks (dead gradients)
        old, new = before[key]["accuracy"], now[key]["accuracy"]
        allowed = tolerance if sigma is None else max(tolerance, sigma * old["std"])
        rows.append({
            "model": key[0], "evaluation": key[1], "strength": key[2],
            "baseline %": _pm(old), "now %": _pm(new),
            "change (points)": round(new["mean"] - old["mean"], 2), "allowed drop": round(allowed, 2),
        })
        attack.append(kind_of(now[key]["kind"]).adversarial and key[2] > 0)
    table = pd.DataFrame(rows, columns=_COLUMNS)
    is_attack = pd.Series(attack, index=table.index, dtype=bool)
    up = table["change (points)"] > table["allowed drop"]
    regressions = table[table["change (points)"] < -table["allowed drop"]].reset_index(drop=True)
    improvements = table[up & ~is_attack].reset_index(drop=True)
    rises = table[up & is_attack].reset_index(drop=True)
    decisions = masking_decisions(frame, num_classes)
    old_fired = {(m, c) for m, names in baseline["fired"].items() for c in names}
    new_flags = _flag_table([f for f in decisions.flags if f.significant and (f.model, check_label(f)) not in old_fired])
    unproven = _flag_table([f for f in decisions.unproven if (f.model, check_label(f)) not in old_fired])
    missing = [f"{m} / {e} / {s:g}: in the baseline, not in this run" for m, e, s in sorted(before.keys() - now.keys())]
    missing += [f"{m} / {e} / {s:g}: in this run, not in the baseline" for m, e, s in sorted(now.keys() - before.keys())]
    return CheckResult(regressions, improvements, rises, new_flags, missing, len(table), unproven)


def _pm(acc: dict[str, Any]) -> str:
    return f"{acc['mean']:.1f}" if len(acc["per_seed"]) < 2 else f"{acc['mean']:.1f} ± {acc['std']:.1f}"
