"""What the portable CPU regime costs: training and the quick suite, pinned against torch's fastest.

Two configurations, each a fresh `rbs` process on a fresh home (the zoo's recipes for mnist5k,
every model for one epoch, so the run stays short; the quick suite on those models):

- native: `RBS_CPU_REGIME=native` (one process), torch's own choices (a thread per core, oneDNN
  convolutions, the kernels and MKL branch of this CPU): the fastest setting and how the suite ran
  before the regime; its weights depend on the machine;
- portable: the default regime (one thread per task, torch's im2col + GEMM convolutions, AVX2
  kernels, MKL's compatible branch) on the default local pool (one worker per core).

Prints the wall time of each step and the ratios portable / native, measured in one run, plus
whether the two regimes' checkpoints differ (they should: only the portable ones are the same on
every machine).

    python benchmarks/determinism_cost.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from robustbench_sparse.runtime import REPO_ROOT

CONFIGURATIONS = {
    "native": ({"RBS_CPU_REGIME": "native"}, []),
    "portable": ({}, []),
}


def _home(root: Path, epochs: int) -> Path:
    (root / "models").mkdir(parents=True)
    zoo = (REPO_ROOT / "models" / "zoo.toml").read_text()
    (root / "models" / "zoo.toml").write_text(re.sub(r"(?m)^epochs = \d+", f"epochs = {epochs}", zoo))
    shutil.copytree(REPO_ROOT / "attacks", root / "attacks")
    return root


def _timed(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "robustbench_sparse.cli", *args], check=True, capture_output=True,
                   env={**os.environ, "RBS_NO_PROGRESS": "1", **env})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per model (default 1)")
    args = parser.parse_args()
    times: dict[str, dict[str, float]] = {}
    hashes: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (env, options) in CONFIGURATIONS.items():
            home = _home(Path(tmp) / name, args.epochs)
            common = ["--home", str(home), "--device", "cpu", *options]
            times[name] = {"train": _timed(env, "train", *common),
                           "quick suite": _timed(env, "evaluate", "--suite", "quick", *common)}
            hashes[name] = {json.loads(m.read_text())["model"]: json.loads(m.read_text())["sha256"][:12]
                            for m in sorted((home / "models" / "mnist5k").glob("*.json"))}
            print(name, {k: f"{v:.1f} s" for k, v in times[name].items()}, flush=True)
    for step in ("train", "quick suite"):
        print(f"{step}: portable / native = {times['portable'][step] / times['native'][step]:.2f}")
    same = sum(hashes["native"][m] == hashes["portable"][m] for m in hashes["native"])
    print(f"checkpoints equal across the two regimes: {same} of {len(hashes['native'])}")


if __name__ == "__main__":
    main()
