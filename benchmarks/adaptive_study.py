"""How to set the adaptive attacks for MNIST-scale eps, measured on the zoo (mnist5k, seed 0).

On the first `--n` test images of the masking suite, for each model and eps, prints the masking
suite's plain PGD accuracy (40 steps of 0.01), then:

- `--study fd`: FD-PGD's accuracy and seconds per image for each (sigma, samples, tile) on a
  grid, one stage of `--steps` steps of 0.01. The cost grows with samples (2 forward passes per sample per
  step) and shrinks with early stopping (an image stops at its first misclassified iterate);
- `--study surrogate`: PGD with the k-winners backward through the smooth surrogate
  (bpda = "sigmoid:T") for each temperature T, beside BPDA through ReLU and the identity.

Each attack runs in the CPU regime of a task (one torch thread). The suite's settings are the
cheapest within noise of the grid's best (docs/adaptive-attacks.md gives the measured tables).

    python benchmarks/adaptive_study.py --study fd [--models dense kwinner] [--n 40] [--eps 0.1 0.2]
    python benchmarks/adaptive_study.py --study surrogate [--n 100]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from robustbench_sparse.evaluation.kinds import resolve
from robustbench_sparse.perturb.attacks import craft
from robustbench_sparse.results import harness
from robustbench_sparse.runtime import Paths, eval_mode, regime_block


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean() * 100)


def trials(args: argparse.Namespace, eps: float) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, kind, parameters) of each setting the study tries at eps."""
    if args.study == "fd":
        return [(f"sigma={sigma:g}/samples={samples}/tile={tile}", "fd-pgd",
                 {"eps": eps, "sigma": sigma, "samples": samples, "stages": 1, "steps": args.steps, "tile": tile})
                for sigma in args.sigma for samples in args.samples for tile in args.tile]
    pgd = {"eps": eps, "steps": 40, "alpha": 0.01}
    return ([("relu", "pgd", {**pgd, "bpda": "relu"}), ("identity", "pgd", {**pgd, "bpda": "identity"})]
            + [(f"T={t:g}", "pgd", {**pgd, "bpda": f"sigmoid:{t:g}"}) for t in args.temperature])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=["fd", "surrogate"], required=True)
    parser.add_argument("--models", nargs="*", default=["dense", "kwinner", "kwinner-boost"])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--eps", type=float, nargs="*", default=[0.1, 0.2])
    parser.add_argument("--sigma", type=float, nargs="*", default=[0.02, 0.05, 0.1])
    parser.add_argument("--samples", type=int, nargs="*", default=[10, 40])
    parser.add_argument("--tile", type=int, nargs="*", default=[1])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--temperature", type=float, nargs="*", default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    args = parser.parse_args()

    paths = Paths.default()
    plan = harness.plan("mnist5k", "masking", args.models, device="cpu", home=paths.home)
    ws = harness.workspace(plan)
    x, y = plan.test_set()
    x, y = x[: args.n], y[: args.n]
    print(f"{len(x)} images; accuracy %, seconds per image")
    with regime_block():
        for spec in plan.specs:
            model = ws.model(spec.name, 0)
            with eval_mode(model):
                for eps in args.eps:
                    pgd = resolve("pgd", {"eps": eps, "steps": 40, "alpha": 0.01}, plan.info)
                    line = [f"{spec.name} eps={eps:g}: clean {accuracy(model, x, y):.0f}, "
                            f"PGD {accuracy(model, craft(model, 'pgd', pgd, x, y, seed=0), y):.0f}"]
                    for label, kind, given in trials(args, eps):
                        params = resolve(kind, given, plan.info)
                        started = time.perf_counter()
                        adv = craft(model, kind, params, x, y, seed=0)
                        seconds = (time.perf_counter() - started) / len(x)
                        line.append(f"{label}: {accuracy(model, adv, y):.0f} ({seconds:.2f} s)")
                    print("; ".join(line), flush=True)


if __name__ == "__main__":
    main()
