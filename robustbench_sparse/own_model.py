"""Benchmark a network of your own: any `torch.nn.Module` that takes [0, 1] pixels and returns logits.

`evaluate_model(model, dataset=..., suite=..., name=...)` runs a suite on the model beside the zoo
(trained where missing) with every guard the zoo gets: eval mode during every attack, the budget
check, the seeded per-image draws. Results go to the dataset's result store under the model's name
and its identity (SHA-256 of its state_dict and its code, `checkpoints.module_identity`), so the
same model evaluated again reuses every cell and a changed one is recomputed. The report lands in
reports/<dataset>/<suite>+<name>/, the committed zoo reports stay untouched.

A model that breaks the contract is refused before any work, with the reason (`contract_problems`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from robustbench_sparse.data.datasets import DatasetInfo, default_data_root, load_dataset
from robustbench_sparse.evaluation.kinds import (
    DETERMINISM_RUNS,
    RANDOM_TOLERANCE,
    deterministic_flags,
    probability_rows,
)
from robustbench_sparse.execution.executor import ENSEMBLE
from robustbench_sparse.pipeline import BenchmarkResult, Echo, _quiet, train_missing, transfer_step
from robustbench_sparse.report import build_report
from robustbench_sparse.results import harness
from robustbench_sparse.results.request import RunRequest
from robustbench_sparse.runtime import UserError
from robustbench_sparse.zoo.checkpoints import EXTERNAL, module_identity, pack_module
from robustbench_sparse.zoo.spec import ModelSpec, load_zoo

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def contract_problems(model: object, info: DatasetInfo, x: torch.Tensor) -> list[str]:
    """What is wrong with `model` as a benchmark subject, in words (empty: nothing). `x` is a
    small batch of the dataset's test images ([0, 1] pixels, shape (B, C, H, W))."""
    if not isinstance(model, nn.Module):
        return [f"the model must be a torch.nn.Module, got {type(model).__name__}"]
    if model.training:
        return ["the model is in training mode (dropout, batchnorm and k-winners would change between calls and "
                "attacks would update their statistics); call model.eval() first"]
    try:
        device = next(iter(model.parameters())).device
    except StopIteration:
        device = torch.device("cpu")
    x = x.to(device)
    shape = "x".join(map(str, info.shape))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001 - the user's forward failing on our input is the finding
        return [f"the model fails on a batch of {info.name} images, shape {tuple(x.shape)} ({shape} pixels in "
                f"[0, 1]): {type(err).__name__}: {err}"]
    if not isinstance(out, torch.Tensor):
        return [f"the model returns {type(out).__name__}; it must return one tensor of logits"]
    want = (len(x), info.num_classes)
    if tuple(out.shape) != want:
        return [f"the model returns shape {tuple(out.shape)} for {len(x)} images; expected {want} "
                f"(logits for {info.num_classes} classes; input {shape} pixels in [0, 1])"]
    problems = []
    if not torch.isfinite(out).all():
        problems.append("the model returns NaN or infinite logits on clean test images")
    if len(out) and bool(probability_rows(out).all()):
        problems.append("the model returns probabilities (rows in [0, 1] summing to 1), not logits: a loss on "
                        "probabilities saturates and fakes robustness; return the logits (before softmax)")
    steady = deterministic_flags(model, x, device, len(x))
    if not bool(steady.all()):
        problems.append(f"the model is randomised: {int((~steady).sum())} of {len(x)} inputs get different logits "
                        f"over {DETERMINISM_RUNS} calls (by more than {RANDOM_TOLERANCE:g}: dropout left on, noise in "
                        "forward); this suite scores deterministic models")
    return problems


def _models_by_seed(model: nn.Module | Mapping[int, nn.Module], seed: int) -> dict[int, nn.Module]:
    if isinstance(model, Mapping):
        if not model or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in model):
            raise UserError("a mapping of models must have non-negative integer training seeds as keys")
        return dict(sorted(model.items()))
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    return {seed: model}  # type: ignore[dict-item]


def evaluate_model(
    model: nn.Module | Mapping[int, nn.Module],
    *args: Any,
    name: str = "my-model",
    compare: str | Iterable[str] | None = None,
    seed: int = 0,
    echo: Echo | None = None,
    **given: Any,
) -> BenchmarkResult:
    """Run `suite` on `model` beside the zoo's models and report them together.

    `model`: one module (labelled training seed `seed`), or {training seed: module} for several
    trainings of one architecture (tables then show mean ± std over seeds, like the zoo's).
    `compare`: zoo models to run beside it, at the same training seeds (default: the whole zoo for
    the dataset; [] for none); they are trained first where missing. The model is copied (its
    pickled bytes are what runs), so the object passed in is never changed.
    The run's other parameters: a `RunRequest` or its fields (its `models` and `seeds` come from
    `compare` and `model`).
    """
    request = RunRequest.of(*args, **given).resolved()
    dataset, data_root, download = request.dataset, request.data_root, request.download
    say = echo or _quiet
    own = _models_by_seed(model, seed)
    if not isinstance(name, str) or not _NAME.match(name) or name == ENSEMBLE:
        raise UserError(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (not {ENSEMBLE!r})")
    names = None if compare is None else [compare] if isinstance(compare, str) else list(compare)
    setup = harness.prepare(replace(request, models=names or None, seeds=tuple(own)))
    zoo_names = [n for n, by_dataset in load_zoo(setup.paths.zoo_spec).items() if dataset in by_dataset]
    if name in zoo_names:
        raise UserError(f"name {name!r} is a zoo model for {dataset}; choose another name")
    zoo_specs = [] if names == [] else setup.specs

    data = load_dataset(dataset, data_root or default_data_root(), download)
    probe = data.test_x[:16]
    external: dict[tuple[str, int], tuple[str, bytes]] = {}
    for seed, module in own.items():
        problems = contract_problems(module, setup.info, probe)
        if problems:
            where = f"{name}" + (f" (seed {seed})" if len(own) > 1 else "")
            raise UserError(f"{where} cannot be benchmarked: " + "; ".join(problems))
        packed = pack_module(module)
        external[(name, seed)] = (module_identity(module), packed)
    first = next(iter(own.values()))
    spec = ModelSpec(name=name, family=EXTERNAL, datasets=(dataset,),
                     description=f"brought as an object: {type(first).__module__}.{type(first).__qualname__}")
    specs = [*zoo_specs, spec]
    the_suite, notes = harness._restrict_ensemble(setup.suite, [s.name for s in specs])
    setup = replace(setup, suite=the_suite, specs=specs, external=external, label=name,
                    notes=tuple(dict.fromkeys((*setup.notes, *notes))))

    with request.open_executor() as runner:
        if zoo_specs:
            say("1/4 train the zoo models compared (only what is missing)")
            train_missing(replace(setup, specs=zoo_specs, external={}), data_root, download, executor=runner)
        the_plan = harness.plan_from(setup, data_root, download)
        say(f"2/4 evaluate (suite {setup.run_name!r}, {the_plan.n} test images)")
        frame = harness.run(the_plan, executor=runner)
        harness.export(frame, the_plan, "records")
        moves = transfer_step(the_plan, runner, say)
    say("4/4 report")
    return BenchmarkResult(the_plan, frame, moves, build_report(the_plan))

