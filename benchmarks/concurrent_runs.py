"""Two `rbs evaluate` processes on one home, against one: do they share the work?

Copies the trained checkpoints of a home into two fresh homes (empty result stores, empty caches),
runs the suite once in the first, then starts two processes at once in the second, and prints the
wall times, their ratio (target: at most 1.3) and how many records the shared store holds
(target: each cell once). Both homes' records are compared: they must be identical.

    python benchmarks/concurrent_runs.py --suite quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from robustbench_sparse.results import harness
from robustbench_sparse.runtime import Paths


def fresh_home(source: Paths, folder: Path) -> Path:
    shutil.copytree(source.home / "models", folder / "models")
    shutil.copytree(source.suites, folder / "attacks")
    return folder


def evaluate(home: Path, suite: str, dataset: str) -> subprocess.Popen:
    env = {**os.environ, "RBS_NO_PROGRESS": "1"}  # OMP_* settings of the caller are passed on
    return subprocess.Popen([sys.executable, "-m", "robustbench_sparse.cli", "evaluate", "--suite", suite,
                             "--dataset", dataset, "--home", str(home), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def timed(procs: list[subprocess.Popen]) -> float:
    started = time.perf_counter()
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"rbs evaluate failed ({p.returncode}): {err[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--dataset", default="mnist5k")
    args = parser.parse_args()
    source = Paths.default()
    with tempfile.TemporaryDirectory() as tmp:
        one, two = fresh_home(source, Path(tmp) / "one"), fresh_home(source, Path(tmp) / "two")
        single = timed([evaluate(one, args.suite, args.dataset)])
        both = timed([evaluate(two, args.suite, args.dataset) for _ in range(2)])
        the_plan = harness.plan(args.dataset, args.suite, device="cpu", home=two)
        keys = [c.key for c in the_plan.cells()]
        stores = [harness.open_store(Paths(h), args.dataset) for h in (one, two)]
        frames = [s.frame(keys).set_index("key")[["correct", "flags"]] for s in stores]
        print(f"suite {args.suite} on {args.dataset}: {len(keys)} cells")
        print(f"one process:          {single:.1f} s")
        print(f"two processes at once: {both:.1f} s (both exited 0)")
        print(f"ratio two / one = {both / single:.2f} (target <= 1.3)")
        print(f"records in the shared store: {stores[1].count()} (cells: {len(keys)})")
        print(f"records identical to the single run: {frames[0].equals(frames[1])}")
        busy = [s.frame(keys)["seconds"].sum() for s in stores]
        print(f"sum of per-cell compute seconds: one process {busy[0]:.1f} s, two processes {busy[1]:.1f} s "
              "(equal when no work is repeated and the processes do not slow each other down)")


if __name__ == "__main__":
    main()
