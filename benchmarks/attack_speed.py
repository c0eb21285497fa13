"""The harness's fast attacks against the plain way, on the standard suite's four gradient attacks.

In one process, on the same trained models (seed 0), the same test images and the same batches:

(a) plain: one torchattacks call per batch and eps (FGSM, BIM, MIFGSM, PGD with the suite's
    parameters), every image attacked at every eps for every step; the batch seeds are the
    harness's, so PGD's random start is the one the harness draws;
(b) fast: `harness.run` on the same evaluations with sweep pruning and per-image early stopping
    (the defaults), fresh store and cache.

The two run model by model, (a) then (b) on each, so that drift in the machine's load hits both.

eps = 0 is clean accuracy for both and is left out of (a). The last line is
`speedup=<(a) seconds / (b) seconds> max_excess_points=<largest (b) - (a) accuracy, in points, over
every model, attack and eps>`; the target is speedup >= 2 with max_excess_points <= 0.5.

    python benchmarks/attack_speed.py [--models dense kwinner] [--n 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.execution.executor import batch_seed
from robustbench_sparse.perturb.attacks import attack_of
from robustbench_sparse.results import harness
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.runtime import Paths, eval_mode

GRADIENT_ATTACKS = ("fgsm", "ifgsm", "mifgsm", "pgd")


def plain(plan: harness.Plan, ws: harness.Workspace) -> pd.DataFrame:
    """(a): what a user writes by hand with torchattacks, one call per batch and eps."""
    x, y = plan.test_set()
    batch = plan.suite.batch_size
    rows = []
    for spec in plan.specs:
        model = ws.model(spec.name, 0)
        with eval_mode(model):
            for evaluation in plan.suite.evaluations[1:]:
                for eps in evaluation.strengths:
                    if eps == 0:
                        continue
                    params = evaluation.params_at(eps)
                    draw = evaluation.draw_spec(eps)
                    correct = 0
                    for start in range(0, len(x), batch):
                        xb, yb = x[start : start + batch], y[start : start + batch]
                        seed = batch_seed(plan.suite.seed, draw, start, batch)
                        with torch.random.fork_rng():
                            torch.manual_seed(seed)
                            adv = attack_of(evaluation.kind).build("torchattacks", model, params, seed)(xb, yb)
                        with torch.no_grad():
                            correct += int((model(adv).argmax(1) == yb).sum())
                    rows.append({"model": spec.name, "evaluation": evaluation.name, "strength": eps,
                                 "accuracy": correct / len(x)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="default: the whole zoo")
    parser.add_argument("--n", type=int, default=None, help="test images (default: the standard suite's)")
    args = parser.parse_args()

    paths = Paths.default()
    plan = harness.plan("mnist5k", "standard", args.models, device="cpu", home=paths.home)
    suite = plan.suite
    evaluations = (suite.evaluations[0], *(e for e in suite.evaluations if e.kind in GRADIENT_ATTACKS))
    suite = dataclasses.replace(suite, evaluations=evaluations, test_size=args.n or suite.test_size)
    plan = dataclasses.replace(plan, setup=dataclasses.replace(plan.setup, suite=suite))
    print(f"{len(plan.specs)} models, {plan.n} images, batch {suite.batch_size}, "
          f"{torch.get_num_threads()} threads; attacks: {', '.join(e.name for e in evaluations[1:])}")

    # Model by model, (a) then (b): a drift in the machine's load between the two would otherwise
    # count against whichever ran second.
    plain_s = fast_s = 0.0
    slow_parts, fast_parts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in plan.specs:
            one = dataclasses.replace(plan, setup=dataclasses.replace(plan.setup, specs=[spec]))
            ws = harness.workspace(one, ArtifactStore(Path(tmp) / "unused"))
            started = time.perf_counter()
            slow_parts.append(plain(one, ws))
            plain_s += time.perf_counter() - started
            started = time.perf_counter()
            fast_parts.append(harness.run(one, ResultStore(Path(tmp) / "fast.sqlite"), ArtifactStore(Path(tmp) / "cache")))
            fast_s += time.perf_counter() - started
            print(f"{spec.name}: done", flush=True)
    slow, frame = pd.concat(slow_parts), pd.concat(fast_parts)

    fast = frame[frame["strength"] > 0][["model", "evaluation", "strength", "accuracy"]]
    both = slow.merge(fast, on=["model", "evaluation", "strength"], suffixes=("_plain", "_fast"))
    assert len(both) == len(slow), "the fast run is missing cells"
    both["excess"] = (both["accuracy_fast"] - both["accuracy_plain"]) * 100
    table = both.pivot_table(index=["model", "evaluation"], columns="strength", values="excess")
    print("\nfast - plain accuracy, points (negative: the fast way found more adversarial examples)")
    print(table.round(1).to_string())
    print(f"\nplain {plain_s:.1f} s, fast {fast_s:.1f} s (including its clean cells, records and cache writes)")
    print(f"speedup={plain_s / fast_s:.2f} max_excess_points={both['excess'].max():.2f}")


if __name__ == "__main__":
    main()
