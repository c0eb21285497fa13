"""The evaluation kinds: their parameters, valid ranges, canonical spec strings, and how each runs.

A spec string such as
`pgd(alpha=0.01,backend=torchattacks,bpda=none,eps=0.3,loss=ce,random_start=true,restarts=1,steps=40)`
names one evaluation at one strength completely (every default filled in, keys sorted), so it is
a stable key for results and caches.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustbench_sparse.data.datasets import DatasetInfo
from robustbench_sparse.perturb import attacks, corruptions, noise
from robustbench_sparse.runtime import UserError, generator


@dataclass(frozen=True)
class Param:
    default: Any
    check: Callable[[Any, DatasetInfo], bool]
    valid: str  # the valid range, for error messages


def _number(lo: float, hi: float | None = None) -> Callable[[Any, DatasetInfo], bool]:
    return lambda v, _: isinstance(v, int | float) and not isinstance(v, bool) and lo <= v and (hi is None or v <= hi)


def _int(lo: int) -> Callable[[Any, DatasetInfo], bool]:
    return lambda v, _: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _choice(*options: Any) -> Callable[[Any, DatasetInfo], bool]:
    return lambda v, _: v in options


def _bool() -> Callable[[Any, DatasetInfo], bool]:
    return lambda v, _: isinstance(v, bool)  # not 1 or 0: one value, one spec string


EPS = Param(0.0, _number(0, 1), "0 <= eps <= 1 (L-inf, pixel space)")
STEPS = Param(10, _int(1), "an integer >= 1")
ALPHA = Param("auto", lambda v, _: v == "auto" or _number(1e-9)(v, _), '"auto" (2.5 eps / steps) or > 0')
BACKEND = Param("torchattacks", _choice(*attacks.BACKENDS), " or ".join(attacks.BACKENDS))
BPDA = Param(
    "none", _choice(*attacks.BPDA_MODES),
    "none, relu or identity (k-winners backward: own mask, ReLU's, straight-through)",
)
EARLY_STOP = Param(
    True, _bool(),
    "true (each image stops at its first misclassified iterate; our loop, torchattacks' steps) or false "
    "(every image for every step, ending where the library's attack ends; default with backend=foolbox)",
)
PRUNE = Param(
    True, _bool(),
    "true (eps swept upwards, only images no smaller eps fooled are attacked; accuracy at eps = no eps' <= eps "
    "fooled it) or false (every eps attacks every image); a suite's `prune` sets the default",
)


def _early_stop_needs_torchattacks(params: dict[str, Any]) -> str | None:
    if params.get("backend") == "foolbox" and params.get("early_stop"):
        return ("early_stop=true runs our loop with torchattacks' update rule; with backend=foolbox set "
                "early_stop=false (the default there)")
    return None


def _foolbox_pgd_needs_ce(params: dict[str, Any]) -> str | None:
    if params.get("backend") == "foolbox" and params.get("loss") == "margin":
        return ("loss='margin' needs backend=torchattacks (foolbox's LinfPGD attacks cross-entropy only); "
                "valid: loss=ce with backend=foolbox, or loss=ce or margin with backend=torchattacks")
    return None


ACCURACY = "accuracy"
RANDOM_TOLERANCE = 1e-4  # AutoAttack's checks.py: outputs of one input differing by more are "randomised"
DETERMINISM_RUNS = 5


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    strength: str | None  # the parameter a suite sweeps
    params: dict[str, Param] = field(default_factory=dict)
    # Checks across parameters: each returns a message when the combination is refused.
    constraints: tuple[Callable[[dict[str, Any]], str | None], ...] = ()
    # What a record's number measures: accuracy for every perturbation; other metrics are kept
    # apart from accuracies in tables and checks.
    metric: str = ACCURACY
    # The random-noise kinds: (x, params, info, per-image generators) -> perturbed x.
    noise: Callable[[torch.Tensor, dict[str, Any], DatasetInfo, list[torch.Generator]], torch.Tensor] | None = None
    corruption: bool = False  # one of MNIST-C's common corruptions

    @property
    def adversarial(self) -> bool:
        return self.name in attacks.ATTACKS

    @property
    def prunable(self) -> bool:
        """An L-inf attack swept over eps: balls nest, so its sweep can be pruned."""
        return "prune" in self.params

    def batch_dependent(self, params: dict[str, Any]) -> bool:
        """Whether the number depends on how the test set is cut into batches: only for attacks
        whose library draws its randomness for a whole batch from one generator."""
        return self.adversarial and attacks.batch_dependent(self.name, params)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("clean", "no perturbation", None),
        Kind("gradients", "share of inputs whose input gradient is non-zero and finite (not an accuracy); at "
             "x itself, or at a random start in the eps-ball (where PGD and APGD start)", None,
             {"eps": Param(0.0, _number(0, 1), "0 (at x) or 0 < eps <= 1 (at x + U(-eps, eps), clipped)")},
             metric="live-gradient share"),
        Kind("determinism", f"share of inputs whose logits agree (within {RANDOM_TOLERANCE:g}) over "
             f"{DETERMINISM_RUNS} forward passes (not an accuracy; AutoAttack's randomised-model check)", None,
             metric="deterministic share"),
        Kind("logits", "share of inputs whose output row is not a probability vector (rows in [0, 1] summing "
             "to 1: softmax output; not an accuracy)", None, metric="logit-output share"),
        Kind("gaussian", "x + sigma N(0,1), clipped", "sigma", {"sigma": Param(0.0, _number(0), "sigma >= 0")},
             noise=lambda x, p, info, gens: noise.gaussian_noise(x, p["sigma"], gens)),
        Kind("blend", "(1 - eta) x + eta U(0,1)", "eta", {"eta": Param(0.0, _number(0, 1), "0 <= eta <= 1")},
             noise=lambda x, p, info, gens: noise.blend_noise(x, p["eta"], gens)),
        Kind(
            "pixel",
            "floor(eta * pixels) pixels set to mean + 2 std (the paper's protocol), or the forum's variants",
            "eta",
            {
                "eta": Param(0.0, _number(0, 1), "0 <= eta <= 1"),
                "fill": Param("paper", _choice("paper", "uniform", "half"),
                              "paper (the dataset's mean + 2 std), uniform (U(0,1) per chosen pixel) or half (0.5)"),
            },
            noise=lambda x, p, info, gens: noise.pixel_noise(x, p["eta"], _paper_value(info), gens, p["fill"]),
        ),
        Kind(
            "occlusion",
            "a size x size patch at a random position",
            "size",
            {
                "size": Param(
                    0,
                    lambda v, info: isinstance(v, int) and 0 <= v <= min(info.shape[1:]),
                    "an integer patch side from 0 to the image side",
                ),
                "fill": Param("zero", _choice("zero", "noise"), "zero or noise"),
            },
            noise=lambda x, p, info, gens: noise.occlusion(x, p["size"], gens, p["fill"]),
        ),
        Kind("fgsm", "one signed-gradient step of size eps", "eps",
             {"eps": EPS, "backend": BACKEND, "bpda": BPDA, "prune": PRUNE}),
        Kind(
            "ifgsm", "iterative FGSM (BIM)", "eps",
            {"eps": EPS, "steps": STEPS, "alpha": ALPHA, "backend": BACKEND, "bpda": BPDA,
             "early_stop": EARLY_STOP, "prune": PRUNE},
            (_early_stop_needs_torchattacks,),
        ),
        Kind(
            "mifgsm",
            "momentum iterative FGSM",
            "eps",
            {
                "eps": EPS, "steps": STEPS, "alpha": ALPHA,
                "decay": Param(1.0, _number(0), "decay >= 0"),
                "backend": Param("torchattacks", _choice("torchattacks"), "torchattacks (foolbox has no MI-FGSM)"),
                "bpda": BPDA,
                "early_stop": EARLY_STOP,
                "prune": PRUNE,
            },
        ),
        Kind(
            "pgd",
            "projected gradient descent with a random start (per-sample worst case over restarts)",
            "eps",
            {
                "eps": EPS, "steps": Param(40, _int(1), "an integer >= 1"), "alpha": ALPHA,
                "random_start": Param(True, _bool(), "true or false"),
                "backend": BACKEND,
                "bpda": BPDA,
                "restarts": Param(1, _int(1), "an integer >= 1 (runs with derived seeds, worst case per sample)"),
                "loss": Param(
                    "ce", _choice(*attacks.PGD_LOSSES),
                    "ce (cross-entropy) or margin (max_{j != y} z_j - z_y on the logits)",
                ),
                "early_stop": EARLY_STOP,
                "prune": PRUNE,
            },
            (_foolbox_pgd_needs_ce, _early_stop_needs_torchattacks),
        ),
        Kind(
            "square",
            "Square attack: gradient-free random search on the margin loss",
            "eps",
            {
                "eps": EPS,
                "n_queries": Param(1000, _int(1), "an integer >= 1"),
                "p_init": Param(0.8, lambda v, _: _number(0, 1)(v, _) and v > 0, "0 < p_init <= 1"),
                "backend": Param("torchattacks", _choice("torchattacks"), "torchattacks (foolbox has no Square)"),
                "prune": PRUNE,
            },
        ),
        Kind(
            "apgd",
            "APGD (Croce & Hein 2020; torchattacks): PGD with an adaptive step size, cross-entropy or DLR loss",
            "eps",
            {
                "eps": EPS,
                "steps": Param(100, _int(1), "an integer >= 1 (AutoAttack's APGD: 100)"),
                "loss": Param("ce", _choice(*attacks.APGD_LOSSES), "ce (cross-entropy) or dlr (difference of "
                              "logits ratio, scale-invariant; needs >= 3 classes)"),
                "backend": Param("torchattacks", _choice("torchattacks"), "torchattacks (foolbox has no APGD)"),
                "bpda": BPDA,
                "prune": PRUNE,
            },
        ),
        Kind(
            "autoattack",
            "standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square; each later attack on the images still "
            "correct, robust accuracy = the per-image worst case",
            "eps",
            {
                "eps": EPS,
                "steps": Param(100, _int(1), "an integer >= 1: iterations of APGD, APGD-T and FAB-T (original: 100)"),
                "n_queries": Param(5000, _int(1), "an integer >= 1: Square's queries (original: 5000)"),
                "backend": Param("torchattacks", _choice("torchattacks"), "torchattacks (foolbox has no AutoAttack)"),
                "bpda": BPDA,
                "prune": PRUNE,
            },
        ),
        *[
            Kind(
                c.name,
                f"MNIST-C corruption: {c.description} [{c.source}]",
                "severity",
                {"severity": Param(
                    c.default_severity,
                    lambda v, info, name=c.name: (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5
                                                  and corruptions.check_shape(name, (1, *info.shape)) is None),
                    f"an integer severity 1-5 (MNIST-C's default: {c.default_severity})"
                    + (f"; {c.name} needs 1x28x28 grey images" if c.grey_28_only else ""),
                )},
                noise=lambda x, p, info, gens, name=c.name: corruptions.corrupt(name, x, p["severity"], gens),
                corruption=True,
            )
            for c in corruptions.CORRUPTIONS.values()
        ],
    ]
}

CORRUPTION_KINDS = tuple(k.name for k in KINDS.values() if k.corruption)


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
