"""Benchmarking a network of one's own: `evaluate_model`, import-path families, the BPDA protocol."""

from __future__ import annotations

import shutil
import textwrap

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_sparse import evaluate_model
from robustbench_sparse.data.datasets import dataset_info
from robustbench_sparse.execution.zoo_training import train_zoo
from robustbench_sparse.own_model import contract_problems
from robustbench_sparse.perturb.attacks import bpda_backward, looks_like_kwinners
from robustbench_sparse.results import harness
from robustbench_sparse.runtime import REPO_ROOT, Paths, UserError
from robustbench_sparse.zoo.build import build_model
from robustbench_sparse.zoo.spec import load_zoo, select_models

# Two evaluations, a handful of images: enough to see rows beside the zoo's.
SUITE = """
description = "own-model test"
test_size = 40
seed = 0
batch_size = 20

[[evaluations]]
kind = "pixel"
eta = [0.0, 0.3]

[[evaluations]]
kind = "pgd"
eps = [0.1]
steps = 5
"""


class TinyMLP(nn.Module):
    """A network defined only here: not in the zoo, not in the package."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def trained_mlp(small_mnist) -> TinyMLP:
    torch.manual_seed(0)
    net = TinyMLP()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        for i in range(0, len(small_mnist.train_x), 50):
            opt.zero_grad()
            nn.functional.cross_entropy(net(small_mnist.train_x[i:i + 50]), small_mnist.train_y[i:i + 50]).backward()
            opt.step()
    return net.eval()


@pytest.fixture()
def home(trained_home, tmp_path):
    """A copy of the trained tiny zoo with the small suite (the evaluations write reports)."""
    root = tmp_path / "home"
    shutil.copytree(trained_home.home, root)
    paths = Paths(root)
    (paths.suites / "own.toml").write_text(SUITE)
    return paths


def test_evaluate_model_puts_its_rows_beside_the_zoo(home, small_mnist):
    net = trained_mlp(small_mnist)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = evaluate_model(net, suite="own", name="tiny-mlp", compare=["dense", "kwinner"], device="cpu",
                            home=home.home)
    models = set(result.records["model"])
    assert models == {"dense", "kwinner", "tiny-mlp"}
    mine = result.records[result.records["model"] == "tiny-mlp"]
    assert sorted(mine["evaluation"]) == ["clean", "pgd", "pixel", "pixel"]  # clean is always run
    clean = mine[mine["evaluation"] == "clean"]["accuracy"].item()
    attacked = mine[mine["evaluation"] == "pgd"]["accuracy"].item()
    assert clean > 0.5 and attacked <= clean
    assert net.training is False and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    # the report compares it with the zoo, in its own folder (the zoo's reports stay as they are)
    assert result.report.folder.name == "own+tiny-mlp"
    page = result.report.markdown.read_text()
    assert "tiny-mlp" in page and "kwinner" in page
    overview = pd.read_csv(result.report.folder / "tables" / "overview.csv")
    assert list(overview["model"]) == ["dense", "kwinner", "tiny-mlp"]
    # the same model again reuses every cell: the stored records are the same, bit for bit
    again = evaluate_model(net, suite="own", name="tiny-mlp", compare=["dense", "kwinner"], device="cpu",
                           home=home.home)
    assert list(again.records["key"]) == list(result.records["key"])
    assert list(again.records["flags"]) == list(result.records["flags"])


def test_a_changed_model_is_recomputed_not_reused(home, small_mnist):
    net = trained_mlp(small_mnist)
    first = evaluate_model(net, suite="own", name="tiny-mlp", compare=[], device="cpu", home=home.home)
    with torch.no_grad():
        net.body[3].bias += 5 * torch.eye(10)[0]  # pushes every prediction towards class 0
    second = evaluate_model(net, suite="own", name="tiny-mlp", compare=[], device="cpu", home=home.home)
    assert set(first.records["key"]).isdisjoint(set(second.records["key"]))
    assert set(second.records["model"]) == {"tiny-mlp"}


def dropout_left_on() -> nn.Module:
    model = nn.Sequential(TinyMLP(), nn.Dropout(0.5)).eval()
    model[1].train()  # the model says eval, one layer is still random
    return model


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: TinyMLP().train(), "training mode"),
        (lambda: nn.Sequential(TinyMLP(), nn.Softmax(dim=1)).eval(), "probabilities"),
        (lambda: dropout_left_on(), "randomised"),
        (lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval(), "fails on a batch"),
        (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 7)).eval(), "expected (16, 10)"),
        (lambda: "not a model", "torch.nn.Module"),
    ],
)
def test_models_that_break_the_contract_are_refused_with_the_reason(make, expected, home, mnist5k):
    model = make()
    problems = contract_problems(model, mnist5k.info, mnist5k.test_x[:16])
    assert any(expected in p for p in problems), problems
    with pytest.raises(UserError, match="cannot be benchmarked"):
        evaluate_model(model, suite="own", name="bad", compare=[], device="cpu", home=home.home)
    assert not (home.reports("mnist5k") / "own+bad").exists()  # refused before any work


def test_a_plain_model_has_no_contract_problem(mnist5k):
    assert contract_problems(TinyMLP().eval(), mnist5k.info, mnist5k.test_x[:16]) == []


def test_bad_names_are_refused(home):
    for bad in ("dense", "has space", "", "ensemble"):
        with pytest.raises(UserError):
            evaluate_model(TinyMLP().eval(), suite="own", name=bad, compare=[], device="cpu", home=home.home)


# --- a family from outside the package ---------------------------------------------------------

BUILDER = '''
from torch import nn


def build(spec, info):
    """A small MLP whose width comes from the spec's `hidden`."""
    c, h, w = info.shape
    return [nn.Flatten(), nn.Linear(c * h * w, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, info.num_classes)]


def wrong(spec):
    return nn.Flatten()
'''


def scratch_zoo(folder, family: str, module_name: str = "my_scratch_models") -> Paths:
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / f"{module_name}.py").write_text(BUILDER)
    (folder / "models" / "zoo.toml").write_text(textwrap.dedent(f"""
        [defaults]
        hidden = 24
        epochs = 2
        lr = 0.05
        batch_size = 32
        first_epoch_batch_size = 32

        [models.dense]
        channels = [4, 8]
        hidden = 32

        [models.my-mlp]
        family = "{family}"
        """))
    shutil.copytree(REPO_ROOT / "attacks", folder / "attacks")
    (folder / "attacks" / "own.toml").write_text(SUITE)
    return Paths(folder)


def test_an_import_path_family_trains_and_reports_beside_the_zoo(tmp_path, small_mnist):
    paths = scratch_zoo(tmp_path / "home", "my_scratch_models:build")
    specs = select_models(load_zoo(paths.zoo_spec), "mnist5k")
    model = build_model(specs[1], dataset_info("mnist5k"))
    assert isinstance(model[2], nn.Linear) and model[2].out_features == 24
    outcomes = train_zoo(paths, specs, "mnist5k", lambda: small_mnist, [0], torch.device("cpu"))
    assert [o.model for o in outcomes] == ["dense", "my-mlp"]
    assert all(o.manifest.clean_accuracy > 0.5 for o in outcomes)
    plan = harness.plan("mnist5k", "own", device="cpu", home=paths.home)
    frame = harness.run(plan)
    assert set(frame["model"]) == {"dense", "my-mlp"}
    from robustbench_sparse.report import build_report

    report = build_report(plan)
    overview = pd.read_csv(report.folder / "tables" / "overview.csv")
    assert list(overview["model"]) == ["dense", "my-mlp"]
    # editing the builder's file makes the checkpoint stale: its code is part of the config hash
    from robustbench_sparse.zoo.checkpoints import checkpoint_status

    assert checkpoint_status(paths, specs[1], "mnist5k", 0) == "trained"
    (paths.home / "my_scratch_models.py").write_text(BUILDER.replace("nn.ReLU()", "nn.Tanh()"))
    import importlib
    import sys

    importlib.reload(sys.modules["my_scratch_models"])
    fresh = select_models(load_zoo(paths.zoo_spec), "mnist5k")[1]
    assert checkpoint_status(paths, fresh, "mnist5k", 0) == "stale"


@pytest.mark.parametrize(
    ("family", "message"),
    [
        ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
        ("my_scratch_models2:nothing", "has no callable 'nothing'"),
        ("my_scratch_models2:wrong", "must take two arguments"),
        (":build", "package.module:builder"),
    ],
)
def test_a_bad_import_path_is_a_clear_error(tmp_path, family, message):
    paths = scratch_zoo(tmp_path / "home", family, module_name="my_scratch_models2")
    with pytest.raises(UserError, match=message):
        load_zoo(paths.zoo_spec)


def test_a_bad_import_path_exits_2_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from robustbench_sparse.cli import app

    paths = scratch_zoo(tmp_path / "home", "no_such_module_xyz:build", module_name="unused_models")
    result = CliRunner().invoke(app, ["train", "--home", str(paths.home), "--device", "cpu"])
    assert result.exit_code == 2
    assert "cannot import module" in result.output and "Traceback" not in result.output


# --- BPDA for k-winner layers from elsewhere ------------------------------------------------------

class StandInKWinners(nn.Module):
    """Shaped like nupic.torch's KWinners (k, k_inference_factor, duty_cycle), with no `bpda` of ours."""

    def __init__(self, n: int, k: int) -> None:
        super().__init__()
        self.k, self.k_inference_factor = k, 1.0
        self.register_buffer("duty_cycle", torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        winners = x.topk(self.k, dim=1).indices
        return x * torch.zeros_like(x).scatter(1, winners, 1.0)


def test_foreign_kwinners_get_the_bpda_backward_by_duck_typing():
    torch.manual_seed(0)
    layer = StandInKWinners(20, 3)
    model = nn.Sequential(nn.Linear(8, 20), layer, nn.Linear(20, 4))
    assert looks_like_kwinners(layer) and not looks_like_kwinners(model[0])
    x = torch.randn(5, 8, requires_grad=True)

    def grad_and_out(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        with bpda_backward(model, mode):
            out = model(x)
            (g,) = torch.autograd.grad(out.sum(), x)
        return g, out.detach()

    true, out_true = grad_and_out("none")
    relu, out_relu = grad_and_out("relu")
    ident, out_ident = grad_and_out("identity")
    assert torch.allclose(out_true, out_relu) and torch.allclose(out_true, out_ident)  # forward unchanged
    # the stand-in's gradient is ReLU's: the same as a net with ReLU in the layer's place
    relu_net = nn.Sequential(model[0], nn.ReLU(), model[2])
    (expected,) = torch.autograd.grad(relu_net(x).sum(), x)
    assert torch.allclose(relu, expected) and not torch.allclose(relu, true)
    (straight,) = torch.autograd.grad(nn.Sequential(model[0], model[2])(x).sum(), x)
    assert torch.allclose(ident, straight)
    assert not layer._forward_hooks  # the hooks are gone after the block
    again, _ = grad_and_out("none")
    assert torch.equal(again, true)


def test_a_layer_can_opt_in_by_declaring_itself():
    class Declared(nn.Module):
        rbs_kwinners = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * (x > x.median(dim=1, keepdim=True).values)

    assert looks_like_kwinners(Declared()) and not looks_like_kwinners(nn.ReLU())


def test_the_readme_example_runs_as_written(trained_home, tmp_path, monkeypatch, capsys):
    """The README's "Benchmark your own model" example, executed verbatim on the tiny trained zoo."""
    import re

    from robustbench_sparse.runtime import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Benchmark your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 10 <= len(code.strip().splitlines()) <= 15
    root = tmp_path / "home"
    shutil.copytree(trained_home.home, root)
    monkeypatch.setenv("RBS_HOME", str(root))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the point is to run the README's code
    printed = capsys.readouterr().out.strip()
    assert printed.endswith("reports/mnist5k/quick+my-mlp/report.html")
    overview = pd.read_csv(root / "reports" / "mnist5k" / "quick+my-mlp" / "tables" / "overview.csv")
    assert list(overview["model"]) == ["dense", "kwinner-boost", "my-mlp"]
    mlp = overview.set_index("model").loc["my-mlp"]
    assert mlp["clean %"] > 80


def test_identity_follows_weights_settings_and_code_not_the_process():
    from robustbench_sparse.zoo.checkpoints import module_identity

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.k = 5
            self.linear = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) * self.k

    torch.manual_seed(0)
    net = Gate()
    first = module_identity(net)
    assert module_identity(net) == first  # stable
    net.k = 6  # a setting the forward uses, not in the state_dict
    assert module_identity(net) != first
    net.k = 5
    assert module_identity(net) == first
    with torch.no_grad():
        net.linear.bias += 1
    assert module_identity(net) != first


def test_zoo_cards_are_left_alone_and_compare_takes_one_name(home, small_mnist):
    net = trained_mlp(small_mnist)
    cards = home.reports("mnist5k") / "cards"
    before = {p.stem: p.read_bytes() for p in cards.glob("*.json")}  # the shared home may hold zoo cards
    result = evaluate_model(net, suite="own", name="tiny-mlp", compare="dense", device="cpu", home=home.home)
    assert set(result.records["model"]) == {"dense", "tiny-mlp"}
    after = {p.stem: p.read_bytes() for p in cards.glob("*.json")}
    assert set(after) == set(before) | {"tiny-mlp"}
    assert all(after[name] == data for name, data in before.items() if name != "tiny-mlp")  # zoo cards untouched


def test_bpda_leaves_a_wrapper_with_a_bpda_attribute_alone():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bpda = "my own setting"
            self.body = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    model = Wrapper()
    with bpda_backward(model, "relu"):
        assert model.bpda == "my own setting"
    assert model.bpda == "my own setting"
