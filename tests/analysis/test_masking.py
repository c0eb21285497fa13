"""Each masking flag fires on a synthetic model built to mask gradients, and none on a plain one.

The models are small MLPs on MNIST digits; what differs is one layer:
- plain: ReLU;
- threshold: a hard threshold at 0.5 whose gradient is exactly zero (checks 2, 3, 4, 6);
- grid-reversal: identity forward, but the backward pass flips the gradient's sign off the
  1/255 pixel grid, so only a single step from a clean image follows the true gradient (check 1);
- detached k-winners: the k-winners mask stops every gradient unless BPDA stands in (check 5).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_sparse.analysis.diagnostics import masking_flags, most_effective
from robustbench_sparse.evaluation.cells import Cell, make_record
from robustbench_sparse.evaluation.suites import parse_suite
from robustbench_sparse.execution.executor import correct_flags, perturbed_set, score
from robustbench_sparse.runtime import eval_mode
from robustbench_sparse.zoo.sparse import KWinners

CPU = torch.device("cpu")

SUITE = """
[[evaluations]]
kind = "gradients"
[[evaluations]]
kind = "fgsm"
eps = [0.15]
[[evaluations]]
kind = "ifgsm"
eps = [0.15]
steps = 10
[[evaluations]]
kind = "pgd"
eps = [0.15, 1.0]
steps = 20
random_start = false
[[evaluations]]
kind = "pgd"
name = "pgd-5x"
eps = [0.15]
steps = 20
restarts = 5
random_start = false
[[evaluations]]
kind = "pgd"
name = "pgd-bpda"
eps = [0.15]
steps = 20
bpda = "relu"
random_start = false
[[evaluations]]
kind = "square"
eps = [0.15]
n_queries = 300
"""


class Threshold(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).float() + 0.0 * x  # in the graph, gradient exactly zero


class _OffGridReversed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        on_grid = ((x * 255 - torch.round(x * 255)).abs() < 1e-3).float()
        return grad * (2 * on_grid - 1)


class GridReversal(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _OffGridReversed.apply(x)


class DetachedKWinners(KWinners):
    """k-winners whose true backward passes nothing; BPDA (relu) restores a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out.detach() + 0.0 * x if self.bpda is None else out


def _mlp(front: nn.Module, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), front, nn.Linear(784, 64), act, nn.Linear(64, 10))


def _train(model: nn.Sequential, data, epochs: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = data.train_x[:1000], data.train_y[:1000]
    kw = [m for m in model.modules() if isinstance(m, KWinners)]
    for layer in kw:
        layer.bpda = "relu"  # lets the detached layer learn
    model.train()
    for _ in range(epochs):
        for i in range(0, 1000, 50):
            loss = nn.functional.cross_entropy(model(x[i : i + 50]), y[i : i + 50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for layer in kw:
        layer.bpda = None
    return model.eval()


@pytest.fixture(scope="module")
def zoo(mnist5k):
    torch.manual_seed(0)
    models = {
        "plain": _mlp(nn.Identity(), nn.ReLU()),
        "threshold": _mlp(Threshold(), nn.ReLU()),
        "grid-reversal": _mlp(GridReversal(), nn.ReLU()),
        "detached-kwinners": _mlp(nn.Identity(), DetachedKWinners(64, 16, boost_strength=0.0)),
    }
    return {name: _train(model, mnist5k) for name, model in models.items()}


@pytest.fixture(scope="module")
def records(zoo, mnist5k) -> pd.DataFrame:
    """White-box records of the suite on every synthetic model, plus PGD transferred from `plain`."""
    suite = parse_suite(SUITE, "synthetic", mnist5k.info)
    x, y = mnist5k.test_x[:150], mnist5k.test_y[:150]
    rows = []
    for name, model in zoo.items():
        with eval_mode(model):
            for evaluation in suite.evaluations:
                for strength in evaluation.strengths:
                    cell = Cell("mnist5k", name, 0, f"synthetic-{name}", evaluation, strength, len(x), 0, 150, "synthetic")
                    flags = correct_flags(model, evaluation, strength, x, y, mnist5k.info, CPU, 0, 150)
                    rows.append(make_record(cell, flags, 0.0, CPU))
    pgd = suite.evaluation("pgd")
    with eval_mode(zoo["plain"]):
        adv = perturbed_set(zoo["plain"], pgd, 0.15, x, y, mnist5k.info, CPU, 0, 150)
    for name, model in zoo.items():
        if name != "plain":
            cell = Cell("mnist5k", name, 0, f"synthetic-{name}", pgd, 0.15, len(x), 0, 150, "synthetic", "plain", "p")
            with eval_mode(model):
                rows.append(make_record(cell, score(model, adv, y, CPU, 150), 0.0, CPU))
    return pd.DataFrame(rows)


def _checks(records: pd.DataFrame, model: str) -> set[str]:
    return {f.check for f in masking_flags(records) if f.model == model}


def test_the_synthetic_models_classify_well(zoo, mnist5k):
    for name, model in zoo.items():
        with torch.no_grad():
            acc = (model(mnist5k.test_x[:300]).argmax(1) == mnist5k.test_y[:300]).float().mean().item()
        assert acc > 0.75, (name, acc)


def test_no_flag_on_the_plain_model(records):
    assert _checks(records, "plain") == set()


@pytest.mark.parametrize(
    "model, check",
    [
        ("grid-reversal", "one-step beats iterative"),
        ("threshold", "more effort does not help"),
        ("threshold", "unbounded eps does not break it"),
        ("threshold", "black-box or transfer beats white-box"),
        ("detached-kwinners", "BPDA beats plain gradients"),
        ("threshold", "dead gradients"),
    ],
)
def test_each_flag_fires_on_a_model_built_to_mask_gradients(records, model, check):
    flags = [f for f in masking_flags(records) if f.model == model and f.check == check]
    assert flags, f"{check!r} did not fire on {model}: {_checks(records, model)}"
    assert all(f.evidence for f in flags)


def test_most_effective_attack_is_the_per_sample_worst_case(records):
    table = most_effective(records)
    threshold = table[(table["model"] == "threshold") & (table["strength"] == 0.15)].iloc[0]
    assert threshold["worst"] < threshold["pgd"] - 10  # Square and transfer find what PGD cannot
    attacked = records[(records["model"] == "threshold") & (records["strength"] == 0.15)
                       & records["kind"].isin(["fgsm", "ifgsm", "pgd", "square"])]
    assert threshold["worst"] <= attacked["accuracy"].min() * 100 + 1e-9


# --- AutoAttack's checks (7-10) -------------------------------------------------------------------

class AlwaysDropout(nn.Module):
    """Dropout that ignores eval mode: a randomised model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, 0.3, training=True)


AA_SUITE = """
[[evaluations]]
kind = "gradients"
name = "at-start"
eps = 0.15
[[evaluations]]
kind = "determinism"
[[evaluations]]
kind = "logits"
[[evaluations]]
kind = "pgd"
eps = [0.15]
steps = 20
[[evaluations]]
kind = "autoattack"
eps = [0.15]
steps = 20
n_queries = 300
"""


@pytest.fixture(scope="module")
def aa_records(zoo, mnist5k) -> pd.DataFrame:
    models = {
        "plain": zoo["plain"],
        "threshold": zoo["threshold"],
        "randomised": nn.Sequential(zoo["plain"], AlwaysDropout()).eval(),
        "softmax": nn.Sequential(zoo["plain"], nn.Softmax(dim=1)).eval(),
    }
    suite = parse_suite(AA_SUITE, "aa", mnist5k.info)
    x, y = mnist5k.test_x[:100], mnist5k.test_y[:100]
    rows = []
    for name, model in models.items():
        with eval_mode(model):
            for evaluation in suite.evaluations:
                for strength in evaluation.strengths:
                    cell = Cell("mnist5k", name, 0, f"aa-{name}", evaluation, strength, len(x), 0, 100, "aa")
                    flags = correct_flags(model, evaluation, strength, x, y, mnist5k.info, CPU, 0, 100)
                    rows.append(make_record(cell, flags, 0.0, CPU))
    return pd.DataFrame(rows)


def test_autoattacks_checks_stay_quiet_on_the_plain_model(aa_records):
    assert _checks(aa_records, "plain") == set()


@pytest.mark.parametrize(
    "model, check",
    [
        ("randomised", "randomised model"),
        ("softmax", "probability outputs"),
        ("threshold", "zero gradients at the attack's start"),
        ("threshold", "AutoAttack beats PGD"),
    ],
)
def test_each_autoattack_check_fires_on_a_model_built_to_trip_it(aa_records, model, check):
    flags = [f for f in masking_flags(aa_records) if f.model == model and f.check == check]
    assert flags, f"{check!r} did not fire on {model}: {_checks(aa_records, model)}"
    assert all(f.evidence for f in flags)


def test_every_check_has_a_status_and_the_new_ones_ran(aa_records):
    from robustbench_sparse.analysis.diagnostics import CHECK_NEEDS, masking_checks

    checks = masking_checks(aa_records)
    plain = checks[checks["model"] == "plain"]
    assert len(plain) == len(CHECK_NEEDS) == 11
    status = dict(zip(plain["check"].str.split(".").str[0].astype(int), plain["status"], strict=True))
    assert all(status[n] == "passed" for n in (7, 8, 9, 10)), status
