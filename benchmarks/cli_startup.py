"""How long `rbs --help` and `rbs zoo` take, as wall time over several runs (median).

    python benchmarks/cli_startup.py                      # this checkout
    python benchmarks/cli_startup.py --against ../old     # and a checkout of an earlier commit

Each command runs as `python -m robustbench_sparse.cli ...` with the checkout first on
PYTHONPATH, so both trees run with the same interpreter and libraries; the ratio is measured in
one run, on one machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
COMMANDS = (["--help"], ["zoo"])


def median_seconds(tree: Path, args: list[str], runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "RBS_NO_PROGRESS": "1", "RBS_HOME": str(tree)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "robustbench_sparse.cli", *args], env=env, cwd=tree, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout to time beside this one")
    parser.add_argument("--runs", type=int, default=7)
    options = parser.parse_args()
    for args in COMMANDS:
        now = median_seconds(HERE, args, options.runs)
        line = f"rbs {' '.join(args)}: {now:.2f} s"
        if options.against:
            before = median_seconds(options.against.resolve(), args, options.runs)
            line += f" (against {before:.2f} s: {before / now:.1f}x faster)"
        print(line)


if __name__ == "__main__":
    main()
