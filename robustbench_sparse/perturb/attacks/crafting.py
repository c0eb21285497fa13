"""`craft`: adversarial examples for a batch from any registered attack, the budget enforced.

Every random draw is seeded (by the batch's seed, or per image where the attack is our own), the
k-winners layers backpropagate as `bpda` says while the attack runs, and whatever the attack
returns is checked against its eps-ball (`check_budget`). `todo` (a boolean mask) attacks only
some images of a batch (the sweep pruning of `executor.perturbed_set`), every random start still
drawn for the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustbench_sparse.perturb.attacks.base import Attack, check_budget, fooled, restart_seed
from robustbench_sparse.perturb.attacks.bpda import bpda_backward
from robustbench_sparse.perturb.attacks.loop import IterativeAttack, our_loop
from robustbench_sparse.perturb.attacks.registry import ATTACKS, attack_of
from robustbench_sparse.runtime import stable_seed


def runs_our_loop(kind: str, params: dict[str, Any]) -> bool:
    """Whether the attack runs in our loop (`loop.py`: I-FGSM, MI-FGSM, PGD with the torchattacks
    backend, early stopping or not; margin PGD): torchattacks' own updates, bit for bit, but with
    the images of all batches pooled and the chunks of a step on several threads."""
    return (kind in ATTACKS and attack_of(kind).iterative
            and params.get("backend", "torchattacks") == "torchattacks")


def early_stops(kind: str, params: dict[str, Any]) -> bool:
    """Whether the attack runs with per-image early stopping (our loop, or an attack of ours that
    always stops early)."""
    if kind in ATTACKS and attack_of(kind).stops_early:
        return True
    return runs_our_loop(kind, params) and bool(params.get("early_stop", True))


def craft(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int,
    image_seeds: list[int] | None = None, todo: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial versions of the batch x (model must already be in eval mode). Every random draw
    is seeded: by `seed` for the whole batch, or per image by `image_seeds` (default: derived from
    `seed`) where the attack is our own.

    `todo` (a boolean mask over the batch): attack only those images; the others are returned as
    x. Every random start is drawn for the whole batch, so an image starts where it would in a
    full-batch run (a library that draws per batch is called on the whole batch).

    With `restarts` > 1 the attack runs again with derived seeds on the samples not yet fooled;
    each sample keeps the first example that fools the model (else the last one tried). Restart
    r's start is drawn for the whole batch in both modes, so with early stopping each restart is
    the plain restart cut short too.

    Example: `craft(model, "pgd", {"eps": 0.1, "steps": 10}, x, y, seed=0)` (PGD with a random start).
    """
    if image_seeds is None:
        image_seeds = [stable_seed(seed, "image", i) for i in range(len(x))]
    return craft_batches(model, kind, params, x, y, [seed], image_seeds, max(len(x), 1), todo)


def craft_batches(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seeds: list[int],
    image_seeds: list[int], batch_size: int, todo: torch.Tensor | None = None,
) -> torch.Tensor:
    """`craft` on x cut into batches of `batch_size`, batch i seeded by seeds[i]: every image gets
    exactly what `craft` on its own batch gives it. The attacks of our loop (`runs_our_loop`) step
    the images still attacked in all batches together, in chunks of at most `batch_size`, so
    chunks stay full as images stop (on CPU a half-empty batch costs ~20% more per image); on a
    CPU the chunks of a step run on several threads at once."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; valid: {', '.join(ATTACKS)}")
    attack = attack_of(kind)
    backend = attack.check(params)
    rows = torch.arange(len(x), device=x.device) if todo is None else todo.to(x.device).nonzero().flatten()
    if params["eps"] == 0 or len(rows) == 0:
        # The eps-ball is the point x: every L-inf attack returns x exactly (a test checks each
        # backend does), so the work is skipped.
        return x.clone()
    with bpda_backward(model, params.get("bpda", "none")):
        if isinstance(attack, IterativeAttack) and runs_our_loop(kind, params):
            adv = our_loop(model, attack, params, x, y, seeds, image_seeds, rows, batch_size,
                           stop=early_stops(kind, params))
        elif (pooled := attack.run_images(model, params, x[rows], y[rows], [image_seeds[i] for i in rows.tolist()],
                                          batch_size)) is not None:
            adv = x.clone()
            adv[rows] = pooled.detach()
        else:
            adv = x.clone()
            for i, first in enumerate(range(0, len(x), batch_size)):
                part = slice(first, first + batch_size)
                mine = rows[(rows >= first) & (rows < first + batch_size)] - first
                if len(mine):
                    adv[part] = restarted(model, attack, params, x[part], y[part], seeds[i], backend, mine)
    check_budget(x, adv, params["eps"])
    return adv.detach()


def restarted(
    model: nn.Module, attack: Attack, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int,
    backend: str, rows: torch.Tensor,
) -> torch.Tensor:
    """The library attack on the images `rows` of the batch, with its restarts on the rows no
    earlier run fooled; each image keeps its first example that fools (else the last one tried).
    Where the library draws one random tensor for a whole batch (PGD's start, Square), it is called
    on the whole batch and the rows are kept: each image then starts where it would in a call on
    the whole batch, whichever images are left to attack. Rows outside `rows` are returned as x."""
    whole = attack.batch_dependent(params)
    adv = x.clone()
    todo = rows
    for r in range(int(params.get("restarts", 1))):
        if len(todo) == 0:
            break
        if r:
            todo = todo[~fooled(model, adv[todo], y[todo])]  # fooled ones are kept
            if len(todo) == 0:
                break
        run_seed = restart_seed(seed, r)
        if whole:
            candidate = attack.run(model, params, x, y, run_seed, backend)[todo]
        else:
            candidate = attack.run(model, params, x[todo], y[todo], run_seed, backend)
        adv[todo] = candidate.detach()
    return adv
