"""Model cards: reports/<dataset>/cards/<model>.json, one entry per run reported, in the spirit of
RobustBench's model-info files (schema: schemas/card.schema.json)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from robustbench_sparse.analysis.diagnostics import most_effective
from robustbench_sparse.analysis.tables import paper_pixel
from robustbench_sparse.evaluation.cells import environment
from robustbench_sparse.report.tables import corruption_error, worst_case_per_seed
from robustbench_sparse.results import harness
from robustbench_sparse.runtime import atomic_write_text, library_versions
from robustbench_sparse.zoo.checkpoints import EXTERNAL

CARD_SCHEMA = Path(__file__).parent / "schemas" / "card.schema.json"
CARD_FORMAT = "robustbench-sparse model card 1"


def _mean_std(values: pd.Series) -> tuple[float, float | None]:
    mean = float(values.mean())
    return round(mean, 2), (round(float(values.std(ddof=1)), 2) if len(values) > 1 else None)


def card_entry(plan: harness.Plan, model: str, white: pd.DataFrame, everything: pd.DataFrame,
               checks: pd.DataFrame, tests: pd.DataFrame) -> dict[str, object]:
    """One run's numbers for one model."""
    own = white[(white["model"] == model) & (white["source"] == model)]
    clean = own[own["kind"] == "clean"].groupby("seed")["accuracy"].mean() * 100
    worst = worst_case_per_seed(everything[everything["model"] == model])
    best = most_effective(everything[everything["model"] == model])
    robust = []
    for eps, rows in worst.groupby("strength"):
        mean, std = _mean_std(rows["accuracy"] * 100)
        strongest = best[best["strength"] == eps]["strongest single attack"]
        robust.append({"eps": float(eps), "accuracy": mean, "std": std, "attacks": int(rows["attacks"].max()),
                       "strongest_single_attack": ", ".join(dict.fromkeys(strongest)) or None})
    pixel = paper_pixel(own)
    noise = pixel.groupby("seed")["correct"].sum() if not pixel.empty else pd.Series(dtype=float)
    mine = tests[tests["model"] == model]
    clean_mean, clean_std = _mean_std(clean) if not clean.empty else (None, None)
    return {
        "run": plan.setup.run_name,
        "suite_file": harness.suite_file(plan),
        "test_size": plan.n,
        "test_fingerprint": plan.fingerprint,
        "seeds": [s for s in plan.seeds if plan.has(model, s)],
        "checkpoints": {f"seed{s}": h for (m, s), h in plan.checkpoints.items() if m == model},
        "clean_accuracy": clean_mean,
        "clean_accuracy_std": clean_std,
        "robust_accuracy": robust,
        "noise_score": float(noise.mean()) if not noise.empty else None,
        "corruption_error": corruption_error(own),
        "masking_checks": {c: ("fired" if "fired" in set(st) else "passed" if "passed" in set(st) else "not run")
                           for c, st in checks[checks["model"] == model].groupby("check", sort=False)["status"]},
        "significant_differences": [
            {"evaluation": r["evaluation"], "strength": float(r["strength"]), "difference": round(float(r["difference"]), 2),
             "p_holm": float(r["p (Holm)"]), "test": r["test"]} for r in mine[mine["significant"]].to_dict("records")],
        "versions": library_versions(),
        "code": environment()["code"],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_cards(plan: harness.Plan, white: pd.DataFrame, everything: pd.DataFrame, checks: pd.DataFrame,
                tests: pd.DataFrame) -> list[Path]:
    """reports/<dataset>/cards/<model>.json: per model, this run's entry merged with the entries
    other runs wrote before."""
    folder = plan.paths.reports(plan.info.name) / "cards"
    paths = []
    for spec in plan.specs:
        if spec.name not in set(white["model"]):
            continue
        if plan.setup.label and spec.family != EXTERNAL:
            continue  # a run with a model of one's own leaves the zoo's cards as they are
        path = folder / f"{spec.name}.json"
        doc = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if doc.get("format") != CARD_FORMAT:
            doc = {}
        runs = doc.get("runs", {})
        runs[plan.setup.run_name] = card_entry(plan, spec.name, white, everything, checks, tests)
        architecture = ({"family": EXTERNAL, "class": spec.description} if spec.family == EXTERNAL
                        else {k: (v if isinstance(v, int | float | str | bool) else str(v))
                              for k, v in spec.summary().items() if k != "model"})
        doc = {"format": CARD_FORMAT, "name": spec.name, "dataset": plan.info.name,
               "description": spec.description, "architecture": architecture, "runs": dict(sorted(runs.items()))}
        atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths
