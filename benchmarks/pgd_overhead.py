"""The harness's cost over a bare torchattacks loop, for one PGD evaluation of one model.

Both run in this process on the same trained model, the same test images and the same batch size,
alternating, several times; the ratio of the medians is printed (target: at most 1.10).

    python benchmarks/pgd_overhead.py --model dense --n 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchattacks

from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.results import harness
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.runtime import Paths
from robustbench_sparse.zoo.checkpoints import load_checkpoint

SUITE = """
test_size = {n}
batch_size = {batch}
[[evaluations]]
kind = "pgd"
eps = [0.3]
steps = 40
alpha = 0.01
"""


def bare_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> int:
    """What a user would write by hand with torchattacks."""
    model.eval()
    attack = torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=True)
    correct = 0
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        adv = attack(xb, yb)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    return correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dense")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    paths = Paths.default()
    with tempfile.TemporaryDirectory() as tmp:
        suite_file = Path(tmp) / "pgd-only.toml"
        suite_file.write_text(SUITE.format(n=args.n, batch=args.batch))
        plan = harness.plan("mnist5k", str(suite_file), [args.model], device="cpu", home=paths.home)
        spec = plan.specs[0]
        model, _ = load_checkpoint(paths, spec, plan.info, 0)
        x, y = plan.test_set()

        harness_s, bare_s = [], []
        for i in range(args.repeats):
            started = time.perf_counter()
            # fresh store and adversarial cache: the harness crafts (and writes) the set every time
            frame = harness.run(plan, ResultStore(Path(tmp) / f"run{i}.sqlite"), ArtifactStore(Path(tmp) / f"cache{i}"))
            harness_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            bare_correct = bare_loop(model, x, y, args.batch)
            bare_s.append(time.perf_counter() - started)
        pgd = frame[frame["kind"] == "pgd"].iloc[0]

    h, b = statistics.median(harness_s), statistics.median(bare_s)
    print(f"model {args.model}, PGD-40 eps=0.3, {args.n} images, batch {args.batch}, {args.repeats} repeats")
    print(f"harness (incl. clean cell, records, checks): median {h:.2f} s  {[round(s, 2) for s in harness_s]}")
    print(f"bare torchattacks loop:                      median {b:.2f} s  {[round(s, 2) for s in bare_s]}")
    print(f"accuracy: harness {pgd['accuracy']:.3f}, bare loop {bare_correct / args.n:.3f}")
    print(f"ratio harness / bare = {h / b:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
