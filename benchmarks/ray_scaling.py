"""The quick suite's work on the local executor and on Ray with 1 and 2 workers, in one run.

Runs the `quick` suite's evaluations and transfer (its test size raised to --n images) on the
trained zoo of the current home, each configuration on a fresh result store and adversarial
cache:

- local: this process, torch on every core;
- ray-1 / ray-2: a private Ray with 1 or 2 CPUs, one torch thread per task.

For Ray, start-up (ray.init, and workers importing torch on a warm-up job) is timed apart from the
work. Prints each time, the speedups, and checks that ray-1 and ray-2 stored identical records.

    python benchmarks/ray_scaling.py --n 1000
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import pandas as pd

from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.execution.local import LocalExecutor
from robustbench_sparse.execution.ray_executor import RayExecutor
from robustbench_sparse.results import harness
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.results.transfer import run_transfer
from robustbench_sparse.runtime import Paths

WARM_UP = """
test_size = 50
[[evaluations]]
kind = "fgsm"
eps = [0.1]
"""


def work(plan: harness.Plan, folder: Path, executor: object) -> tuple[float, pd.DataFrame]:
    store, cache = ResultStore(folder / "results.sqlite"), ArtifactStore(folder / "cache")
    started = time.perf_counter()
    white = harness.run(plan, store, cache, executor)  # type: ignore[arg-type]
    moved = run_transfer(plan, store, executor, cache)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    frame = pd.concat([white, moved]).drop_duplicates("key").set_index("key")[["correct", "flags"]]
    return seconds, frame.sort_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dataset", default="mnist5k")
    args = parser.parse_args()
    paths = Paths.default()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        quick = re.sub(r"(?m)^test_size = \d+", f"test_size = {args.n}", (paths.suites / "quick.toml").read_text())
        (root / "quick-n.toml").write_text(quick)
        (root / "warm.toml").write_text(WARM_UP)
        plan = harness.plan(args.dataset, str(root / "quick-n.toml"), device="cpu", home=paths.home)
        warm = harness.plan(args.dataset, str(root / "warm.toml"), device="cpu", home=paths.home)
        print(f"quick suite on {plan.n} test images: {len(plan.cells())} cells + transfer, {len(plan.specs)} models")

        local_s, local = work(plan, root / "local", LocalExecutor())
        print(f"local (torch on every core): {local_s:.1f} s")
        times, frames = {}, {}
        for workers in (1, 2):
            started = time.perf_counter()
            executor = RayExecutor(workers=workers)
            harness.run(warm, ResultStore(root / f"warm{workers}.sqlite"), ArtifactStore(root / f"warm{workers}"),
                        executor)  # every worker imports torch and our code once
            startup = time.perf_counter() - started
            times[workers], frames[workers] = work(plan, root / f"ray{workers}", executor)
            executor.close()
            print(f"ray-{workers} (1 thread per task): start-up {startup:.1f} s, work {times[workers]:.1f} s")
        print(f"speedup ray-2 / ray-1 = {times[1] / times[2]:.2f} (target >= 1.7)")
        print(f"speedup ray-2 / local = {local_s / times[2]:.2f} (target >= 1.0)")
        print(f"ray-1 and ray-2 records identical: {frames[1].equals(frames[2])}")
        # torch's thread count changes float rounding: local (all cores) may differ from one thread per task
        print(f"ray and local (all cores) records identical: {frames[2].equals(local)}")


if __name__ == "__main__":
    main()
