"""L-inf attacks through torchattacks (default) or foolbox, with the budget enforced here.

Gradient attacks use cross-entropy on the logits, except PGD with `loss = "margin"`, which runs a
small PGD loop of our own on the margin max_{j != y} z_j - z_y. The gradient-free Square attack
comes from torchattacks. Whatever an attack returns is checked:
||x' - x||_inf <= eps + 1e-6 and x' in [0, 1], or the run stops with an error, so no number is ever
reported for an attack that left its threat model.

Adaptive options against gradient masking (REFERENCE.md section 7):
- `bpda`: k-winners layers backpropagate through a stand-in (ReLU's backward or the identity)
  while their forward values stay exactly the same (`bpda_backward`);
- `restarts`: PGD re-run with derived seeds, keeping per sample the first example that fools;
- `square`: a random search that needs no gradients at all;
- `apgd` and `autoattack`: torchattacks' APGD (cross-entropy or the DLR loss) and the standard
  AutoAttack (APGD-CE, APGD-T, FAB-T, Square, each later attack only on the images still robust),
  with the original's 100 iterations and 5,000 queries, and a seed per cell (never the clock);
- `gradient_health`: the fraction of inputs whose input gradient is zero or not finite.

Per-image early stopping (`early_stop`, I-FGSM, MI-FGSM and PGD with the torchattacks backend): an
image stops being attacked at the first iterate the model misclassifies and keeps that iterate.
The loop is our own (torchattacks and foolbox attack every image for every step) and mirrors
torchattacks' BIM, MIFGSM and PGD operation for operation, random start included (the same seed,
the same batch-wide draw), so each image follows exactly the trajectory the library would give it,
cut short: an image the library fools is fooled here too, so accuracy is never higher. With
`early_stop = false` the same loop runs every image for every step and ends bit for bit where
torchattacks does (a test checks it on every zoo model); it is used instead of the library because
it pools the images of all batches and runs the chunks of a step on several threads (torchattacks
draws PGD's start from the global RNG, so its calls cannot share a process's threads).
`craft(..., todo=mask)` attacks only the masked images of a batch (the sweep pruning of
`executor.perturbed_set`), still drawing the random start for the whole batch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_sparse.runtime import UserError, eval_mode, generator, stable_seed, torch_threads
from robustbench_sparse.zoo.sparse import _KWinnersBase

BACKENDS = ("torchattacks", "foolbox")
ATTACKS = ("fgsm", "ifgsm", "mifgsm", "pgd", "square", "apgd", "autoattack")
GRADIENT_ATTACKS = ("fgsm", "ifgsm", "mifgsm", "pgd", "apgd", "autoattack")  # the kinds that take `bpda`
ITERATIVE_ATTACKS = ("ifgsm", "mifgsm", "pgd")  # the kinds that take `early_stop`
FOOLBOX_ATTACKS = ("fgsm", "ifgsm", "pgd")  # foolbox 3 has no MI-FGSM (nor Square)
BPDA_MODES = ("none", "relu", "identity")  # "none": the true (mask) gradient of k-winners
PGD_LOSSES = ("ce", "margin")
APGD_LOSSES = ("ce", "dlr")
BOUND_TOLERANCE = 1e-6


class BudgetViolation(RuntimeError):
    """An attack returned inputs outside its eps-ball or outside [0, 1]."""


def step_size(params: dict[str, Any]) -> float:
    """The step alpha: as given, or Madry's rule 2.5 * eps / steps when `alpha = "auto"`."""
    alpha = params.get("alpha", "auto")
    return 2.5 * params["eps"] / params["steps"] if alpha == "auto" else float(alpha)


def handles_bpda(module: nn.Module) -> bool:
    """A layer that applies BPDA itself: our k-winners, or a layer declaring `rbs_bpda = True`
    whose forward honours its `bpda` attribute (None, "relu" or "identity")."""
    return isinstance(module, _KWinnersBase) or getattr(type(module), "rbs_bpda", False) is True


def looks_like_kwinners(module: nn.Module) -> bool:
    """A k-winners layer from another library, found by duck typing: it says so (`rbs_kwinners =
    True`), or it carries the k-winners state of nupic.torch's `KWinners` / `KWinners2d` (the
    paper's code): a `k_inference_factor` and a `duty_cycle`. Layers that apply BPDA themselves
    (`handles_bpda`) are not counted here."""
    if handles_bpda(module):
        return False
    if getattr(module, "rbs_kwinners", False) is True:
        return True
    return hasattr(module, "k_inference_factor") and hasattr(module, "duty_cycle")


def bpda_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The layers BPDA acts on: (those that apply it themselves, the duck-typed foreign k-winners
    that get a forward hook)."""
    own = [m for m in model.modules() if handles_bpda(m)]
    foreign = [m for m in model.modules() if looks_like_kwinners(m)]
    return own, foreign


def _stand_in_hook(mode: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    """A forward hook that keeps a layer's output value and gives it the stand-in's backward:
    out' = s(x) + (out - s(x)).detach(), s = ReLU or the identity on the layer's input x. This is
    what our layers do inside (`sparse._KWinnersBase._with_backward`) for a layer we cannot edit."""

    def hook(module: nn.Module, inputs: tuple[Any, ...], out: Any) -> Any:
        x = inputs[0]
        if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor) or x.shape != out.shape:
            raise UserError(f"BPDA needs the k-winners layer {type(module).__name__} to return one tensor of its "
                            f"input's shape (got {type(out).__name__}); see README: Benchmark your own model")
        surrogate = torch.relu(x) if mode == "relu" else x
        return surrogate + (out - surrogate).detach()

    return hook


@contextlib.contextmanager
def bpda_backward(model: nn.Module, mode: str | None) -> Iterator[nn.Module]:
    """Every k-winners layer of `model` backpropagates as `mode` says while the block runs.

    "relu": the backward of ReLU; "identity": straight-through; "none" (or None): the layers' own
    mask gradient. Forward values are unchanged (the layers add the stand-in's gradient only).

    The protocol a layer follows to take part (README: Benchmark your own model): either it
    applies BPDA itself (`handles_bpda`: our `KWinners`, or a class with `rbs_bpda = True` whose
    forward honours its `bpda` attribute); or it is found by `looks_like_kwinners` and gets a
    forward hook doing the same.
    Each layer's previous setting is restored (hooks removed) afterwards, also when the block raises.
    """
    if mode not in (*BPDA_MODES, None):
        raise ValueError(f"unknown bpda mode {mode!r}; valid: {', '.join(BPDA_MODES)}")
    value = None if mode in (None, "none") else mode
    layers, foreign = bpda_layers(model)
    previous = [layer.bpda for layer in layers]
    hooks = []
    try:
        for layer in layers:
            layer.bpda = value
        if value is not None:
            hooks = [layer.register_forward_hook(_stand_in_hook(value)) for layer in foreign]
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for layer, old in zip(layers, previous, strict=True):
            layer.bpda = old


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample max_{j != y} z_j - z_y on the logits (CW / DLR style): > 0 iff misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return others - true


def batch_dependent(kind: str, params: dict[str, Any]) -> bool:
    """Whether the attack's result for an image depends on the other images of its batch: true
    where the library draws one batch-wide random tensor (torchattacks' and foolbox's PGD random
    start, Square's random search, restarts run on the batch's survivors). Our own margin PGD
    draws its start per image, and FGSM / I-FGSM / MI-FGSM are deterministic."""
    if kind in ("square", "apgd", "autoattack"):
        return True  # one batch-wide random draw (APGD's start, Square's search) from the batch's seed
    if kind != "pgd":
        return False
    if params.get("loss", "ce") == "margin":
        return False
    return bool(params.get("random_start", True)) or int(params.get("restarts", 1)) > 1


def _random_start(kind: str, params: dict[str, Any], x: torch.Tensor, seed: int,
                  image_seeds: list[int]) -> torch.Tensor:
    """The iterate an attack starts from, for the whole batch `x`.

    Cross-entropy PGD: exactly torchattacks.PGD's draw, one uniform tensor for the whole batch from
    the global RNG seeded with `seed` (so a batch's images start where the library starts them).
    Margin PGD: a uniform start per image from its own seed (the result does not depend on the
    batch). I-FGSM, MI-FGSM and PGD without random start begin at x.
    """
    eps = params["eps"]
    if kind != "pgd" or not params.get("random_start", True):
        return x.clone()
    if params.get("loss", "ce") == "margin":
        noise = torch.stack([torch.rand(x.shape[1:], generator=generator(s)) for s in image_seeds]).to(x)
        return (x + (noise * (2 * eps) - eps)).clamp(0, 1)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        noise = torch.empty_like(x).uniform_(-eps, eps)
    return torch.clamp(x + noise, min=0, max=1)


def _iterate(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, start: torch.Tensor,
    scale: torch.Tensor, rows: torch.Tensor, chunk: int, stop: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run of an iterative attack on the images `rows` of `x` from the iterates `start`, each
    image stopped at its first misclassified iterate (`stop`; else every image runs every step).
    Returns (adversarial rows, stopped rows). The images still attacked are stepped together in
    chunks of at most `chunk`, whichever batch they come from, so the chunks stay full as images
    stop; on a CPU the chunks of a step run on `crafting_threads()` threads at once.

    Hand-written because torchattacks and foolbox have no per-image early exit. Each update is
    torchattacks' own (v3.5: BIM, MIFGSM, PGD), in the same floating-point order:
    - the loss is the cross-entropy averaged over the batch the library would be called on: each
      image's term divided by `scale`, its batch's size; the margin loss (max_{j != y} z_j - z_y,
      our margin PGD) is summed;
    - PGD and MI-FGSM: x' <- clamp(x + clamp(x' + alpha sign(g) - x, -eps, eps), 0, 1);
    - I-FGSM: x' <- min(max(x' + alpha sign(g), max(x - eps, 0)), x + eps, 1);
    - MI-FGSM: g <- g / mean|g| + decay m per image, m <- g (where the gradient is exactly zero this
      is 0 / 0 = NaN, as in the library; torch's sign(NaN) = 0, so such an image stops moving).
    The model's output for an image does not depend on the other images of its batch (eval mode),
    nor on the number of torch threads (both hold for the zoo on CPU; tests check each), so an
    image's trajectory is bit for bit the library's on its own batch.
    The iterate after the last step is returned unchecked, as the library returns it.
    """
    eps, alpha, steps = params["eps"], step_size(params), params["steps"]
    margin = kind == "pgd" and params.get("loss", "ce") == "margin"
    x0, y0, scale0 = x[rows].detach(), y[rows].detach(), scale[rows]
    cur = start[rows].detach()
    found = torch.empty_like(x0)
    fooled = torch.zeros(len(rows), dtype=torch.bool, device=x.device)
    at = torch.arange(len(rows), device=x.device)  # positions (in `rows`) of the images still attacked
    momentum = torch.zeros_like(x0) if kind == "mifgsm" else None
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
            if margin:
                loss = margin_loss(logits, yc).sum()
            else:
                loss = (F.cross_entropy(logits, yc, reduction="none") / sc).sum()
            (grad,) = torch.autograd.grad(loss, cc)
        grad, now = grad[keep], cc.detach()[keep]
        if momentum is not None:
            grad = grad / torch.mean(torch.abs(grad), dim=tuple(range(1, grad.dim())), keepdim=True)
            grad = grad + momentum[part][keep] * params["decay"]
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
                    fooled[at[part][hit]] = True
                kept.append(~hit)
                if moved is not None:
                    stepped.append(moved)
                if grad is not None and momentum is not None:
                    grads.append(grad)
            keep_all = torch.cat(kept)
            if not bool(keep_all.any()):
                return found, fooled
            moved = torch.cat(stepped)
            x0, y0, scale0, at = x0[keep_all], y0[keep_all], scale0[keep_all], at[keep_all]
            if momentum is not None:
                momentum = torch.cat(grads)
            if kind == "ifgsm":
                low, high = torch.clamp(x0 - eps, min=0), x0 + eps
                above_low = torch.where(moved >= low, moved, low)
                cur = torch.clamp(torch.where(above_low > high, high, above_low), max=1)
            else:
                delta = torch.clamp(moved - x0, min=-eps, max=eps)
                cur = torch.clamp(x0 + delta, min=0, max=1)
    found[at] = cur.detach()
    return found, fooled


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


def _starts(kind: str, params: dict[str, Any], x: torch.Tensor, seeds: list[int], image_seeds: list[int],
            batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's start iterate, `x` cut into batches of `batch_size` (batch i's draw seeded by
    seeds[i]), and each image's batch size (the cross-entropy's mean is over its batch)."""
    starts, scale = [], []
    for i, first in enumerate(range(0, len(x), batch_size)):
        xb = x[first : first + batch_size]
        starts.append(_random_start(kind, params, xb, seeds[i], image_seeds[first : first + batch_size]))
        scale.append(torch.full((len(xb),), float(len(xb)), device=x.device))
    return torch.cat(starts), torch.cat(scale)


def _our_loop(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seeds: list[int],
    image_seeds: list[int], rows: torch.Tensor, batch_size: int, stop: bool,
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
        start, scale = _starts(kind, params, x, [restart_seed(s, r) for s in seeds],
                               [restart_seed(s, r) for s in image_seeds], batch_size)
        found, fooled = _iterate(model, kind, params, x, y, start, scale, rows, batch_size, stop)
        adv[rows] = found.detach()
        rows = rows[~fooled]
        if len(rows) and r + 1 < restarts:
            rows = rows[~_fooled(model, adv[rows], y[rows])]  # the last iterates that fool are kept
    return adv


def _torchattacks(model: nn.Module, kind: str, params: dict[str, Any], seed: int = 0) -> Any:
    import torchattacks

    eps = params["eps"]
    if kind == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if kind == "square":
        # Square seeds the global RNG with `seed` itself (torch.random.manual_seed, inside craft's
        # forked RNG); with seed=None it would use the clock.
        return torchattacks.Square(
            model, norm="Linf", eps=eps, n_queries=params["n_queries"], n_restarts=1,
            p_init=params["p_init"], loss="margin", seed=seed, verbose=False,
        )
    if kind == "apgd":
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=params["steps"], n_restarts=1, seed=seed,
                                 loss=params["loss"], rho=0.75, verbose=False)
    if kind == "autoattack":
        # torchattacks.AutoAttack(version="standard") builds these four with 10 iterations (the
        # original uses 100) and seeds from the clock when seed=None: composed here with the
        # original's settings and the cell's seed. MultiAttack runs each later attack only on the
        # images every earlier one left correct, so the result is the per-image worst case.
        n_classes = int(params["n_classes"])
        steps = params["steps"]
        return torchattacks.MultiAttack([
            torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce",
                              rho=0.75, verbose=False),
            torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, rho=0.75,
                               verbose=False, n_classes=n_classes),
            torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                             multi_targeted=True, n_classes=n_classes, verbose=False),
            torchattacks.Square(model, norm="Linf", eps=eps, n_queries=params["n_queries"], n_restarts=1,
                                p_init=0.8, loss="margin", seed=seed, verbose=False),
        ])
    alpha, steps = step_size(params), params["steps"]
    if kind == "ifgsm":
        return torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps)
    if kind == "mifgsm":
        return torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps, decay=params["decay"])
    return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=params["random_start"])


def _foolbox(model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
    if kind == "fgsm":
        attack: Any = foolbox.attacks.FGSM(random_start=False)
    elif kind == "ifgsm":
        attack = foolbox.attacks.LinfBasicIterativeAttack(abs_stepsize=step_size(params), steps=params["steps"])
    else:
        attack = foolbox.attacks.LinfPGD(
            abs_stepsize=step_size(params), steps=params["steps"], random_start=params["random_start"]
        )
    _, clipped, _ = attack(fmodel, x, y, epsilons=params["eps"])
    return clipped


def _check_combination(kind: str, params: dict[str, Any]) -> str:
    """The backend to use; combinations no backend can run are refused."""
    backend = params.get("backend", "torchattacks")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "foolbox" and kind not in FOOLBOX_ATTACKS:
        raise UserError(f"{kind} has no foolbox version; valid backend: torchattacks")
    loss = params.get("loss", "ce")
    losses = APGD_LOSSES if kind == "apgd" else PGD_LOSSES
    if loss not in losses:
        raise UserError(f"unknown loss {loss!r} for {kind}; valid: {', '.join(losses)}")
    if loss == "margin" and backend == "foolbox":
        raise UserError("pgd with loss=margin runs only with backend=torchattacks (foolbox attacks cross-entropy)")
    if backend == "foolbox" and kind in ITERATIVE_ATTACKS and params.get("early_stop") is True:
        raise UserError("early_stop=true runs our torchattacks-mirroring loop; with backend=foolbox use early_stop=false")
    return backend


def _attack_once(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int, backend: str,
) -> torch.Tensor:
    """One run of the library attack with every random draw seeded by `seed` (global RNG left
    untouched)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if backend == "foolbox":
            return _foolbox(model, kind, params, x, y)
        if kind == "autoattack" and "n_classes" not in params:
            with torch.no_grad():  # APGD-T and FAB-T target every other class
                params = {**params, "n_classes": model(x[:1]).shape[1]}
        return _torchattacks(model, kind, params, seed)(x, y)


def restart_seed(seed: int, restart: int) -> int:
    """The seed of restart r: restart 0 uses `seed` itself, so restarts=1 is the plain attack."""
    return seed if restart == 0 else stable_seed(seed, "restart", restart)


@torch.no_grad()
def _fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1) != y


def early_stops(kind: str, params: dict[str, Any]) -> bool:
    """Whether the attack runs with per-image early stopping (our loop)."""
    return runs_our_loop(kind, params) and bool(params.get("early_stop", True))


def runs_our_loop(kind: str, params: dict[str, Any]) -> bool:
    """Whether the attack runs in `_iterate` (I-FGSM, MI-FGSM, PGD with the torchattacks backend,
    early stopping or not; margin PGD): torchattacks' own updates, bit for bit, but with the
    images of all batches pooled and the chunks of a step on several threads. torchattacks itself
    cannot run in threads: it draws PGD's random start from the global RNG."""
    return kind in ITERATIVE_ATTACKS and params.get("backend", "torchattacks") == "torchattacks"


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
    backend = _check_combination(kind, params)
    rows = torch.arange(len(x), device=x.device) if todo is None else todo.to(x.device).nonzero().flatten()
    if params["eps"] == 0 or len(rows) == 0:
        # The eps-ball is the point x: every L-inf attack returns x exactly (a test checks each
        # backend does), so the work is skipped.
        return x.clone()
    with bpda_backward(model, params.get("bpda", "none")):
        if runs_our_loop(kind, params):
            adv = _our_loop(model, kind, params, x, y, seeds, image_seeds, rows, batch_size,
                            stop=early_stops(kind, params))
        else:
            adv = x.clone()
            for i, first in enumerate(range(0, len(x), batch_size)):
                part = slice(first, first + batch_size)
                mine = rows[(rows >= first) & (rows < first + batch_size)] - first
                if len(mine):
                    adv[part] = _restarted(model, kind, params, x[part], y[part], seeds[i], backend, mine)
    check_budget(x, adv, params["eps"])
    return adv.detach()


def _restarted(
    model: nn.Module, kind: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int, backend: str,
    rows: torch.Tensor,
) -> torch.Tensor:
    """The library attack on the images `rows` of the batch, with its restarts on the rows no
    earlier run fooled; each image keeps its first example that fools (else the last one tried).
    Where the library draws one random tensor for a whole batch (PGD's start, Square), it is called
    on the whole batch and the rows are kept: each image then starts where it would in a call on
    the whole batch, whichever images are left to attack. Rows outside `rows` are returned as x."""
    whole = batch_dependent(kind, params)
    adv = x.clone()
    todo = rows
    for r in range(int(params.get("restarts", 1))):
        if len(todo) == 0:
            break
        if r:
            todo = todo[~_fooled(model, adv[todo], y[todo])]  # fooled ones are kept
            if len(todo) == 0:
                break
        run_seed = restart_seed(seed, r)
        if whole:
            candidate = _attack_once(model, kind, params, x, y, run_seed, backend)[todo]
        else:
            candidate = _attack_once(model, kind, params, x[todo], y[todo], run_seed, backend)
        adv[todo] = candidate.detach()
    return adv


def check_budget(x: torch.Tensor, adv: torch.Tensor, eps: float) -> None:
    if adv.shape != x.shape:
        raise BudgetViolation(f"attack changed the input shape {tuple(x.shape)} -> {tuple(adv.shape)}")
    if len(x) and not bool(torch.isfinite(adv).all()):
        raise BudgetViolation("attack returned NaN or infinite pixels")
    dist = (adv - x).abs().amax().item() if len(x) else 0.0
    if dist > eps + BOUND_TOLERANCE:
        raise BudgetViolation(f"attack exceeded its budget: ||x' - x||_inf = {dist:.6g} > eps = {eps}")
    if len(x) and (adv.min().item() < 0 or adv.max().item() > 1):
        raise BudgetViolation("attack left the [0, 1] pixel range")


def live_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (on the CPU): is the input gradient of the cross-entropy exactly zero
    everywhere, and does it contain NaN or inf? (model in eval mode; parameters, buffers, modes
    and grad flags untouched.)"""
    zero, nonfinite = [], []
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].detach().to(device).clone().requires_grad_(True)
            yb = y[start : start + batch_size].to(device)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xb), yb, reduction="sum")  # sum: no 1/B scaling
                # An output cut off from the input (e.g. a hard threshold) has gradient zero.
                (grad,) = torch.autograd.grad(loss, xb) if loss.requires_grad else (torch.zeros_like(xb),)
            flat = grad.flatten(1)
            bad = ~torch.isfinite(flat).all(dim=1)
            nonfinite.append(bad.cpu())
            zero.append(((flat == 0).all(dim=1) & ~bad).cpu())
    empty = torch.zeros(0, dtype=torch.bool)
    return (torch.cat(zero) if zero else empty), (torch.cat(nonfinite) if nonfinite else empty)


def gradient_health(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 500
) -> dict[str, float]:
    """How many inputs give a gradient attack nothing to follow: "zero" (exactly zero everywhere),
    "nonfinite" (NaN or inf), "dead" (either), each as a fraction of the n inputs. A dead
    fraction near 1 is gradient masking, not robustness."""
    zero, nonfinite = live_gradients(model, x, y, device, batch_size)
    n = len(x)
    if n == 0:
        return {"n": 0, "zero": math.nan, "nonfinite": math.nan, "dead": math.nan}
    z, nf = int(zero.sum()), int(nonfinite.sum())
    return {"n": n, "zero": z / n, "nonfinite": nf / n, "dead": (z + nf) / n}
