"""The evaluation kinds: their parameters, valid ranges, canonical spec strings, and how each runs.

A spec string such as
`pgd(alpha=0.01,backend=torchattacks,bpda=none,eps=0.3,loss=ce,random_start=true,restarts=1,steps=40)`
names one evaluation at one strength completely (every default filled in, keys sorted), so it is
a stable key for results and caches.

The kinds are registered once each (`register_kind`); every registered attack is a kind too
(`attacks.register`), so `KINDS` lists both.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from robustbench_sparse.data.datasets import DatasetInfo
from robustbench_sparse.perturb import attacks, corruptions, noise
from robustbench_sparse.perturb.attacks.base import ALPHA
from robustbench_sparse.perturb.params import Param, boolean, choice, number
from robustbench_sparse.registry import Registry
from robustbench_sparse.runtime import UserError, generator

PRUNE = Param(
    True, boolean(),
    "true (eps swept upwards, only images no smaller eps fooled are attacked; accuracy at eps = no eps' <= eps "
    "fooled it) or false (every eps attacks every image); a suite's `prune` sets the default",
)
ACCURACY = "accuracy"
RANDOM_TOLERANCE = 1e-4  # AutoAttack's checks.py: outputs of one input differing by more are "randomised"
DETERMINISM_RUNS = 5

# The random-noise kinds: (x, params, info, per-image generators) -> perturbed x.
Noise = Callable[[torch.Tensor, dict[str, Any], DatasetInfo, list[torch.Generator]], torch.Tensor]


class Measure(Protocol):
    """A measurement kind's run: one flag per input of x (on the CPU), the model in eval mode;
    `image_seeds` (one per input) seed any random draw."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any], *,
                 device: torch.device, batch_size: int, image_seeds: list[int]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Kind:
    """One evaluation kind: what a suite names, the parameter it sweeps, and how it runs (exactly
    one of `noise`, `attack` or `measure`, or none of them for clean)."""

    name: str
    description: str
    strength: str | None  # the parameter a suite sweeps
    params: dict[str, Param] = field(default_factory=dict)
    # Checks across parameters: each returns a message when the combination is refused.
    constraints: tuple[Callable[[dict[str, Any]], str | None], ...] = ()
    # What a record's number measures: accuracy for every perturbation; other metrics are kept
    # apart from accuracies in tables and checks.
    metric: str = ACCURACY
    noise: Noise | None = None
    corruption: bool = False  # one of MNIST-C's common corruptions
    attack: attacks.Attack | None = None  # the registered attack that crafts it
    measure: Measure | None = None  # a measurement of the model itself (`metric` is not accuracy)

    def __post_init__(self) -> None:
        if sum(way is not None for way in (self.noise, self.attack, self.measure)) > 1:
            raise ValueError(f"kind {self.name!r}: give at most one of noise, attack and measure")

    @property
    def adversarial(self) -> bool:
        return self.attack is not None

    @property
    def prunable(self) -> bool:
        """An L-inf attack swept over eps: balls nest, so its sweep can be pruned."""
        return "prune" in self.params

    def batch_dependent(self, params: dict[str, Any]) -> bool:
        """Whether the number depends on how the test set is cut into batches: only for attacks
        whose library draws its randomness for a whole batch from one generator."""
        return self.attack is not None and self.attack.batch_dependent(params)


def attack_kind(attack: attacks.Attack) -> Kind:
    """The evaluation kind of a registered attack: swept over eps, its sweep prunable."""
    return Kind(attack.name, attack.description, "eps", {**attack.params, "prune": PRUNE}, attack.constraints,
                attack=attack)


_REGISTERED: Registry[Kind] = Registry("evaluation kind")  # the kinds registered here (attacks: their registry)
_ATTACK_KINDS: dict[str, tuple[attacks.Attack, Kind]] = {}  # each attack's kind, made once


def _kind_of_attack(attack: attacks.Attack) -> Kind:
    made = _ATTACK_KINDS.get(attack.name)
    if made is None or made[0] is not attack:
        made = _ATTACK_KINDS[attack.name] = (attack, attack_kind(attack))
    return made[1]


class _Kinds(Mapping[str, Kind]):
    """Every evaluation kind by name, live: the kinds registered here and one per registered
    attack, listed plain kinds first, then attacks, then corruptions."""

    def __getitem__(self, name: str) -> Kind:
        if name in attacks.ATTACKS:
            if name in _REGISTERED:
                raise ValueError(f"{name!r} is registered both as an attack and as an evaluation kind")
            return _kind_of_attack(attacks.attack_of(name))
        return _REGISTERED[name]

    def __iter__(self) -> Iterator[str]:
        names = [n for n, k in _REGISTERED.items() if not k.corruption]
        names += [n for n in attacks.ATTACKS if n not in _REGISTERED]
        names += [n for n, k in _REGISTERED.items() if k.corruption]
        return iter(names)

    def __len__(self) -> int:
        return len(_REGISTERED) + sum(1 for n in attacks.ATTACKS if n not in _REGISTERED)

    def __contains__(self, name: object) -> bool:
        return name in _REGISTERED or name in attacks.ATTACKS


KINDS: Mapping[str, Kind] = _Kinds()


def register_kind(kind: Kind) -> Kind:
    """Add an evaluation kind that is not an attack (an attack registers through
    `attacks.register` and appears here by itself); a name already taken is refused."""
    if kind.attack is not None:
        raise ValueError(f"{kind.name}: register the attack with attacks.register, not as a kind")
    if kind.name in KINDS:
        raise ValueError(f"evaluation kind {kind.name!r} is already registered; pick another name")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", kind.name):
        raise ValueError(f"kind name {kind.name!r} cannot appear in a spec string; use [a-z][a-z0-9_-]*")
    return _REGISTERED.add(kind.name, kind)


def unregister_kind(name: str) -> Kind:
    """Remove a kind registered with `register_kind` (for tests) and return it."""
    return _REGISTERED.remove(name)


def kind_of(name: str) -> Kind:
    if name not in KINDS:
        raise UserError(f"unknown evaluation {name!r}; valid: {', '.join(KINDS)}")
    return KINDS[name]


def resolve(kind_name: str, given: dict[str, Any], info: DatasetInfo, where: str = "") -> dict[str, Any]:
    """Every parameter of the kind, defaults filled in; unknown names and bad values refused."""
    kind = kind_of(kind_name)
    prefix = f"{where}{kind_name}: " if where else f"{kind_name}: "
    unknown = set(given) - set(kind.params)
    if unknown:
        raise UserError(
            f"{prefix}unknown parameter(s) {', '.join(sorted(unknown))}; valid: {', '.join(kind.params) or 'none'}"
        )
    params = {name: given.get(name, p.default) for name, p in kind.params.items()}
    if "early_stop" in params and "early_stop" not in given and params.get("backend") == "foolbox":
        params["early_stop"] = False  # foolbox attacks every image for every step
    for name, p in kind.params.items():
        if not p.check(params[name], info):
            raise UserError(f"{prefix}{name}={params[name]!r} is out of range; valid: {p.valid}")
    for constraint in kind.constraints:
        message = constraint(params)
        if message:
            raise UserError(f"{prefix}{message}")
    for name, p in kind.params.items():  # 1 and 1.0 must give one spec string
        value = params[name]
        if isinstance(value, int) and not isinstance(value, bool) and (isinstance(p.default, float) or p is ALPHA):
            params[name] = float(value)
    return params


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def spec_string(kind: str, params: dict[str, Any]) -> str:
    return f"{kind}({','.join(f'{k}={_fmt(v)}' for k, v in sorted(params.items()))})"


_SPEC = re.compile(r"^\s*([a-z][a-z0-9_-]*)\s*(?:\((.*)\))?\s*$")


def _value(text: str) -> Any:
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """`pgd(eps=0.3, steps=40)` -> ("pgd", {"eps": 0.3, "steps": 40})."""
    match = _SPEC.match(text)
    if not match:
        raise UserError(f"cannot read evaluation spec {text!r}; expected e.g. pgd(eps=0.3,steps=40)")
    name, args = match.group(1), match.group(2) or ""
    params = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise UserError(f"in {text!r}: {part!r} is not key=value")
        params[key.strip()] = _value(value)
    return name, params


def _paper_value(info: DatasetInfo) -> torch.Tensor:
    """The paper's pixel-noise value per channel: the dataset's mean + 2 std, at most 1."""
    return (torch.tensor(info.mean) + 2 * torch.tensor(info.std)).clamp(max=1.0)


def perturb(
    kind_name: str,
    params: dict[str, Any],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    info: DatasetInfo,
    image_seeds: list[int],
) -> torch.Tensor:
    """The batch under one random-noise evaluation (or clean). Noise is drawn per image from
    `image_seeds`, so a number never depends on the batch size. Attacks are crafted by
    `attacks.craft_batches` (`executor.perturbed_set`)."""
    kind = kind_of(kind_name)
    if kind.adversarial:
        raise ValueError(f"{kind_name} is an attack: craft it with attacks.craft_batches")
    if kind.noise is None:  # clean
        return x
    with torch.inference_mode():
        return kind.noise(x, params, info, [generator(s) for s in image_seeds])


# --- measurements of the model itself (kinds whose metric is not an accuracy) -------------------

def _batches(x: torch.Tensor, device: torch.device, batch_size: int) -> list[torch.Tensor]:
    return [x[i : i + batch_size].to(device) for i in range(0, len(x), batch_size)]


def deterministic_flags(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int,
                        runs: int = DETERMINISM_RUNS) -> torch.Tensor:
    """Per input: do `runs` forward passes agree within RANDOM_TOLERANCE? (AutoAttack's check for
    randomised defences, which need EOT rather than plain gradients.)"""
    flags = []
    with torch.inference_mode():
        for xb in _batches(x, device, batch_size):
            outs = [model(xb).flatten(1) for _ in range(runs)]
            spread = torch.stack([(o - outs[0]).abs().amax(dim=1) for o in outs[1:]]).amax(dim=0)
            flags.append((spread <= RANDOM_TOLERANCE).cpu())
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def probability_rows(out: torch.Tensor, tolerance: float = 1e-4) -> torch.Tensor:
    """Per row: in [0, 1] and summing to 1 (softmax output, not logits)."""
    in_range = ((out >= -tolerance) & (out <= 1 + tolerance)).all(dim=1)
    return in_range & ((out.sum(dim=1) - 1).abs() <= tolerance)


def logit_flags(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Per input: is the model's output row something other than a probability vector?"""
    with torch.inference_mode():
        flags = [(~probability_rows(model(xb))).cpu() for xb in _batches(x, device, batch_size)]
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def live_gradient_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any], *,
                        device: torch.device, batch_size: int, image_seeds: list[int]) -> torch.Tensor:
    """Per input: is the input gradient usable (non-zero, finite)? At x, or with eps > 0 at a
    random start in the eps-ball, as PGD and APGD begin (AutoAttack's check)."""
    eps = params.get("eps", 0.0)
    if eps > 0:
        x = noise.uniform_ball(x, eps, [generator(s) for s in image_seeds])
    zero, nonfinite = attacks.live_gradients(model, x, y, device, batch_size)
    return ~(zero | nonfinite)


def _determinism(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any], *,
                 device: torch.device, batch_size: int, image_seeds: list[int]) -> torch.Tensor:
    return deterministic_flags(model, x, device, batch_size)


def _logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any], *,
            device: torch.device, batch_size: int, image_seeds: list[int]) -> torch.Tensor:
    return logit_flags(model, x, device, batch_size)


# --- the kinds that are not attacks, in the order `rbs evaluations` lists them -------------------

register_kind(Kind("clean", "no perturbation", None))
register_kind(Kind(
    "gradients", "share of inputs whose input gradient is non-zero and finite (not an accuracy); at "
    "x itself, or at a random start in the eps-ball (where PGD and APGD start)", None,
    {"eps": Param(0.0, number(0, 1), "0 (at x) or 0 < eps <= 1 (at x + U(-eps, eps), clipped)")},
    metric="live-gradient share", measure=live_gradient_flags,
))
register_kind(Kind(
    "determinism", f"share of inputs whose logits agree (within {RANDOM_TOLERANCE:g}) over "
    f"{DETERMINISM_RUNS} forward passes (not an accuracy; AutoAttack's randomised-model check)", None,
    metric="deterministic share", measure=_determinism,
))
register_kind(Kind(
    "logits", "share of inputs whose output row is not a probability vector (rows in [0, 1] summing "
    "to 1: softmax output; not an accuracy)", None,
    metric="logit-output share", measure=_logits,
))
register_kind(Kind("gaussian", "x + sigma N(0,1), clipped", "sigma", {"sigma": Param(0.0, number(0), "sigma >= 0")},
                   noise=lambda x, p, info, gens: noise.gaussian_noise(x, p["sigma"], gens)))
register_kind(Kind("blend", "(1 - eta) x + eta U(0,1)", "eta", {"eta": Param(0.0, number(0, 1), "0 <= eta <= 1")},
                   noise=lambda x, p, info, gens: noise.blend_noise(x, p["eta"], gens)))
register_kind(Kind(
    "pixel",
    "floor(eta * pixels) pixels set to mean + 2 std (the paper's protocol), or the forum's variants",
    "eta",
    {
        "eta": Param(0.0, number(0, 1), "0 <= eta <= 1"),
        "fill": Param("paper", choice("paper", "uniform", "half"),
                      "paper (the dataset's mean + 2 std), uniform (U(0,1) per chosen pixel) or half (0.5)"),
    },
    noise=lambda x, p, info, gens: noise.pixel_noise(x, p["eta"], _paper_value(info), gens, p["fill"]),
))
register_kind(Kind(
    "occlusion",
    "a size x size patch at a random position",
    "size",
    {
        "size": Param(
            0,
            lambda v, info: isinstance(v, int) and 0 <= v <= min(info.shape[1:]),
            "an integer patch side from 0 to the image side",
        ),
        "fill": Param("zero", choice("zero", "noise"), "zero or noise"),
    },
    noise=lambda x, p, info, gens: noise.occlusion(x, p["size"], gens, p["fill"]),
))
for _c in corruptions.CORRUPTIONS.values():
    register_kind(Kind(
        _c.name,
        f"MNIST-C corruption: {_c.description} [{_c.source}]",
        "severity",
        {"severity": Param(
            _c.default_severity,
            lambda v, info, name=_c.name: (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5
                                           and corruptions.check_shape(name, (1, *info.shape)) is None),
            f"an integer severity 1-5 (MNIST-C's default: {_c.default_severity})"
            + (f"; {_c.name} needs 1x28x28 grey images" if _c.grey_28_only else ""),
        )},
        noise=lambda x, p, info, gens, name=_c.name: corruptions.corrupt(name, x, p["severity"], gens),
        corruption=True,
    ))
del _c

CORRUPTION_KINDS = tuple(k.name for k in KINDS.values() if k.corruption)
