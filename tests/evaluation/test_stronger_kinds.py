"""Stronger and broader evaluations: APGD and AutoAttack, MNIST-C's corruptions as evaluation
kinds, the pixel-noise fill variants."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from robustbench_sparse.data.datasets import dataset_info
from robustbench_sparse.evaluation.kinds import CORRUPTION_KINDS, KINDS, perturb, resolve
from robustbench_sparse.evaluation.suites import parse_suite
from robustbench_sparse.perturb.attacks import craft_batches
from robustbench_sparse.perturb.corruptions import CORRUPTIONS
from robustbench_sparse.results import harness
from robustbench_sparse.runtime import UserError
from robustbench_sparse.zoo.checkpoints import load_checkpoint
from robustbench_sparse.zoo.spec import load_zoo, select_models

CPU = torch.device("cpu")
MNIST = dataset_info("mnist5k")


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100


def _params(kind: str, **given) -> dict:
    return resolve(kind, given, MNIST)


@pytest.fixture(scope="module")
def tiny_zoo(trained_home):
    specs = select_models(load_zoo(trained_home.zoo_spec), "mnist5k")
    return {s.name: load_checkpoint(trained_home, s, MNIST, 0)[0] for s in specs}


def test_autoattack_is_never_weaker_than_pgd40_on_every_zoo_model(tiny_zoo, small_mnist):
    """The cross-check of the issue: the standard AutoAttack <= PGD-40 + 1 point on every zoo model
    (at an eps where the tiny models keep some accuracy under PGD, so AutoAttack has work to do)."""
    x, y = small_mnist.test_x[:40], small_mnist.test_y[:40]
    seeds = list(range(len(x)))
    for name, model in tiny_zoo.items():
        for eps in (0.15,):
            pgd = craft_batches(model, "pgd", _params("pgd", eps=eps, alpha=0.01), x, y, [0], seeds, 40)
            aa = craft_batches(model, "autoattack", _params("autoattack", eps=eps), x, y, [0], seeds, 40)
            assert (aa - x).abs().max() <= eps + 1e-6 and aa.min() >= 0 and aa.max() <= 1
            assert _accuracy(model, aa, y) <= _accuracy(model, pgd, y) + 1, (name, eps)


@pytest.mark.parametrize("kind, params", [("apgd", {"loss": "ce"}), ("apgd", {"loss": "dlr"}),
                                          ("autoattack", {"steps": 10, "n_queries": 100})])
def test_apgd_and_autoattack_keep_the_budget_and_are_seeded(tiny_zoo, small_mnist, kind, params):
    model = tiny_zoo["kwinner-boost"]
    x, y = small_mnist.test_x[:40], small_mnist.test_y[:40]
    clean = _accuracy(model, x, y)
    seeds = list(range(len(x)))
    zero = craft_batches(model, kind, _params(kind, eps=0.0, **params), x, y, [3], seeds, 40)
    assert torch.equal(zero, x)  # eps = 0 is clean
    first = craft_batches(model, kind, _params(kind, eps=0.15, **params), x, y, [3], seeds, 40)
    again = craft_batches(model, kind, _params(kind, eps=0.15, **params), x, y, [3], seeds, 40)
    assert torch.equal(first, again)  # same seed, same examples
    assert (first - x).abs().max() <= 0.15 + 1e-6
    assert _accuracy(model, first, y) <= clean


def test_the_masking_suite_runs_apgd_and_autoattack():
    from robustbench_sparse.runtime import REPO_ROOT

    suite = parse_suite((REPO_ROOT / "attacks" / "masking.toml").read_text(), "masking", MNIST)
    kinds = {e.kind for e in suite.evaluations}
    assert {"apgd", "autoattack", "determinism", "logits", "gradients"} <= kinds
    assert suite.evaluation("autoattack").pruned and not suite.evaluation("pgd").pruned
    assert suite.evaluation("autoattack").strengths == (0.1, 0.2, 0.3)


# --- corruptions as evaluation kinds ---------------------------------------------------------------

def test_every_corruption_is_a_kind_with_its_default_severity():
    assert set(CORRUPTION_KINDS) == set(CORRUPTIONS) and len(CORRUPTION_KINDS) == 15
    for name in CORRUPTION_KINDS:
        kind = KINDS[name]
        assert kind.strength == "severity"
        assert kind.params["severity"].default == CORRUPTIONS[name].default_severity
        assert str(CORRUPTIONS[name].default_severity) in kind.params["severity"].valid


@pytest.mark.parametrize("bad", [0, 6, 2.5, True, "3"])
def test_bad_severities_are_refused(bad):
    with pytest.raises(UserError, match="severity"):
        resolve("fog", {"severity": bad}, MNIST)


def test_corruptions_run_on_colour_32x32_and_on_fashion(small_mnist):
    cifar, fashion = dataset_info("cifar10"), dataset_info("fashion-mnist")
    x3 = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in CORRUPTION_KINDS:
        params = resolve(name, {}, cifar)
        out = perturb(name, params, None, x3, torch.zeros(3, dtype=torch.long), cifar, [1, 2, 3])
        assert out.shape == x3.shape and out.min() >= 0 and out.max() <= 1
        grey = perturb(name, resolve(name, {}, fashion), None, small_mnist.test_x[:2], small_mnist.test_y[:2],
                       fashion, [1, 2])
        assert grey.shape == (2, 1, 28, 28)


def test_corruption_draws_are_per_image_and_seeded(small_mnist):
    x, y = small_mnist.test_x[:4], small_mnist.test_y[:4]
    params = resolve("rotate", {"severity": 3}, MNIST)
    whole = perturb("rotate", params, None, x, y, MNIST, [10, 11, 12, 13])
    alone = torch.cat([perturb("rotate", params, None, x[i : i + 1], y[i : i + 1], MNIST, [10 + i]) for i in range(4)])
    assert torch.equal(whole, alone)


def test_the_corruptions_suite_reports_a_table_mce_and_a_picture(trained_home, tmp_path, small_mnist, monkeypatch):
    import shutil

    from robustbench_sparse.report import build_report
    from robustbench_sparse.runtime import REPO_ROOT, Paths

    root = tmp_path / "home"
    shutil.copytree(trained_home.home, root)
    paths = Paths(root)
    text = (REPO_ROOT / "attacks" / "corruptions.toml").read_text()
    (paths.suites / "corruptions.toml").write_text("test_size = 40\n" + text)
    plan = harness.plan("mnist5k", "corruptions", ["dense", "kwinner-boost"], device="cpu", home=root)
    frame = harness.run(plan)
    assert set(frame["evaluation"]) == set(CORRUPTION_KINDS) | {"clean"}
    report = build_report(plan)
    table = pd.read_csv(report.folder / "tables" / "common_corruptions_mnist_c.csv")
    assert list(table["model"]) == ["dense", "kwinner-boost"]
    mce = table.set_index("model")["mCE vs dense (100 = same)"]
    assert mce["dense"] == pytest.approx(100.0)
    errors = table.set_index("model")["mean corruption error %"]
    assert 0 <= errors["dense"] <= 100
    assert any(f.stem == "corruptions" for f in report.figures)
    assert "Common corruptions (MNIST-C)" in report.markdown.read_text()


# --- the forum's pixel-noise variants ---------------------------------------------------------------

def test_pixel_fill_variants(small_mnist):
    x, y = small_mnist.test_x[:6], small_mnist.test_y[:6]
    seeds = list(range(6))
    outs = {fill: perturb("pixel", resolve("pixel", {"eta": 0.2, "fill": fill}, MNIST), None, x, y, MNIST, seeds)
            for fill in ("paper", "uniform", "half")}
    changed = {fill: (out != x) for fill, out in outs.items()}
    # the same positions are chosen whatever the fill (drawn first from the same generator)
    hit_half = changed["half"] | (x == 0.5)
    assert (changed["paper"] <= hit_half).all()
    values = outs["half"][changed["half"]]
    assert torch.allclose(values, torch.full_like(values, 0.5))
    assert outs["uniform"][changed["uniform"]].std() > 0.2  # spread over [0, 1]
    assert torch.equal(perturb("pixel", resolve("pixel", {"eta": 0.0, "fill": "uniform"}, MNIST), None, x, y, MNIST,
                               seeds), x)
    assert resolve("pixel", {}, MNIST)["fill"] == "paper"
    with pytest.raises(UserError, match="fill"):
        resolve("pixel", {"fill": "zeros"}, MNIST)
