import math

import pytest
import torch

from robustbench_sparse.zoo.sparse import KWinners, KWinners2d, SparseWeights, rezero_weights


def _positive(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)) + 0.1


def test_kwinners_keeps_exactly_k_in_training_and_round_1_5k_in_eval():
    layer = KWinners(n=100, k=10, k_inference_factor=1.5, boost_strength=0.0)
    x = _positive(8, 100)
    layer.train()
    assert ((layer(x) != 0).sum(dim=1) == 10).all()
    layer.eval()
    assert ((layer(x) != 0).sum(dim=1) == 15).all()


def test_kwinners_inference_k_is_capped_at_n():
    layer = KWinners(n=10, k=8, k_inference_factor=1.5).eval()
    assert layer.k_inference == 10


def test_kwinners_winners_are_the_top_k_and_values_pass_unchanged():
    layer = KWinners(n=6, k=2, boost_strength=0.0).train()
    x = torch.tensor([[0.1, 0.9, -0.3, 0.5, 0.2, 0.0]])
    assert torch.equal(layer(x), torch.tensor([[0.0, 0.9, 0.0, 0.5, 0.0, 0.0]]))


def test_winner_may_be_negative_when_fewer_than_k_are_positive():
    layer = KWinners(n=4, k=2, boost_strength=0.0).train()
    out = layer(torch.tensor([[1.0, -0.5, -2.0, -3.0]]))
    assert torch.equal(out, torch.tensor([[1.0, -0.5, 0.0, 0.0]]))


def test_ranking_uses_boosted_values_but_passes_unboosted_ones():
    layer = KWinners(n=3, k=1, boost_strength=10.0).eval()
    layer.k_inference = 1
    layer.duty_cycle.copy_(torch.tensor([0.9, 0.0, 0.0]))  # unit 0 has been winning
    out = layer(torch.tensor([[1.0, 0.6, 0.1]]))
    # boosted: 1.0*e^(10(1/3-0.9)) ~ 0.0035 < 0.6*e^(10/3): unit 1 wins with its raw value 0.6
    assert torch.equal(out, torch.tensor([[0.0, 0.6, 0.0]]))


def test_gradient_is_one_at_winners_and_zero_elsewhere():
    layer = KWinners(n=50, k=5, boost_strength=0.0).train()
    x = _positive(4, 50).requires_grad_()
    out = layer(x)
    weights = torch.randn(4, 50)
    (out * weights).sum().backward()
    winners = out.detach() != 0
    assert torch.equal(x.grad[winners], weights[winners])
    assert (x.grad[~winners] == 0).all()


def test_duty_cycle_after_batches_follows_the_formula():
    layer = KWinners(n=20, k=4, boost_strength=0.0, duty_cycle_period=10).train()
    x1 = _positive(6, 20)
    y1 = layer(x1)
    expected = (y1 > 0).sum(0).float() / 6  # p = min(10, 6) = 6: exact mean
    assert torch.allclose(layer.duty_cycle, expected)
    x2 = torch.randn(6, 20, generator=torch.Generator().manual_seed(1))
    y2 = layer(x2)
    p = min(10, 12)  # then an EMA with weight B/P
    expected = (expected * (p - 6) + (y2 > 0).sum(0).float()) / p
    assert torch.allclose(layer.duty_cycle, expected)
    assert int(layer.learning_iterations) == 12


def test_duty_cycle_is_not_updated_in_eval():
    layer = KWinners(n=20, k=4).eval()
    layer(_positive(6, 20))
    assert (layer.duty_cycle == 0).all() and int(layer.learning_iterations) == 0


def _duty_entropy(boost_strength: float) -> float:
    """Train a layer on inputs where a few units are always strongest; entropy of the duty cycles."""
    torch.manual_seed(0)
    layer = KWinners(n=64, k=8, boost_strength=boost_strength, boost_strength_factor=1.0).train()
    bias = torch.linspace(1.0, 0.0, 64)
    for _ in range(200):
        layer(bias + 0.01 * torch.rand(32, 64))
    p = layer.duty_cycle / layer.duty_cycle.sum()
    return float(-(p * torch.log(p.clamp_min(1e-12))).sum())


def test_boosting_spreads_duty_cycles_over_more_units():
    without, with_boost = _duty_entropy(0.0), _duty_entropy(1.5)
    assert without == pytest.approx(math.log(8), abs=0.05)  # the same 8 units always win
    assert with_boost > without + 0.5


def test_boost_strength_decays_per_epoch():
    layer = KWinners(n=10, k=2, boost_strength=1.5, boost_strength_factor=0.85)
    layer.update_boost_strength()
    layer.update_boost_strength()
    assert float(layer.boost_strength) == pytest.approx(1.5 * 0.85**2)


def test_k_at_least_n_is_a_plain_relu():
    layer = KWinners(n=5, k=5)
    x = torch.randn(3, 5)
    assert torch.equal(layer(x), torch.relu(x))


def test_kwinners2d_global_keeps_k_over_chw_with_one_duty_cycle_per_channel():
    layer = KWinners2d(channels=4, height=5, width=5, k=10, boost_strength=1.0).train()
    x = _positive(3, 4, 5, 5)
    out = layer(x)
    assert ((out != 0).flatten(1).sum(1) == 10).all()
    assert layer.duty_cycle.shape == (4,)
    expected = (out > 0).sum(dim=(0, 2, 3)).float() / 25 / 3
    assert torch.allclose(layer.duty_cycle, expected)
    layer.eval()
    assert ((layer(x) != 0).flatten(1).sum(1) == 15).all()


def test_kwinners2d_local_keeps_k_channels_at_each_position():
    layer = KWinners2d(channels=8, height=3, width=3, k=2, local=True, boost_strength=0.0).train()
    out = layer(_positive(2, 8, 3, 3))
    assert ((out != 0).sum(dim=1) == 2).all()


@pytest.mark.parametrize("module", [torch.nn.Linear(50, 20), torch.nn.Conv2d(4, 6, 3)])
def test_sparse_weights_have_the_density_per_unit_and_stay_zero_after_steps(module):
    torch.manual_seed(0)
    sparse = SparseWeights(module, density=0.3)
    fan_in = math.prod(module.weight.shape[1:])
    per_unit = (module.weight != 0).flatten(1).sum(1)
    assert (per_unit == round(0.3 * fan_in)).all()
    zeros = module.weight == 0
    optimizer = torch.optim.SGD(sparse.parameters(), lr=0.5, momentum=0.9)
    shape = (8, 50) if isinstance(module, torch.nn.Linear) else (8, 4, 7, 7)
    for _ in range(5):
        optimizer.zero_grad()
        sparse(torch.randn(*shape)).pow(2).sum().backward()
        optimizer.step()
        rezero_weights(sparse)
    assert (module.weight[zeros] == 0).all()
    assert (module.weight[~zeros] != 0).all()
