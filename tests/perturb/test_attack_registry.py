"""Adding an attack is one definition and one registration: a toy attack registered here is listed,
validated, crafted (its budget enforced) and run in a suite like the shipped ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from robustbench_sparse.data.datasets import dataset_info
from robustbench_sparse.evaluation.kinds import KINDS, Kind, kind_of, register_kind, resolve, unregister_kind
from robustbench_sparse.evaluation.suites import parse_suite
from robustbench_sparse.execution import executor
from robustbench_sparse.perturb import attacks
from robustbench_sparse.perturb.attacks import ATTACKS, LABELS, Attack, BudgetViolation, craft, register, unregister
from robustbench_sparse.perturb.params import Param, integer
from robustbench_sparse.runtime import UserError

INFO = dataset_info("mnist5k")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class RandomSign(Attack):
    """One step to a random corner of the eps-ball: x' = clamp(x + eps * s, 0, 1), s uniform in
    {-1, +1} per pixel, drawn for the whole batch from the seeded global RNG (`Attack.run`)."""

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> attacks.LibraryAttack:
        def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            signs = torch.randint(0, 2, x.shape).to(x) * 2 - 1
            return (x + params["eps"] * signs).clamp(0, 1)

        return run

    def batch_dependent(self, params: dict[str, Any]) -> bool:
        return True  # one draw for the whole batch


@dataclass(frozen=True)
class Overshoot(Attack):
    """A broken attack: it steps twice its budget."""

    def build(self, backend: str, model: nn.Module, params: dict[str, Any], seed: int = 0) -> attacks.LibraryAttack:
        return lambda x, y: (x + 2 * params["eps"]).clamp(0, 1)


TOY = RandomSign("randsign", "RandomSign", "one step to a random corner of the eps-ball (a test attack)",
                 {"repeats": Param(1, integer(1), "an integer >= 1 (unused)")}, gradients=False)


@pytest.fixture
def toy():
    register(TOY)
    try:
        yield TOY
    finally:
        unregister(TOY.name)


def _tiny_model_and_data(n: int = 200) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear classifier on 4x4 images (class 0 iff the mean pixel is above 0.5) and images near
    its boundary, labelled as it labels them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.ones(16), -torch.ones(16)]) / 16)
        model[1].bias.copy_(torch.tensor([-0.5, 0.5]))
    x = (0.5 + 0.2 * (torch.rand(n, 1, 4, 4) - 0.5)).clamp(0, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_a_registered_attack_is_an_evaluation_kind_with_the_shared_parameters(toy):
    assert "randsign" in ATTACKS and list(ATTACKS)[-1] == "randsign" and LABELS["randsign"] == "RandomSign"
    kind = KINDS["randsign"]
    assert kind is kind_of("randsign") and kind.adversarial and kind.attack is toy and kind.strength == "eps"
    assert list(kind.params) == ["eps", "repeats", "backend", "prune"]  # no bpda: it follows no gradient
    assert kind.batch_dependent({}) and kind.prunable
    assert list(KINDS).index("randsign") == list(KINDS).index("fd-pgd") + 1  # after the shipped attacks
    params = resolve("randsign", {"eps": 0.1}, INFO)
    assert params == {"eps": 0.1, "repeats": 1, "backend": "torchattacks", "prune": True}


@pytest.mark.parametrize(
    "given, message",
    [
        ({"eps": 1.5}, "eps=1.5 is out of range; valid: 0 <= eps <= 1"),
        ({"eps": 0.1, "repeats": 0}, "repeats=0 is out of range; valid: an integer >= 1"),
        ({"eps": 0.1, "backend": "foolbox"}, "backend='foolbox' is out of range; valid: torchattacks (foolbox has no RandomSign)"),
        ({"eps": 0.1, "bpda": "relu"}, "unknown parameter(s) bpda; valid: eps, repeats, backend, prune"),
    ],
)
def test_a_registered_attack_is_validated_like_every_kind(toy, given, message):
    with pytest.raises(UserError) as err:
        resolve("randsign", given, INFO)
    assert message in str(err.value)


def test_a_registered_attack_is_crafted_within_its_budget(toy):
    model, x, y = _tiny_model_and_data()
    clean = _accuracy(model, x, y)
    assert clean == 1.0
    state = torch.random.get_rng_state()
    for eps in (0.01, 0.1, 0.3):
        adv = craft(model, "randsign", {"eps": eps}, x, y, seed=1)
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert torch.equal(adv, craft(model, "randsign", {"eps": eps}, x, y, seed=1))  # seeded
        assert not torch.equal(adv, craft(model, "randsign", {"eps": eps}, x, y, seed=2))
        assert _accuracy(model, adv, y) <= clean
    assert _accuracy(model, craft(model, "randsign", {"eps": 0.3}, x, y, seed=1), y) < 0.9 * clean
    assert torch.equal(craft(model, "randsign", {"eps": 0.0}, x, y, seed=1), x)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    with pytest.raises(UserError, match="randsign has no foolbox version"):
        craft(model, "randsign", {"eps": 0.1, "backend": "foolbox"}, x, y, seed=1)


def test_an_attack_that_leaves_its_budget_is_stopped():
    model, x, y = _tiny_model_and_data(20)
    register(Overshoot("overshoot", "Overshoot", "steps twice its budget (a test attack)", gradients=False))
    try:
        with pytest.raises(BudgetViolation, match="exceeded its budget"):
            craft(model, "overshoot", {"eps": 0.1}, x, y, seed=0)
    finally:
        unregister("overshoot")


def test_a_registered_attack_runs_as_a_suite_evaluation(toy):
    suite = parse_suite('[[evaluations]]\nkind = "randsign"\neps = [0.0, 0.3]\n', "toy", INFO)
    evaluation = suite.evaluation("randsign")
    assert evaluation.spec(0.3) == "randsign(backend=torchattacks,eps=0.3,prune=true,repeats=1)"
    model, x, y = _tiny_model_and_data(40)
    flags = {s: executor.correct_flags(model, evaluation, s, x, y, INFO, CPU, 0, 20) for s in evaluation.strengths}
    assert bool(flags[0.0].all()) and flags[0.3].sum() < flags[0.0].sum()


def test_an_unregistered_attack_is_gone_everywhere():
    register(TOY)
    unregister("randsign")
    assert "randsign" not in ATTACKS and "randsign" not in KINDS and "randsign" not in LABELS
    with pytest.raises(UserError, match="unknown evaluation 'randsign'; valid: clean, "):
        kind_of("randsign")
    with pytest.raises(UserError, match="unknown attack 'randsign'; valid: fgsm, ifgsm"):
        attacks.attack_of("randsign")


def test_a_name_is_registered_once(toy):
    with pytest.raises(ValueError, match="'randsign' is already registered"):
        register(RandomSign("randsign", "Again", "a second attack of the same name"))
    with pytest.raises(ValueError, match="'pgd' is already registered"):
        register(RandomSign("pgd", "PGD", "a shipped name"))
    with pytest.raises(ValueError, match="'gaussian' is already registered"):
        register_kind(Kind("gaussian", "a shipped kind's name", None))
    with pytest.raises(ValueError, match="'randsign' is already registered"):
        register_kind(Kind("randsign", "an attack's name", None))
    with pytest.raises(ValueError, match="cannot appear in a spec string"):
        RandomSign("Rand Sign", "RandomSign", "a name no spec string can hold")
    assert KINDS["randsign"].attack is TOY and LABELS["randsign"] == "RandomSign"


def test_a_registered_kind_is_listed_and_validated():
    kind = register_kind(Kind("shift", "x + delta, clipped (a test kind)", "delta",
                              {"delta": Param(0.0, lambda v, _: isinstance(v, float) and 0 <= v <= 1, "0 <= delta <= 1")},
                              noise=lambda x, p, info, gens: (x + p["delta"]).clamp(0, 1)))
    try:
        assert KINDS["shift"] is kind and list(KINDS).index("shift") < list(KINDS).index("fgsm")
        with pytest.raises(UserError, match="delta=2.0 is out of range"):
            resolve("shift", {"delta": 2.0}, INFO)
    finally:
        unregister_kind("shift")
    assert "shift" not in KINDS


def test_measurement_kinds_carry_their_measure_and_attacks_their_definition():
    for name in ("gradients", "determinism", "logits"):
        assert KINDS[name].measure is not None and not KINDS[name].adversarial
    for name in ATTACKS:
        assert KINDS[name].attack is attacks.attack_of(name) and KINDS[name].measure is None
    with pytest.raises(ValueError, match="at most one of noise, attack and measure"):
        Kind("both", "noise and a measure", None, noise=lambda x, p, info, gens: x,
             measure=KINDS["logits"].measure)
