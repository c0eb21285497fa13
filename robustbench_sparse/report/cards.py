"""Model cards: reports/<dataset>/cards/<model>.json, one entry per run reported, in the spirit of
RobustBench's model-info files (schema: schemas/card.schema.json)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_sparse.analysis.diagnostics import most_effective
from robustbench_sparse.analysis.tables import paper_pixel
from robustbench_sparse.evaluation.cells import environment
from robustbench_sparse.report.tables import corruption_error, worst_case_per_seed
from robustbench_sparse.results import harness
from robustbench_sparse.runtime import UserError, atomic_write_text, library_versions
from robustbench_sparse.zoo.checkpoints import EXTERNAL
from robustbench_sparse.zoo.spec import ModelSpec

CARD_SCHEMA = Path(__file__).parent / "schemas" / "card.schema.json"
CARD_FORMAT = "robustbench-sparse model card 1"


def _mean_std(values: pd.Series) -> tuple[float, float | None]:
    mean = float(values.mean())
    return round(mean, 2), (round(float(values.std(ddof=1)), 2) if len(values) > 1 else None)


def card_entry(plan: harness.Plan, model: str, white: pd.DataFrame, everything: pd.DataFrame,
               checks: pd.DataFrame, tests: pd.DataFrame, meta: Mapping[str, Any] | None = None,
               date: str | None = None) -> dict[str, object]:
    """One run's numbers for one model. `meta` (the run's records export metadata) gives the
    versions and code that computed them and `date` the run's date; without them, this
    environment's and now."""
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
        "versions": dict(meta["versions"]) if meta else library_versions(),
        "code": meta["code"] if meta else environment()["code"],
        "date": date or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _architecture(spec: ModelSpec) -> dict[str, object]:
    if spec.family == EXTERNAL:
        return {"family": EXTERNAL, "class": spec.description}
    return {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in spec.summary().items()
            if k != "model"}


def check_architectures(plan: harness.Plan) -> None:
    """For a plan made from its exports: every model's card describes it as the zoo does now. The
    records were computed on the checkpoints the card describes, and the rebuilt card would
    otherwise show the zoo's present settings beside them."""
    folder = plan.paths.reports(plan.info.name) / "cards"
    for spec in plan.specs:
        path = folder / f"{spec.name}.json"
        if spec.family == EXTERNAL or not path.exists():
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        before, now = doc.get("architecture"), _architecture(spec)
        if doc.get("format") == CARD_FORMAT and before is not None and before != now:
            changed = ", ".join(f"{k} {before.get(k)!r} there, {now.get(k)!r} here"
                                for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k))
            raise UserError(f"{plan.paths.zoo_spec} describes {spec.name} otherwise than its card {path} ({changed}); "
                            "its recorded numbers are of the card's model: restore the zoo's entry, or train and "
                            "evaluate it")


def write_cards(plan: harness.Plan, white: pd.DataFrame, everything: pd.DataFrame, checks: pd.DataFrame,
                tests: pd.DataFrame, meta: Mapping[str, Any] | None = None, date: str | None = None) -> list[Path]:
    """reports/<dataset>/cards/<model>.json: per model, this run's entry merged with the entries
    other runs wrote before. An entry that would change only in its date is kept as it is."""
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
        entry = card_entry(plan, spec.name, white, everything, checks, tests, meta, date)
        before = runs.get(plan.setup.run_name)
        if not (isinstance(before, dict) and {k: v for k, v in before.items() if k != "date"}
                == {k: v for k, v in json.loads(json.dumps(entry)).items() if k != "date"}):
            runs[plan.setup.run_name] = entry
        doc = {"format": CARD_FORMAT, "name": spec.name, "dataset": plan.info.name,
               "description": spec.description, "architecture": _architecture(spec), "runs": dict(sorted(runs.items()))}
        text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
        paths.append(path)
    return paths
