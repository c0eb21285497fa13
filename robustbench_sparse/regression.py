"""Robustness regression checks: a committed baseline, and a comparison that fails on a drop.

A baseline is a readable JSON file: per (model, evaluation, strength) the accuracy in points, its
mean and std over seeds, and the environment it came from. `check` compares current results
with it cell by cell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_sparse.harness import Plan, run_metadata
from robustbench_sparse.runtime import UserError, atomic_write_text

FORMAT = "robustbench-sparse baseline 1"


def cell_stats(frame: pd.DataFrame) -> dict[tuple[str, str, float], dict[str, Any]]:
    """(model, evaluation, strength) -> spec, per-seed accuracy (points), mean and std over seeds."""
    cells = {}
    own = frame[frame["source"] == frame["model"]]
    for (model, evaluation, strength), group in own.groupby(["model", "evaluation", "strength"], sort=False):
        per_seed = {str(int(s)): round(a * 100, 4) for s, a in zip(group["seed"], group["accuracy"], strict=True)}
        series = pd.Series(list(per_seed.values()))
        cells[(model, evaluation, float(strength))] = {
            "model": model,
            "evaluation": evaluation,
            "strength": float(strength),
            "spec": group["spec"].iloc[0],
            "accuracy": {
                "mean": round(float(series.mean()), 4),
                "std": round(float(series.std(ddof=1)), 4) if len(series) > 1 else 0.0,
                "per_seed": per_seed,
            },
        }
    return cells


def make_baseline(frame: pd.DataFrame, plan: Plan) -> dict[str, Any]:
    meta = run_metadata(plan)
    return {
        "format": FORMAT,
        "dataset": plan.data.info.name,
        "suite": plan.suite.name,
        "test_size": plan.n,
        "eval_seed": plan.suite.seed,
        "seeds": plan.seeds,
        "models": [s.name for s in plan.specs],
        "environment": {k: meta[k] for k in ("split", "device", "versions", "checkpoints", "date", "suite_file")},
        "cells": list(cell_stats(frame).values()),
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
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{path} is not a robustbench-sparse baseline (expected format {FORMAT!r})")
    for key in ("dataset", "suite", "seeds", "cells", "test_size", "eval_seed"):
        if key not in doc:
            raise UserError(f"baseline {path} lacks {key!r}; regenerate it with `rbs baseline`")
    return doc


@dataclass(frozen=True)
class CheckResult:
    regressions: pd.DataFrame
    improvements: pd.DataFrame
    missing: list[str]
    compared: int

    def passed(self, allow_missing: bool) -> bool:
        return self.regressions.empty and (allow_missing or not self.missing)


def compare(
    baseline: dict[str, Any], frame: pd.DataFrame, tolerance: float = 1.0, sigma: float | None = None
) -> CheckResult:
    """A cell regresses when its mean accuracy fell by more than the allowed drop, in points:
    `tolerance`, or with `sigma`, max(tolerance, sigma x the baseline's std over seeds)."""
    if tolerance < 0 or (sigma is not None and sigma < 0):
        raise UserError("--tolerance and --sigma must be >= 0")
    if sigma is not None and len(baseline["seeds"]) < 2:
        raise UserError("--sigma needs a baseline over several seeds (this one has one); use --tolerance")
    before = {(c["model"], c["evaluation"], float(c["strength"])): c for c in baseline["cells"]}
    now = cell_stats(frame)
    for key in before.keys() & now.keys():
        if before[key]["spec"] != now[key]["spec"]:
            raise UserError(
                f"the suite changed since the baseline: {key[1]} at {key[2]:g} was {before[key]['spec']}, "
                f"now {now[key]['spec']}; regenerate the baseline"
            )
    rows = []
    for key in sorted(before.keys() & now.keys(), key=lambda k: (k[0], k[1], k[2])):
        old, new = before[key]["accuracy"], now[key]["accuracy"]
        allowed = tolerance if sigma is None else max(tolerance, sigma * old["std"])
        rows.append({
            "model": key[0], "evaluation": key[1], "strength": key[2],
            "baseline %": _pm(old), "now %": _pm(new),
            "change (points)": round(new["mean"] - old["mean"], 2), "allowed drop": round(allowed, 2),
        })
    table = pd.DataFrame(rows, columns=["model", "evaluation", "strength", "baseline %", "now %",
                                        "change (points)", "allowed drop"])
    regressions = table[table["change (points)"] < -table["allowed drop"]].reset_index(drop=True)
    improvements = table[table["change (points)"] > table["allowed drop"]].reset_index(drop=True)
    missing = [f"{m} / {e} / {s:g}: in the baseline, not in this run" for m, e, s in sorted(before.keys() - now.keys())]
    missing += [f"{m} / {e} / {s:g}: in this run, not in the baseline" for m, e, s in sorted(now.keys() - before.keys())]
    return CheckResult(regressions, improvements, missing, len(table))


def _pm(acc: dict[str, Any]) -> str:
    return f"{acc['mean']:.1f}" if len(acc["per_seed"]) < 2 else f"{acc['mean']:.1f} ± {acc['std']:.1f}"
