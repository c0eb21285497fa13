"""Choose a training recipe on the validation split: a small, documented search anyone can re-run.

Each candidate is a set of recipe overrides (learning rate, momentum, epochs, first-epoch batch)
applied to one zoo model's spec for the dataset. Each is trained with the zoo's own `train_model`
on the training images minus the seeded validation split, and scored on that validation split
only: the test set is never read for choosing anything. The script prints one line per candidate
and a table at the end; copy the table into a comment in models/zoo.toml with the recipe chosen.

Candidates run in parallel processes (`--workers`), one torch thread each.

    python benchmarks/recipe_search.py --dataset fashion-mnist --model kwinner-boost \
        --candidate "" --candidate "lr=0.01,momentum=0.9,first_epoch_batch_size=64,epochs=15"

An empty candidate is the zoo's recipe as it stands.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from robustbench_sparse.data.datasets import DATASETS, load_dataset
from robustbench_sparse.runtime import Paths
from robustbench_sparse.training.train import train_model, validation_accuracy
from robustbench_sparse.zoo.spec import load_zoo

# The keys a candidate may change: the recipe, not the network.
RECIPE_KEYS = {"lr": float, "momentum": float, "lr_gamma": float, "epochs": int, "batch_size": int,
               "first_epoch_batch_size": int}


def parse_candidate(text: str) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = (p.strip() for p in part.partition("="))
        if key not in RECIPE_KEYS:
            raise ValueError(f"unknown recipe key {key!r}; valid: {', '.join(sorted(RECIPE_KEYS))}")
        try:
            out[key] = RECIPE_KEYS[key](value)
        except ValueError:
            raise ValueError(f"{key} needs a {RECIPE_KEYS[key].__name__} value (key=value), not {value!r}") from None
    return out


def run(model: str, dataset: str, overrides: dict[str, float | int], seed: int) -> tuple[float, float]:
    torch.set_num_threads(1)
    spec = load_zoo(Paths.default().zoo_spec)[model][dataset]
    spec = dataclasses.replace(spec, **overrides)
    data = load_dataset(dataset)
    if not len(data.val_y):
        raise SystemExit(f"{dataset} has no validation split; a recipe search needs one")
    started = time.perf_counter()
    net = train_model(spec, data, seed, torch.device("cpu"))
    seconds = time.perf_counter() - started
    accuracy = validation_accuracy(net, data, torch.device("cpu"))
    assert accuracy is not None
    return 100 * accuracy, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", action="append", required=True, help="zoo model (repeatable)")
    parser.add_argument("--candidate", action="append", default=None,
                        help='recipe overrides "key=value,...", repeatable; "" is the zoo recipe')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    candidates = args.candidate if args.candidate is not None else [""]
    jobs = [(m, c) for m in args.model for c in candidates]
    if args.dataset not in DATASETS:
        parser.error(f"unknown dataset {args.dataset}; valid: {', '.join(DATASETS)}")
    zoo = load_zoo(Paths.default().zoo_spec)
    unknown = [m for m in args.model if args.dataset not in zoo.get(m, {})]
    if unknown:
        parser.error(f"no zoo model {', '.join(unknown)} for {args.dataset}; valid: "
                     + ", ".join(m for m, per in zoo.items() if args.dataset in per))
    try:
        parsed = {c: parse_candidate(c) for c in candidates}
    except ValueError as err:
        parser.error(str(err))  # exit code 2, before any training
    print(f"{len(jobs)} trainings on {args.dataset}'s validation split, seed {args.seed}, "
          f"{args.workers} processes of one thread", flush=True)
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [(m, c, pool.submit(run, m, args.dataset, parsed[c], args.seed)) for m, c in jobs]
        for model, candidate, future in futures:
            accuracy, seconds = future.result()
            rows.append((model, candidate or "(zoo recipe)", accuracy, seconds))
            print(f"{model:16} {candidate or '(zoo recipe)':60} val acc {accuracy:6.2f}%  {seconds:6.0f} s", flush=True)
    print("\n| model | recipe overrides | val acc % | train s (1 thread) |\n|---|---|---|---|")
    for model, candidate, accuracy, seconds in rows:
        print(f"| {model} | {candidate} | {accuracy:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
