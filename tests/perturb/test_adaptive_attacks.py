"""Adaptive attacks against gradient masking: BPDA through k-winners, PGD restarts and margin loss,
the gradient-free Square attack, and the gradient-health diagnostic."""

import pytest
import torch
from torch import nn

from robustbench_sparse.data.datasets import dataset_info
from robustbench_sparse.evaluation.kinds import kind_of, parse_spec, resolve, spec_string
from robustbench_sparse.evaluation.suites import parse_suite
from robustbench_sparse.execution import executor
from robustbench_sparse.perturb import attacks
from robustbench_sparse.perturb.attacks import bpda_backward, check_budget, craft, gradient_health
from robustbench_sparse.runtime import UserError, eval_mode
from robustbench_sparse.training.train import predict
from robustbench_sparse.zoo.checkpoints import load_checkpoint
from robustbench_sparse.zoo.sparse import kwinner_layers
from robustbench_sparse.zoo.spec import load_zoo, select_models

CPU = torch.device("cpu")
INFO = dataset_info("mnist5k")


def _model(paths, name):
    spec = select_models(load_zoo(paths.zoo_spec), "mnist5k", [name])[0]
    return load_checkpoint(paths, spec, INFO, 0)[0]


def _accuracy(model, x, y):
    return (predict(model, x, CPU) == y).float().mean().item() * 100


def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
        return torch.autograd.grad(loss, x)[0]


# --- a model whose gradient is masked by construction -------------------------------------------


class _Binarize(torch.autograd.Function):
    """A hard threshold at 0.5 whose backward is exactly zero (a perfect gradient mask)."""

    @staticmethod
    def forward(ctx, x):
        return (x > 0.5).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class Threshold(nn.Module):
    def forward(self, x):
        return _Binarize.apply(x)


def _halves(n=80, seed=0):
    """8x8 images: class 0 has the left half on, class 1 the right half; 10% of pixels flipped.
    Pixels are 0.4 (off) or 0.6 (on), so an eps of 0.15 can flip any of them across 0.5."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    on = torch.zeros(n, 1, 8, 8)
    on[y == 0, :, :, :4] = 1
    on[y == 1, :, :, 4:] = 1
    flip = torch.rand(n, 1, 8, 8, generator=g) < 0.1
    on = torch.where(flip, 1 - on, on)
    return 0.4 + 0.2 * on, y


def _halves_classifier():
    """Counts 'on' pixels per half: perfect on clean `_halves` data."""
    linear = nn.Linear(64, 2)
    with torch.no_grad():
        w = torch.zeros(2, 1, 8, 8)
        w[0, :, :, :4], w[0, :, :, 4:] = 1.0, -1.0
        w[1] = -w[0]
        linear.weight.copy_(w.view(2, 64))
        linear.bias.zero_()
    return linear


@pytest.fixture()
def masked():
    x, y = _halves()
    model = nn.Sequential(Threshold(), nn.Flatten(), _halves_classifier())
    return model, x, y


PGD = {"eps": 0.15, "steps": 10, "alpha": "auto", "random_start": True}


def test_gradient_masking_model_fools_pgd_but_not_square(masked):
    model, x, y = masked
    with eval_mode(model):
        clean = _accuracy(model, x, y)
        assert clean == 100.0
        assert gradient_health(model, x, y, CPU) == {"n": 80, "zero": 1.0, "nonfinite": 0.0, "dead": 1.0}
        fgsm = craft(model, "fgsm", {"eps": 0.15}, x, y, seed=0)
        assert torch.equal(fgsm, x)  # sign(0) = 0: FGSM does not move at all
        for extra in ({}, {"restarts": 3}, {"loss": "margin"}):
            adv = craft(model, "pgd", {**PGD, **extra}, x, y, seed=0)
            check_budget(x, adv, 0.15)
            assert _accuracy(model, adv, y) == clean, extra  # masked: only the random start moves
        square = craft(model, "square", {"eps": 0.15, "n_queries": 100, "p_init": 0.8}, x, y, seed=0)
        check_budget(x, square, 0.15)
        assert _accuracy(model, square, y) <= clean - 50  # measured: 100% -> 26%


def test_gradient_health_is_zero_on_honest_models_and_catches_nan(trained_home, mnist5k):
    x, y = _halves()
    linear = nn.Sequential(nn.Flatten(), _halves_classifier())
    assert gradient_health(linear, x, y, CPU)["dead"] == 0.0
    dense = _model(trained_home, "dense")
    health = gradient_health(dense, mnist5k.test_x[:50], mnist5k.test_y[:50], CPU, batch_size=16)
    assert health == {"n": 50, "zero": 0.0, "nonfinite": 0.0, "dead": 0.0}

    class Sqrt(nn.Module):
        def forward(self, z):
            return torch.sqrt(z - 2.0)  # NaN everywhere on [0, 1] inputs

    nan_model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2), Sqrt())
    assert gradient_health(nan_model, x, y, CPU) == {"n": 80, "zero": 0.0, "nonfinite": 1.0, "dead": 1.0}
    empty = gradient_health(linear, x[:0], y[:0], CPU)
    assert empty["n"] == 0


def test_gradient_health_leaves_modes_and_buffers_alone(trained_home, mnist5k):
    model = _model(trained_home, "kwinner-boost")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    health = gradient_health(model, mnist5k.test_x[:20], mnist5k.test_y[:20], CPU)
    assert health["dead"] == 0.0
    assert model.training and all(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- BPDA -----------------------------------------------------------------------------------------


def test_bpda_keeps_the_forward_changes_the_backward_and_restores(trained_home, mnist5k):
    model = _model(trained_home, "kwinner-boost")
    layers = kwinner_layers(model)
    assert len(layers) == 3 and all(layer.bpda is None for layer in layers)
    x, y = mnist5k.test_x[:32], mnist5k.test_y[:32]
    with eval_mode(model):
        with torch.no_grad():
            logits = model(x)
        true_grad = _input_grad(model, x, y)
        for mode in ("relu", "identity"):
            with bpda_backward(model, mode):
                assert all(layer.bpda == mode for layer in layers)
                with torch.no_grad():
                    assert torch.equal(model(x), logits)  # forward values unchanged
                grad = _input_grad(model, x, y)
            assert not torch.allclose(grad, true_grad), mode
            assert all(layer.bpda is None for layer in layers)
        with bpda_backward(model, "none"):
            assert torch.equal(_input_grad(model, x, y), true_grad)

    layers[0].bpda = "identity"  # an earlier setting comes back, also after an exception
    with pytest.raises(RuntimeError, match="boom"), bpda_backward(model, "relu"):
        assert [layer.bpda for layer in layers] == ["relu"] * 3
        raise RuntimeError("boom")
    assert [layer.bpda for layer in layers] == ["identity", None, None]
    layers[0].bpda = None
    with pytest.raises(ValueError, match="valid: none, relu, identity"), bpda_backward(model, "softmax"):
        pass


@pytest.mark.parametrize("kind", ["fgsm", "ifgsm", "mifgsm", "pgd"])
def test_bpda_attacks_are_seeded_in_budget_and_restore_the_layers(trained_home, mnist5k, kind):
    model = _model(trained_home, "kwinner-boost")
    x, y = mnist5k.test_x[:30], mnist5k.test_y[:30]
    params = {"eps": 0.2, "steps": 5, "alpha": "auto", "decay": 1.0, "random_start": True}
    with eval_mode(model):
        adv = craft(model, kind, {**params, "bpda": "relu"}, x, y, seed=3)
        again = craft(model, kind, {**params, "bpda": "relu"}, x, y, seed=3)
        plain = craft(model, kind, {**params, "bpda": "none"}, x, y, seed=3)
    assert all(layer.bpda is None for layer in kwinner_layers(model))
    assert torch.equal(adv, again)
    assert not torch.equal(adv, plain)  # another gradient, another example
    check_budget(x, adv, 0.2)
    assert _accuracy(model, adv, y) <= _accuracy(model, x, y)


def test_craft_restores_bpda_when_the_attack_fails(trained_home, mnist5k, monkeypatch):
    model = _model(trained_home, "kwinner")

    def fail(*args, **kwargs):
        assert all(layer.bpda == "identity" for layer in kwinner_layers(model))
        raise RuntimeError("attack failed")

    monkeypatch.setattr(attacks.Attack, "run", fail)  # the library path
    monkeypatch.setattr(attacks.loop, "_iterate", fail)  # our early-stopping loop
    with pytest.raises(RuntimeError, match="attack failed"):
        craft(model, "pgd", {**PGD, "bpda": "identity"}, mnist5k.test_x[:4], mnist5k.test_y[:4], seed=0)
    assert all(layer.bpda is None for layer in kwinner_layers(model))


# --- PGD: restarts and the margin loss ------------------------------------------------------------


def test_restarts_keep_every_success_of_one_run(trained_home, mnist5k):
    model = _model(trained_home, "dense")
    x, y = mnist5k.test_x[:60], mnist5k.test_y[:60]
    params = {"eps": 0.1, "steps": 5, "alpha": "auto", "random_start": True}
    assert attacks.restart_seed(11, 0) == 11 and attacks.restart_seed(11, 1) != 11
    with eval_mode(model):
        one = craft(model, "pgd", {**params, "restarts": 1}, x, y, seed=5)
        three = craft(model, "pgd", {**params, "restarts": 3}, x, y, seed=5)
        assert torch.equal(three, craft(model, "pgd", {**params, "restarts": 3}, x, y, seed=5))
        assert torch.equal(one, craft(model, "pgd", params, x, y, seed=5))  # restarts default to 1
    check_budget(x, three, 0.1)
    fooled_one = predict(model, one, CPU) != y
    fooled_three = predict(model, three, CPU) != y
    assert 0 < fooled_one.sum() < len(y)  # a regime where restarts can matter
    assert (fooled_three | ~fooled_one).all()  # every sample fooled by one run is fooled by three
    assert torch.equal(three[fooled_one], one[fooled_one])  # ...by the very same example
    assert _accuracy(model, three, y) <= _accuracy(model, one, y)


def test_margin_loss_values():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    assert attacks.margin_loss(logits, torch.tensor([0, 0])).tolist() == [-1.0, 5.0]


def test_margin_pgd_is_as_strong_as_cross_entropy(trained_home, mnist5k):
    model = _model(trained_home, "dense")
    x, y = mnist5k.test_x[:100], mnist5k.test_y[:100]
    params = {"eps": 0.2, "steps": 20, "alpha": "auto", "random_start": True}
    with eval_mode(model):
        margin = craft(model, "pgd", {**params, "loss": "margin"}, x, y, seed=0)
        assert torch.equal(margin, craft(model, "pgd", {**params, "loss": "margin"}, x, y, seed=0))
        ce = craft(model, "pgd", {**params, "loss": "ce"}, x, y, seed=0)
    check_budget(x, margin, 0.2)
    clean, acc_margin, acc_ce = _accuracy(model, x, y), _accuracy(model, margin, y), _accuracy(model, ce, y)
    assert acc_margin < clean
    assert acc_margin <= acc_ce + 5, (acc_margin, acc_ce)  # measured: 7% vs 7% (clean 86%)


def test_foolbox_with_margin_is_refused_even_past_resolve(trained_home, mnist5k):
    """harness.with_backend can switch a resolved suite to foolbox: craft itself refuses too."""
    model = _model(trained_home, "dense")
    with pytest.raises(UserError, match="backend=torchattacks"):
        craft(model, "pgd", {**PGD, "loss": "margin", "backend": "foolbox"}, mnist5k.test_x[:2],
              mnist5k.test_y[:2], seed=0)


# --- Square ---------------------------------------------------------------------------------------


def test_square_is_seeded_in_budget_and_leaves_the_global_rng_alone(trained_home, mnist5k):
    model = _model(trained_home, "kwinner")
    x, y = mnist5k.test_x[:30], mnist5k.test_y[:30]
    params = {"eps": 0.2, "n_queries": 40, "p_init": 0.8}
    state = torch.random.get_rng_state()
    with eval_mode(model):
        adv = craft(model, "square", params, x, y, seed=1)
        assert torch.equal(adv, craft(model, "square", params, x, y, seed=1))
        assert not torch.equal(adv, craft(model, "square", params, x, y, seed=2))
        assert torch.equal(craft(model, "square", {**params, "eps": 0.0}, x, y, seed=1), x)
    assert torch.equal(torch.random.get_rng_state(), state)
    check_budget(x, adv, 0.2)
    assert _accuracy(model, adv, y) < _accuracy(model, x, y)


def test_square_runs_as_a_suite_evaluation(trained_home, mnist5k):
    suite = parse_suite(
        """
        [[evaluations]]
        kind = "square"
        eps = [0.0, 0.2]
        n_queries = 30
        [[evaluations]]
        kind = "pgd"
        name = "pgd-adaptive"
        eps = [0.2]
        steps = 3
        bpda = "relu"
        restarts = 2
        loss = "margin"
        """,
        "adaptive", INFO,
    )
    square, pgd = suite.evaluation("square"), suite.evaluation("pgd-adaptive")
    assert "square" in attacks.ATTACKS and kind_of("square").adversarial
    assert square.spec(0.2) == "square(backend=torchattacks,eps=0.2,n_queries=30,p_init=0.8,prune=true)"
    assert pgd.spec(0.2) == (
        "pgd(alpha=auto,backend=torchattacks,bpda=relu,early_stop=true,eps=0.2,loss=margin,prune=true,"
        "random_start=true,restarts=2,steps=3)"
    )
    assert suite.transfer.evaluations == ("square", "pgd-adaptive")
    model = _model(trained_home, "kwinner-boost")
    x, y = mnist5k.test_x[:20], mnist5k.test_y[:20]
    with eval_mode(model):
        flags = {
            (e.name, s): executor.correct_flags(model, e, s, x, y, INFO, CPU, 0, 10)
            for e in (square, pgd) for s in e.strengths
        }
        again = executor.correct_flags(model, square, 0.2, x, y, INFO, CPU, 0, 10)
    assert torch.equal(flags[("square", 0.2)], again)
    clean = flags[("square", 0.0)]
    assert torch.equal(clean, predict(model, x, CPU) == y)
    assert flags[("square", 0.2)].sum() <= clean.sum() and flags[("pgd-adaptive", 0.2)].sum() < clean.sum()


# --- parameters: validation and canonical specs ---------------------------------------------------


@pytest.mark.parametrize(
    "kind, given, message",
    [
        ("pgd", {"bpda": "softmax"}, "bpda='softmax' is out of range; valid: none, relu, identity, sigmoid or sigmoid:T"),
        ("fgsm", {"bpda": None}, "bpda=None is out of range; valid: none, relu, identity, sigmoid or sigmoid:T"),
        ("pgd", {"restarts": 0}, "restarts=0 is out of range; valid: an integer >= 1"),
        ("pgd", {"restarts": 1.5}, "restarts=1.5 is out of range; valid: an integer >= 1"),
        ("pgd", {"loss": "hinge"}, "loss='hinge' is out of range; valid: ce (cross-entropy) or margin"),
        ("pgd", {"loss": "margin", "backend": "foolbox"}, "loss='margin' needs backend=torchattacks"),
        ("square", {"n_queries": 0}, "n_queries=0 is out of range; valid: an integer >= 1"),
        ("square", {"p_init": 0.0}, "p_init=0.0 is out of range; valid: 0 < p_init <= 1"),
        ("square", {"backend": "foolbox"}, "backend='foolbox' is out of range; valid: torchattacks"),
        ("square", {"bpda": "relu"}, "unknown parameter(s) bpda; valid: eps, n_queries, p_init, backend"),
    ],
)
def test_bad_adaptive_parameters_are_refused(kind, given, message):
    with pytest.raises(UserError) as err:
        resolve(kind, {"eps": 0.1, **given}, INFO)
    assert message in str(err.value)


def test_foolbox_margin_message_names_the_valid_combinations():
    with pytest.raises(UserError) as err:
        resolve("pgd", {"eps": 0.1, "loss": "margin", "backend": "foolbox"}, INFO)
    assert "valid: loss=ce with backend=foolbox, or loss=ce or margin with backend=torchattacks" in str(err.value)
    assert resolve("pgd", {"eps": 0.1, "restarts": 4, "backend": "foolbox"}, INFO)["restarts"] == 4


def test_spec_strings_name_every_new_parameter_and_are_stable():
    square = resolve("square", {"eps": 0.3}, INFO)
    assert spec_string("square", square) == "square(backend=torchattacks,eps=0.3,n_queries=1000,p_init=0.8,prune=true)"
    pgd = resolve("pgd", {"eps": 0.3}, INFO)
    assert spec_string("pgd", pgd) == (
        "pgd(alpha=auto,backend=torchattacks,bpda=none,early_stop=true,eps=0.3,loss=ce,prune=true,random_start=true,"
        "restarts=1,steps=40)"
    )
    assert spec_string("pgd", resolve("pgd", {"eps": 0.3}, INFO)) == spec_string("pgd", pgd)
    for kind in ("fgsm", "ifgsm", "mifgsm"):
        assert "bpda=none" in spec_string(kind, resolve(kind, {"eps": 0.1}, INFO))
    name, given = parse_spec("pgd(eps=0.3, bpda=relu, restarts=5, loss=margin)")
    spec = spec_string(name, resolve(name, given, INFO))
    assert "bpda=relu" in spec and "restarts=5" in spec and "loss=margin" in spec
    again_name, again_given = parse_spec(spec)  # a canonical spec reads back to itself
    assert spec_string(again_name, resolve(again_name, again_given, INFO)) == spec
