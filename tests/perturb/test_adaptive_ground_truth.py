"""The adaptive attacks against models whose answer is known: FD-PGD (finite differences, forward
passes only) and the smooth surrogate of the k-winners mask must break a net whose gradients are
useless but whose decisions are a smooth net's, and must neither invent nor lose robustness on a
plain ReLU net."""

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_sparse.analysis.adaptive import verdict_table
from robustbench_sparse.analysis.diagnostics import masking_checks
from robustbench_sparse.data.datasets import dataset_info
from robustbench_sparse.evaluation.cells import encode_flags
from robustbench_sparse.evaluation.kinds import kind_of, parse_spec, resolve, spec_string
from robustbench_sparse.perturb.attacks import bpda_backward, check_budget, craft, craft_batches
from robustbench_sparse.perturb.attacks.finite_difference import forward_passes, stage_samples
from robustbench_sparse.runtime import UserError, eval_mode
from robustbench_sparse.training.train import predict
from robustbench_sparse.zoo.checkpoints import load_checkpoint
from robustbench_sparse.zoo.sparse import kwinner_layers
from robustbench_sparse.zoo.spec import load_zoo, select_models

CPU = torch.device("cpu")
INFO = dataset_info("mnist5k")
EPS = 0.1
FD = {"eps": EPS, "steps": 100, "alpha": 0.01, "sigma": 0.05, "samples": 100, "stages": 1, "tile": 1, "first": "none"}
PGD = {"eps": EPS, "steps": 40, "alpha": 0.01}


def _model(paths, name):
    spec = select_models(load_zoo(paths.zoo_spec), "mnist5k", [name])[0]
    return load_checkpoint(paths, spec, INFO, 0)[0]


def _accuracy(model, x, y):
    return (predict(model, x, CPU) == y).float().mean().item() * 100


def _attack(model, kind, params, x, y, seed=0):
    with eval_mode(model):
        adv = craft(model, kind, resolve(kind, params, INFO), x, y, seed=seed)
    check_budget(x, adv, params["eps"])
    return adv


class _NoGradient(torch.autograd.Function):
    """The identity forward, a zero backward: a perfect gradient mask that changes no decision."""

    @staticmethod
    def forward(ctx, z):
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class Masked(nn.Module):
    """A smooth net behind a gradient-killing step: the same logits, so the same decisions."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return _NoGradient.apply(self.net(x))


class HardActivation(nn.Module):
    """ReLU whose backward is zero, declared a k-winners layer (every positive unit wins), so BPDA
    and the surrogate act on it through the forward hook."""

    rbs_kwinners = True

    def forward(self, z):
        return _NoGradient.apply(torch.relu(z))


def _mlp(activation):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), activation, nn.Linear(64, 10))


@pytest.fixture(scope="module")
def twins(small_mnist):
    """A small ReLU net trained on 1,000 digits, and its twin with the gradient-killing activation
    (same weights, same forward)."""
    torch.manual_seed(0)
    smooth = _mlp(nn.ReLU())
    optimiser = torch.optim.Adam(smooth.parameters(), lr=1e-3)
    for _ in range(3):
        for i in range(0, 1000, 50):
            optimiser.zero_grad()
            nn.functional.cross_entropy(smooth(small_mnist.train_x[i : i + 50]), small_mnist.train_y[i : i + 50]).backward()
            optimiser.step()
    hard = _mlp(HardActivation())
    hard.load_state_dict(smooth.state_dict())
    return smooth.eval(), hard.eval()


def test_fd_pgd_is_a_kind_with_checked_parameters():
    kind = kind_of("fd-pgd")
    assert kind.adversarial and kind.strength == "eps" and kind.prunable
    assert "backend" not in kind.params and "bpda" not in kind.params  # our own code, forward passes only
    params = resolve("fd-pgd", {"eps": 0.2}, INFO)
    assert parse_spec(spec_string("fd-pgd", params)) == ("fd-pgd", params)
    assert stage_samples(params) == [50]  # one stage by default
    assert stage_samples({**params, "stages": 3}) == [50, 500, 5000]  # Tramer et al.'s schedule, tenfold
    assert forward_passes({**params, "steps": 1, "samples": 2, "stages": 1}) == 6
    for bad in ({"sigma": 0}, {"sigma": 2.0}, {"samples": 0}, {"samples": 1.5}, {"stages": 5}, {"alpha": 0},
                {"steps": 0}, {"backend": "torchattacks"}, {"bpda": "relu"}):
        with pytest.raises(UserError, match="out of range|unknown parameter"):
            resolve("fd-pgd", {"eps": 0.1, **bad}, INFO)


def test_sigmoid_bpda_modes_are_checked_and_round_trip():
    params = resolve("pgd", {"eps": 0.1, "bpda": "sigmoid:0.3"}, INFO)
    assert parse_spec(spec_string("pgd", params))[1]["bpda"] == "sigmoid:0.3"
    assert resolve("apgd", {"eps": 0.1, "bpda": "sigmoid"}, INFO)["bpda"] == "sigmoid"
    for bad in ("sigmoid:0", "sigmoid:-1", "sigmoid:x", "sigmoid:1000", "softmax"):
        with pytest.raises(UserError, match="bpda="):
            resolve("pgd", {"eps": 0.1, "bpda": bad}, INFO)


def test_fd_pgd_breaks_a_masked_net_as_pgd_breaks_its_smooth_twin(twins, mnist5k):
    smooth, _ = twins
    masked = Masked(smooth).eval()
    x, y = mnist5k.test_x[:40], mnist5k.test_y[:40]
    clean = _accuracy(smooth, x, y)
    assert _accuracy(masked, x, y) == clean
    pgd_smooth = _accuracy(smooth, _attack(smooth, "pgd", PGD, x, y), y)
    pgd_masked = _accuracy(masked, _attack(masked, "pgd", PGD, x, y), y)
    assert pgd_masked >= clean - 10  # the gradients are useless: only PGD's random start moves
    assert pgd_smooth <= clean - 30
    fd_masked = _attack(masked, "fd-pgd", FD, x, y)
    assert torch.equal(fd_masked, _attack(smooth, "fd-pgd", FD, x, y))  # forward passes only: one attack
    assert _accuracy(masked, fd_masked, y) <= pgd_smooth + 10  # measured: within a few points
    # with a margin PGD first (the suite's way), the masked net's PGD finds nothing and FD does the work
    both = _attack(masked, "fd-pgd", {**FD, "first": "pgd"}, x, y)
    assert _accuracy(masked, both, y) <= pgd_smooth + 10
    # on the smooth twin the PGD part already fools what PGD fools (its own random starts: a few
    # images either way)
    assert _accuracy(smooth, _attack(smooth, "fd-pgd", {**FD, "first": "pgd"}, x, y), y) <= pgd_smooth + 10


def test_the_surrogate_breaks_a_gradient_killing_activation(twins, mnist5k):
    smooth, hard = twins
    x, y = mnist5k.test_x[:40], mnist5k.test_y[:40]
    with torch.no_grad():
        assert torch.equal(hard(x), smooth(x))
    pgd_smooth = _accuracy(smooth, _attack(smooth, "pgd", PGD, x, y), y)
    assert _accuracy(hard, _attack(hard, "pgd", PGD, x, y), y) >= _accuracy(hard, x, y) - 10
    for mode in ("sigmoid", "relu"):
        adv = _attack(hard, "pgd", {**PGD, "bpda": mode}, x, y)
        assert _accuracy(hard, adv, y) <= pgd_smooth + 10, mode


def test_adaptive_attacks_neither_invent_nor_lose_robustness_on_a_relu_net(trained_home, mnist5k):
    dense = _model(trained_home, "dense")  # no k-winners layer: BPDA and the surrogate change nothing
    x, y = mnist5k.test_x[:40], mnist5k.test_y[:40]
    pgd = _attack(dense, "pgd", PGD, x, y)
    for mode in ("relu", "identity", "sigmoid"):
        assert torch.equal(_attack(dense, "pgd", {**PGD, "bpda": mode}, x, y), pgd), mode
    fd = _accuracy(dense, _attack(dense, "fd-pgd", FD, x, y), y)
    assert abs(fd - _accuracy(dense, pgd, y)) <= 10


def test_fd_pgd_is_seeded_per_image_and_early_stopped(trained_home, mnist5k):
    model = _model(trained_home, "kwinner")
    x, y = mnist5k.test_x[:24], mnist5k.test_y[:24]
    params = resolve("fd-pgd", {**FD, "steps": 10, "samples": 5, "stages": 2}, INFO)
    seeds = list(range(100, 124))
    with eval_mode(model):
        whole = craft_batches(model, "fd-pgd", params, x, y, [0], seeds, 24)
        batched = craft_batches(model, "fd-pgd", params, x, y, [0, 1, 2], seeds, 8)
        todo = torch.zeros(24, dtype=torch.bool)
        todo[5:17] = True
        some = craft_batches(model, "fd-pgd", params, x, y, [0], seeds, 24, todo=todo)
        zero = craft_batches(model, "fd-pgd", {**params, "eps": 0.0}, x, y, [0], seeds, 24)
        fooled = predict(model, whole, CPU) != y
    assert torch.equal(whole, batched)
    warm = {**params, "first": "pgd"}
    with eval_mode(model):
        assert torch.equal(craft_batches(model, "fd-pgd", warm, x, y, [0], seeds, 24),
                           craft_batches(model, "fd-pgd", warm, x, y, [0, 1, 2], seeds, 8))
    assert torch.equal(some[todo], whole[todo]) and torch.equal(some[~todo], x[~todo])
    assert torch.equal(zero, x)
    # an image stops at its first misclassified iterate: with twice the steps, every image the
    # shorter run fooled ends exactly where it did
    one = resolve("fd-pgd", {**FD, "steps": 10, "samples": 5, "stages": 1}, INFO)
    with eval_mode(model):
        short = craft_batches(model, "fd-pgd", one, x, y, [0], seeds, 24)
        longer = craft_batches(model, "fd-pgd", {**one, "steps": 20}, x, y, [0], seeds, 24)
        hit = predict(model, short, CPU) != y
    assert hit.any() and fooled.sum() >= hit.sum()
    assert torch.equal(longer[hit], short[hit])
    check_budget(x, whole, EPS)


def test_surrogate_keeps_the_forward_and_gives_a_finite_new_gradient(trained_home, mnist5k):
    model = _model(trained_home, "kwinner-boost")
    x, y = mnist5k.test_x[:16], mnist5k.test_y[:16]

    def grad():
        z = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(z), y), z)
        return g

    with eval_mode(model):
        with torch.no_grad():
            logits = model(x)
        true = grad()
        for mode in ("sigmoid", "sigmoid:0.01", "sigmoid:3"):
            with bpda_backward(model, mode):
                assert all(layer.bpda == mode for layer in kwinner_layers(model))
                with torch.no_grad():
                    assert torch.equal(model(x), logits)
                g = grad()
            assert torch.isfinite(g).all() and not torch.equal(g, true), mode
        assert all(layer.bpda is None for layer in kwinner_layers(model))


def _record(model, evaluation, kind, spec, flags, eps=0.2):
    flags = torch.tensor(flags, dtype=torch.bool)
    return {"model": model, "seed": 0, "evaluation": evaluation, "kind": kind, "spec": spec, "strength": eps,
            "source": model, "n": len(flags), "correct": int(flags.sum()), "accuracy": float(flags.float().mean()),
            "metric": "accuracy", "flags": encode_flags(flags), "param": "eps"}


def test_verdict_and_check_11_read_the_adaptive_attacks():
    dense = [True] * 10 + [False] * 90
    standard = [True] * 40 + [False] * 60  # k-winners +30 points over dense under AutoAttack
    finite = [True] * 12 + [False] * 88  # FD-PGD takes 28 more images: the edge is 2 points
    aa = "autoattack(bpda=none,eps=0.2)"
    rows = [_record("dense", "autoattack", "autoattack", aa, dense),
            _record("dense", "fd-pgd", "fd-pgd", "fd-pgd(eps=0.2)", dense),
            _record("kwinner", "autoattack", "autoattack", aa, standard),
            _record("kwinner", "pgd-bpda", "pgd", "pgd(bpda=relu,eps=0.2)", standard),
            _record("kwinner", "fd-pgd", "fd-pgd", "fd-pgd(eps=0.2)", finite)]
    records = pd.DataFrame(rows)
    table = verdict_table(records, "dense").set_index("model")
    assert table.loc["kwinner", "standard %"] == 40 and table.loc["kwinner", "every attack %"] == 12
    assert table.loc["kwinner", "found the last points"] == "fd-pgd 28"
    assert table.loc["kwinner", "verdict"].startswith("the edge vanishes under fd-pgd")
    assert table.loc["kwinner", "vs ref (standard)"] == pytest.approx(30)
    assert table.loc["kwinner", "vs ref (every attack)"] == pytest.approx(2)
    checks = masking_checks(records).set_index(["model", "check"])
    assert checks.loc[("kwinner", "11. an adaptive attack beats the standard ones"), "status"] == "fired"
    assert checks.loc[("dense", "11. an adaptive attack beats the standard ones"), "status"] == "passed"
    kept = pd.DataFrame(rows[:3] + [_record("kwinner", "fd-pgd", "fd-pgd", "fd-pgd(eps=0.2)", standard)])
    assert verdict_table(kept, "dense").set_index("model").loc["kwinner", "verdict"] == (
        "kwinner keeps +30.0 points over dense at ε = 0.2 (significant)")
