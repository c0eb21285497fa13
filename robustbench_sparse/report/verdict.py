"""The verdict at the top of a report: per model, how it differs from the reference, in one table.

Each difference carries the significance the other tables use: `stats.compare_to_reference`
(Holm over every comparison of the report) and `stats.compare_noise_scores` (Holm over the models).
"""

from __future__ import annotations

import pandas as pd

from robustbench_sparse.report.data import RunData
from robustbench_sparse.report.registry import Section, Table
from robustbench_sparse.report.tables import WORST, at, mce_column

# Models whose clean accuracy is further than this from the reference's are named under the verdict:
# the fair-recipe rule of the full-size study (models/zoo.toml records the recipe search).
CLEAN_GAP_POINTS = 1.5
# Each check's section of the docs; the report lives at reports/<dataset>/<run>/.
MASKING_DOC = "../../../docs/masking.md"
REFERENCE_CELL = "ref"
HOW = {"McNemar exact": "McNemar's exact test on the same {n} test images", "Welch t": "Welch's t-test over training seeds"}


def check_link(check: str) -> str:
    """A masking check ("5. BPDA beats plain gradients") linked to its section of docs/masking.md."""
    number = check.split(".", 1)[0].strip()
    return f"[check {check}]({MASKING_DOC}#check-{number})"


def verdict_frame(tests: pd.DataFrame, scores: pd.DataFrame, models: list[str], reference: str,
                  eps: float | None = None, mce: pd.Series | None = None,
                  fired: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One row per model (the reference's left blank): the clean, noise-score and worst-case (at `eps`)
    differences from the reference with their significance, the mCE, how many comparisons under a
    perturbation are significantly higher or lower, the largest of those, and the masking checks
    that fired. `tests`: `comparisons`; `scores`: `stats.compare_noise_scores`."""
    fired = fired or {}
    tested = tests[tests["p"].notna()] if not tests.empty else tests
    scored = scores.set_index("model") if not scores.empty else pd.DataFrame()
    rows = []
    for model in models:
        row: dict[str, object] = {"model": model}
        mine = tested[tested["model"] == model] if not tested.empty else tested
        clean = mine[mine["evaluation"] == "clean"] if not mine.empty else mine
        row["clean difference"] = float(clean["difference"].iloc[0]) if len(clean) else float("nan")
        row["clean significant"] = bool(clean["significant"].iloc[0]) if len(clean) else False
        row["clean beyond the fair-recipe rule"] = bool(abs(row["clean difference"]) > CLEAN_GAP_POINTS)
        known = model in scored.index and pd.notna(scored.loc[model, "p"])
        row["noise score difference"] = float(scored.loc[model, "difference"]) if known else float("nan")
        row["noise score significant"] = bool(scored.loc[model, "significant"]) if known else False
        if mce is not None:
            row["mCE"] = float(mce.get(model, float("nan")))
        if eps is not None:
            worst = mine[(mine["evaluation"] == WORST) & (mine["strength"] == eps)] if not mine.empty else mine
            row["worst case difference"] = float(worst["difference"].iloc[0]) if len(worst) else float("nan")
            row["worst case significant"] = bool(worst["significant"].iloc[0]) if len(worst) else False
        robust = mine[mine["evaluation"] != "clean"] if not mine.empty else mine
        sig = robust[robust["significant"]] if not robust.empty else robust
        row["higher"] = int((sig["difference"] > 0).sum()) if len(sig) else 0
        row["lower"] = int((sig["difference"] < 0).sum()) if len(sig) else 0
        row["tested"] = len(robust)
        top = sig.loc[sig["difference"].abs().idxmax()] if len(sig) else None
        row["largest difference"] = float(top["difference"]) if top is not None else float("nan")
        row["largest at"] = (f"{top['evaluation']} at {at(str(top['param']), float(top['strength']))}"
                             if top is not None else "")
        row["masking checks fired"] = "; ".join(fired.get(model, []))
        rows.append(row)
    return pd.DataFrame(rows)


def shown(frame: pd.DataFrame, reference: str, eps: float | None) -> pd.DataFrame:
    """The verdict as printed: signed differences, " *" where significant, links to the checks."""
    def signed(value: float, significant: bool, digits: int) -> str:
        return "" if pd.isna(value) else f"{value:+.{digits}f}" + (" *" if significant else "")

    out = []
    for r in frame.to_dict("records"):
        ref = r["model"] == reference
        row = {"model": r["model"],
               "clean Δ (points)": REFERENCE_CELL if ref else signed(r["clean difference"], r["clean significant"], 1),
               "noise score Δ (images)": REFERENCE_CELL if ref else signed(
                   r["noise score difference"], r["noise score significant"], 0)}
        if "mCE" in r:
            row[mce_column(reference)] = "" if pd.isna(r["mCE"]) else f"{r['mCE']:.1f}"
        if eps is not None:
            row[f"worst case Δ at ε={eps:g} (points)"] = REFERENCE_CELL if ref else signed(
                r["worst case difference"], r["worst case significant"], 1)
        row["significant: higher / lower of tested"] = (
            REFERENCE_CELL if ref else f"{r['higher']} / {r['lower']} of {r['tested']}" if r["tested"]
            else "not compared")
        row["largest significant Δ"] = ("" if pd.isna(r["largest difference"])
                                        else f"{r['largest difference']:+.1f} ({r['largest at']})")
        checks = [c for c in r["masking checks fired"].split("; ") if c]
        row["masking warning"] = "; ".join(check_link(c) for c in checks)
        out.append(row)
    return pd.DataFrame(out)


def sentences(frame: pd.DataFrame, tests: pd.DataFrame, scores: pd.DataFrame, reference: str, n: int) -> list[str]:
    """At most three sentences: how the table was tested, the clean-accuracy gaps beyond the
    fair-recipe rule, and what a masking warning means."""
    tested = tests[tests["p"].notna()] if not tests.empty else tests
    scored = scores[scores["p"].notna()] if not scores.empty else scores
    how = " and ".join(HOW.get(t, t).format(n=n) for t in sorted(set(tested["test"]))) if len(tested) else ""
    over = (f"over the {len(scored)} models" if len(scored) > 1 else "for one model") if len(scored) else ""
    parts = [f"Each model minus {reference} (the reference row, `{REFERENCE_CELL}`): accuracy in points, the noise score "
             "in images counted correct"
             + (f", mCE with 100 = as {reference} (no test of its own: its corruptions are among the comparisons "
                "counted)" if "mCE" in frame.columns else "")
             + "; * = significant at α = 0.05"
             + (f", Holm-corrected over the {len(tested)} comparisons of Differences from {reference} ({how})"
                if len(tested) else "")
             + (f" and, for the noise score, {over}" if over else "") + "."]
    beyond = frame[(frame["model"] != reference) & frame["clean beyond the fair-recipe rule"]]
    if not beyond.empty:
        parts.append(f"Clean accuracy not within {CLEAN_GAP_POINTS:g} points of {reference}'s (mean over seeds): "
                     + ", ".join(f"{r['model']} ({r['clean difference']:+.1f})" for r in beyond.to_dict("records"))
                     + f", so their recipes do not match {reference}'s and a robustness difference may be one of "
                     "training.")
    if frame["masking checks fired"].astype(bool).any():
        parts.append("A masking warning: that check fired for the model, so its numbers under attack may "
                     "overstate its robustness (the link says why).")
    return parts


def verdict_section(data: RunData) -> Section:
    """The answer the report opens with."""
    title = "Verdict"
    tested = data.tests[data.tests["p"].notna()] if not data.tests.empty else data.tests
    if tested.empty and (data.scores.empty or not data.scores["p"].notna().any()):
        return Section("verdict", title, (f"Only {data.models[0] if data.models else 'no model'} was evaluated, or no "
                                          "comparison could be tested: there is nothing to compare.",), lead=True)
    mce_name = mce_column(data.reference)
    mce = (data.corrupted.set_index("model")[mce_name]
           if not data.corrupted.empty and mce_name in data.corrupted.columns else None)
    eps = data.headline_eps
    frame = verdict_frame(data.tests, data.scores, data.models, data.reference, eps, mce, data.fired)
    return Section("verdict", title, tuple(sentences(frame, data.tests, data.scores, data.reference, data.plan.n)),
                   (Table(shown(frame, data.reference, eps), "verdict", frame),), lead=True)
