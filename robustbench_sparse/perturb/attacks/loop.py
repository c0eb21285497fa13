"""Our loop for the iterative attacks: torchattacks' updates, with per-image early stopping.

With `early_stop` an image stops being attacked at the first iterate the model misclassifies and
keeps that iterate. The loop mirrors torchattacks' BIM, MIFGSM and PGD (v3.5) operation for
operation, random start included (the same seed, the same batch-wide draw), so each image follows
exactly the trajectory the library would give it, cut short: an image the library fools is fooled
here too, so accuracy is never higher. With `early_stop = false` every image runs every step and
ends bit for bit where torchattacks does (a test checks it on every zoo model); the loop is used
instead of the library because it pools the images of all batches and runs the chunks of a step
on several threads (torchattacks draws PGD's start from the global RNG, so its calls cannot share
a process's threads).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_sparse.perturb.attacks.base import Attack, fooled, restart_seed
from robustbench_sparse.runtime import torch_threads


def step_size(params: dict[str, Any]) -> float:
    """The step alpha: as given, or Madry's rule 2.5 * eps / steps when `alpha = "auto"`."""
    alpha = params.get("alpha", "auto")
    return 2.5 * params["eps"] / params["steps"] if alpha == "auto" else float(alpha)


@dataclass(frozen=True)
class IterativeAttack(Attack):
    """An attack our loop runs with backend=torchattacks (`steps` signed-gradient steps of size
    `step_size`). A family says where it starts, which loss it climbs and how a step is projected;
    the defaults are torchattacks' PGD without random start."""

    iterative: ClassVar[bool] = True
    momentum: ClassVar[bool] = False  # keeps a per-image momentum (`with_momentum`)

    def start(self, params: dict[str, Any], x: torch.Tensor, seed: int, image_seeds: list[int]) -> torch.Tensor:
        """The iterate the attack starts from, for the whole batch `x` (batch seed, image seeds)."""
        return x.clone()

    def loss(self, logits: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """The loss whose input gradient a step follows: the cross-entropy averaged over the
        batch the library would be called on (each image's term divided by `scale`, its batch's
        size)."""
        return (F.cross_entropy(logits, y, reduction="none") / scale).sum()

    def with_momentum(self, grad: torch.Tensor, momentum: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """The direction of a step from the gradient and the momentum so far (`momentum` only)."""
        return grad

    def project(self, moved: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The stepped iterate back into the eps-ball and [0, 1]:
        x' <- clamp(x + clamp(x' - x, -eps, eps), 0, 1)."""
        delta = torch.clamp(moved - x, min=-eps, max=eps)
        return torch.clamp(x + delta, min=0, max=1)


def crafting_threads(device: torch.device) -> int:
    """How many chunks of an attack step run at once: on a CPU, one per torch thread, each chunk on
    one torch thread (measured on this 2-core machine, batch 200: a PGD step on 2 x 200 images
    takes 0.84x the time of two steps on 2 torch threads for `dense`, 0.93x for `kwinner-boost`);
    on a GPU, one (its kernels already fill the device)."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def _chunks(n: int, chunk: int, threads: int) -> list[slice]:
    """`n` images cut into consecutive slices of at most `chunk`; with several threads, into
    slices of near-equal size, about a multiple of `threads` of them, so that no thread waits long
    on the last one."""
    if n == 0:
        return []
    count = math.ceil(n / chunk)
    if threads > 1:
        count = min(n, threads * math.ceil(count / threads))
    size = chunk if threads == 1 else math.ceil(n / count)
    return [slice(first, min(first + size, n)) for first in range(0, n, size)]


@contextlib.contextmanager
def _thread_pool(threads: int) -> Iterator[ThreadPoolExecutor | None]:
    """`threads` worker threads running one torch thread each (None for one thread: the caller
    runs the chunks itself, on torch's threads). torch releases the GIL inside its operators. Each
    worker sets its own thread count to 1 when it starts (OpenMP keeps one count per thread, and
    torch would set a new thread's only at its first parallel operator, which a small chunk may
    never reach before a convolution); the process's count is 1 while the pool lives and is
    restored afterwards."""
    if threads <= 1:
        yield None
        return
    with torch_threads(1), ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rbs-craft",
                                              initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield pool


def _iterate(
    model: nn.Module, attack: IterativeAttack, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor,
    start: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor, chunk: int, stop: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run of an iterative attack on the images `rows` of `x` from the iterates `start`, each
    image stopped at its first misclassified iterate (`stop`; else every image runs every step).
    Returns (adversarial rows, stopped rows). The images still attacked are stepped together in
    chunks of at most `chunk`, whichever batch they come from, so the chunks stay full as images
    stop; on a CPU the chunks of a step run on `crafting_threads()` threads at once.

    Each update is the library's own, in the same floating-point order (`IterativeAttack`). The
    model's output for an image does not depend on the other images of its batch (eval mode), nor
    on the number of torch threads (both hold for the zoo on CPU; tests check each), so an image's
    trajectory is bit for bit the library's on its own batch. The iterate after the last step is
    returned unchecked, as the library returns it.
    """
    eps, alpha, steps = params["eps"], step_size(params), params["steps"]
    x0, y0, scale0 = x[rows].detach(), y[rows].detach(), scale[rows]
    cur = start[rows].detach()
    found = torch.empty_like(x0)
    hits = torch.zeros(len(rows), dtype=torch.bool, device=x.device)
    at = torch.arange(len(rows), device=x.device)  # positions (in `rows`) of the images still attacked
    momentum = torch.zeros_like(x0) if attack.momentum else None
    threads = crafting_threads(x.device)

    def step(part: slice) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One step on the images `part` of the ones still attacked: (misclassified now, their
        next iterates, their new momentum) where the last two cover the others only."""
        yc, sc = y0[part], scale0[part]
        cc = cur[part].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(cc)
            hit = (logits.detach().argmax(dim=1) != yc) if stop else torch.zeros_like(yc, dtype=torch.bool)
            keep = ~hit
            if bool(hit.any()):
                if not bool(keep.any()):
                    return hit, None, None
                logits, yc, sc = logits[keep], yc[keep], sc[keep]
            loss = attack.loss(logits, yc, sc, params)
            (grad,) = torch.autograd.grad(loss, cc)
        grad, now = grad[keep], cc.detach()[keep]
        if momentum is not None:
            grad = attack.with_momentum(grad, momentum[part][keep], params)
        return hit, now + alpha * grad.sign(), grad

    with _thread_pool(threads) as pool:
        for _ in range(steps):
            parts = _chunks(len(at), chunk, threads)
            kept: list[torch.Tensor] = []
            stepped: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            for part, (hit, moved, grad) in zip(parts, pool.map(step, parts) if pool else map(step, parts),
                                                strict=True):
                if bool(hit.any()):
                    found[at[part][hit]] = cur[part][hit]
                    hits[at[part][hit]] = True
                kept.append(~hit)
                if moved is not None:
                    stepped.append(moved)
                if grad is not None and momentum is not None:
                    grads.append(grad)
            keep_all = torch.cat(kept)
            if not bool(keep_all.any()):
                return found, hits
            moved = torch.cat(stepped)
            x0, y0, scale0, at = x0[keep_all], y0[keep_all], scale0[keep_all], at[keep_all]
            if momentum is not None:
                momentum = torch.cat(grads)
            cur = attack.project(moved, x0, eps)
    found[at] = cur.detach()
    return found, hits


def _starts(attack: IterativeAttack, params: dict[str, Any], x: torch.Tensor, seeds: list[int],
            image_seeds: list[int], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's start iterate, `x` cut into batches of `batch_size` (batch i's draw seeded by
    seeds[i]), and each image's batch size (the cross-entropy's mean is over its batch)."""
    starts, scale = [], []
    for i, first in enumerate(range(0, len(x), batch_size)):
        xb = x[first : first + batch_size]
        starts.append(attack.start(params, xb, seeds[i], image_seeds[first : first + batch_size]))
        scale.append(torch.full((len(xb),), float(len(xb)), device=x.device))
    return torch.cat(starts), torch.cat(scale)


def our_loop(
    model: nn.Module, attack: IterativeAttack, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor,
    seeds: list[int], image_seeds: list[int], rows: torch.Tensor, batch_size: int, stop: bool,
) -> torch.Tensor:
    """The iterative attack on `rows` through `_iterate`, with per-image early stopping (`stop`) or
    every image for every step; with `restarts` > 1, restart r (seeds as `restart_seed`) runs on
    the rows no earlier run fooled, its start drawn for each whole batch as in the first run. Rows
    outside `rows` are returned as x."""
    adv = x.clone()
    restarts = int(params.get("restarts", 1))
    for r in range(restarts):
        if len(rows) == 0:
            break
        start, scale = _starts(attack, params, x, [restart_seed(s, r) for s in seeds],
                               [restart_seed(s, r) for s in image_seeds], batch_size)
        found, hits = _iterate(model, attack, params, x, y, start, scale, rows, batch_size, stop)
        adv[rows] = found.detach()
        rows = rows[~hits]
        if len(rows) and r + 1 < restarts:
            rows = rows[~fooled(model, adv[rows], y[rows])]  # the last iterates that fool are kept
    return adv
