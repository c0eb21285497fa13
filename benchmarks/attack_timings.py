"""Seconds per image, per evaluation and model, read from records a run wrote (nothing is rerun).

Every record carries the seconds its cell took (crafting its set on its own model, then scoring
it). This prints, per evaluation (rows) and model (columns), the seconds per test image and eps:
the cell's seconds over its test images, averaged over the eps of the sweep and over seeds. A
pruned sweep attacks only the images a smaller eps left correct, and early stopping ends an image
at its first misclassified iterate, so these are the suite's own costs, not an attack's full cost.
The last lines give the records' span (first cell finished to last) as the wall time of the run
that made them, when one run made them all.

    python benchmarks/attack_timings.py reports/mnist5k/results.jsonl
    python benchmarks/attack_timings.py reports/mnist5k/standard/records.json
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

import pandas as pd

from robustbench_sparse.results.exchange import read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="results.jsonl or a report's records.json")
    args = parser.parse_args()

    records = pd.DataFrame([r for f in args.files for r in read_records(f)])
    records = records[(records["source"] == records["model"]) & (records["strength"] > 0)]
    if records.empty:
        raise SystemExit("no white-box records with a positive strength in these files")
    records = records.assign(per_image=records["seconds"] / records["n"])
    table = records.pivot_table(index="evaluation", columns="model", values="per_image", aggfunc="mean")
    print("seconds per test image and eps (mean over the sweep's eps and the seeds)")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    dates = records["date"].map(datetime.fromisoformat)
    print(f"\n{len(records)} cells, {records['seconds'].sum() / 3600:.2f} task-hours; records span "
          f"{(dates.max() - dates.min()).total_seconds() / 60:.1f} min (first finished {dates.min():%Y-%m-%d %H:%M}, "
          f"last {dates.max():%H:%M} UTC)")


if __name__ == "__main__":
    main()
