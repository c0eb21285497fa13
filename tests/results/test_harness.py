import json
import shutil

import pandas as pd
import pytest
import torch

from robustbench_sparse.analysis.diagnostics import ordering_flags
from robustbench_sparse.evaluation.suites import load_suite
from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.execution.executor import correct_flags
from robustbench_sparse.perturb.attacks import BudgetViolation, check_budget, craft
from robustbench_sparse.results import harness
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.runtime import Paths, UserError, eval_mode
from robustbench_sparse.training.train import predict
from robustbench_sparse.zoo.checkpoints import load_checkpoint
from robustbench_sparse.zoo.spec import load_zoo, select_models
from tests.conftest import make_home

CPU = torch.device("cpu")

TINY_SUITE = """
test_size = 60
batch_size = 25
[[evaluations]]
kind = "gaussian"
sigma = [0.0, 0.5]
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.3]
[[evaluations]]
kind = "occlusion"
size = [0, 10]
[[evaluations]]
kind = "fgsm"
eps = [0.0, 0.2]
[[evaluations]]
kind = "pgd"
eps = [0.0, 0.2]
steps = 5
"""


@pytest.fixture(scope="module")
def trained(trained_home) -> Paths:
    (trained_home.suites / "tiny.toml").write_text(TINY_SUITE)
    return trained_home


def _model(paths, name, info):
    spec = select_models(load_zoo(paths.zoo_spec), "mnist5k", [name])[0]
    return load_checkpoint(paths, spec, info, 0)[0]


def test_evaluate_returns_long_form_records_and_exports(trained):
    df = harness.evaluate("mnist5k", "tiny", device="cpu", home=trained.home)
    required = {"model", "dataset", "seed", "evaluation", "param", "strength", "n", "correct", "accuracy"}
    assert required <= set(df.columns)
    assert {"suite", "checkpoint", "versions", "date"} <= set(df.columns)
    assert len(df) == 5 * (1 + 2 * 5)  # 5 models x (clean + 5 evaluations x 2 strengths)
    assert (df["n"] == 60).all() and (df["accuracy"] == df["correct"] / 60).all()
    folder = trained.reports("mnist5k") / "tiny"
    assert not (folder / "records.csv").exists()  # the export is the report's: written with it
    from robustbench_sparse.report import build_report

    build_report(harness.plan("mnist5k", "tiny", device="cpu", home=trained.home), formats=("markdown",))
    assert len(pd.read_csv(folder / "records.csv")) == len(df)
    doc = json.loads((folder / "records.json").read_text())
    assert doc["meta"]["suite"] == "tiny" and "torch" in doc["meta"]["versions"]
    assert set(doc["meta"]["checkpoints"]) == {f"{m}/seed0" for m in df["model"].unique()}


def test_zero_strength_equals_clean_accuracy_and_robust_never_beats_clean(trained):
    df = harness.evaluate("mnist5k", "tiny", device="cpu", home=trained.home)
    for model, group in df.groupby("model"):
        clean = group.loc[group["evaluation"] == "clean", "correct"].item()
        assert (group.loc[group["strength"] == 0, "correct"] == clean).all(), model
        attacked = group[group["kind"].isin(["fgsm", "pgd"])]
        assert (attacked["correct"] <= clean).all(), model
        pgd = group[(group["kind"] == "pgd") & (group["strength"] == 0.2)]["correct"].item()
        assert pgd < clean, model


def test_same_seed_same_numbers_and_finished_cells_are_reused(trained, tmp_path, monkeypatch):
    plan = harness.plan("mnist5k", "tiny", ["dense", "kwinner-boost"], device="cpu", home=trained.home)
    first = harness.run(plan, ResultStore(tmp_path / "a.sqlite"), ArtifactStore(tmp_path / "cache-a"))
    second = harness.run(plan, ResultStore(tmp_path / "b.sqlite"), ArtifactStore(tmp_path / "cache-b"))
    assert first["flags"].tolist() == second["flags"].tolist()
    assert first["correct"].tolist() == second["correct"].tolist()

    calls = []
    real = harness.make_record
    monkeypatch.setattr(harness, "make_record", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = harness.run(plan, ResultStore(tmp_path / "a.sqlite"))
    assert not calls
    assert again["correct"].tolist() == first["correct"].tolist()


def test_an_interrupted_run_keeps_finished_cells_and_resumes(trained, tmp_path, monkeypatch):
    plan = harness.plan("mnist5k", "tiny", ["dense"], device="cpu", home=trained.home)
    total = len(plan.cells())
    real = harness.make_record
    calls = []

    def interrupt_after_four(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(harness, "make_record", interrupt_after_four)
    store_file = tmp_path / "results.sqlite"
    with pytest.raises(KeyboardInterrupt):
        harness.run(plan, ResultStore(store_file))
    assert ResultStore(store_file).count() == 4

    calls.clear()
    monkeypatch.setattr(harness, "make_record", lambda *a, **k: calls.append(1) or real(*a, **k))
    frame = harness.run(plan, ResultStore(store_file))
    assert len(calls) == total - 4
    assert len(frame) == total


def test_evaluation_leaves_buffers_and_modes_untouched(trained, mnist5k):
    for name in ("batchnorm", "kwinner-boost", "dropout"):
        model = _model(trained, name, mnist5k.info)
        model.train()  # evaluation must switch to eval by itself, then restore this
        before = {k: v.clone() for k, v in model.state_dict().items()}
        suite = load_suite(trained, "tiny", mnist5k.info)
        with eval_mode(model):
            for evaluation in suite.evaluations:
                for strength in evaluation.strengths:
                    correct_flags(
                        model, evaluation, strength, mnist5k.test_x[:30], mnist5k.test_y[:30],
                        mnist5k.info, CPU, 0, 30,
                    )
        assert model.training and all(m.training for m in model.modules())
        assert all(p.requires_grad for p in model.parameters())
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), f"{name}: {key} changed"


@pytest.mark.parametrize("kind", ["fgsm", "ifgsm", "mifgsm", "pgd"])
@pytest.mark.parametrize("backend", ["torchattacks", "foolbox"])
def test_attacks_stay_in_the_eps_ball_and_pixel_range(trained, mnist5k, kind, backend):
    if backend == "foolbox" and kind == "mifgsm":
        pytest.skip("foolbox has no MI-FGSM")
    model = _model(trained, "dense", mnist5k.info)
    x, y = mnist5k.test_x[:40], mnist5k.test_y[:40]
    params = {"eps": 0.1, "steps": 5, "alpha": "auto", "decay": 1.0, "random_start": True, "backend": backend}
    with eval_mode(model):
        adv = craft(model, kind, params, x, y, seed=0)
        again = craft(model, kind, params, x, y, seed=0)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, again)  # seeded random starts
    assert (predict(model, adv, CPU) == y).sum() <= (predict(model, x, CPU) == y).sum()


@pytest.mark.parametrize("kind", ["fgsm", "ifgsm", "mifgsm", "pgd"])
def test_real_attacks_at_eps_zero_return_the_input_exactly(trained, mnist5k, kind):
    """craft() skips the work at eps = 0; this shows the libraries themselves agree."""
    from robustbench_sparse.perturb.attacks import attack_of

    model = _model(trained, "dense", mnist5k.info)
    x, y = mnist5k.test_x[:20], mnist5k.test_y[:20]
    params = {"eps": 0.0, "steps": 3, "alpha": 0.01, "decay": 1.0, "random_start": True}
    with eval_mode(model):
        assert torch.equal(attack_of(kind).build("torchattacks", model, params)(x, y), x)
        if kind != "mifgsm":
            assert torch.equal(attack_of(kind).build("foolbox", model, params)(x, y), x)


def test_budget_violations_are_caught():
    x = torch.full((2, 1, 4, 4), 0.5)
    check_budget(x, x + 0.1, 0.1)
    with pytest.raises(BudgetViolation, match="exceeded its budget"):
        check_budget(x, x + 0.2, 0.1)
    with pytest.raises(BudgetViolation, match=r"\[0, 1\]"):
        check_budget(x, x + 0.6, 1.0)


def test_foolbox_and_torchattacks_agree_within_a_few_points(trained, mnist5k):
    model = _model(trained, "dense", mnist5k.info)
    x, y = mnist5k.test_x[:200], mnist5k.test_y[:200]
    with eval_mode(model):
        for kind, params in [
            ("fgsm", {"eps": 0.1}),
            ("ifgsm", {"eps": 0.1, "steps": 10, "alpha": "auto"}),
            ("pgd", {"eps": 0.1, "steps": 10, "alpha": 0.025, "random_start": True}),
        ]:
            acc = {}
            for backend in ("torchattacks", "foolbox"):
                adv = craft(model, kind, {**params, "backend": backend}, x, y, seed=0)
                acc[backend] = (predict(model, adv, CPU) == y).float().mean().item() * 100
            assert abs(acc["torchattacks"] - acc["foolbox"]) <= 3.0, (kind, acc)


@pytest.mark.parametrize(
    "entry, message",
    [
        ('kind = "pgdd"\neps = [0.1]', "unknown evaluation 'pgdd'; valid: clean, gradients, determinism, logits, gaussian"),
        ('kind = "pgd"\neps = [0.1, -0.1]', "eps=-0.1 is out of range; valid: 0 <= eps <= 1"),
        ('kind = "pixel"\neta = [1.5]', "eta=1.5 is out of range; valid: 0 <= eta <= 1"),
        ('kind = "occlusion"\nsize = [40]', "size=40 is out of range; valid: an integer patch side"),
        ('kind = "pgd"\neps = [0.1]\nsteps = 0', "steps=0 is out of range; valid: an integer >= 1"),
        ('kind = "pgd"\neps = [0.1]\nstep = 3', "unknown parameter(s) step"),
        ('kind = "mifgsm"\neps = [0.1]\nbackend = "foolbox"', "foolbox has no MI-FGSM"),
    ],
)
def test_bad_suites_are_refused_before_any_work(tiny_home, entry, message, monkeypatch):
    (tiny_home.suites / "bad.toml").write_text(f"[[evaluations]]\n{entry}\n")
    monkeypatch.setattr(harness, "load_dataset", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(UserError) as err:
        harness.plan("mnist5k", "bad", device="cpu", home=tiny_home.home)
    assert message in str(err.value)


def test_unknown_suite_lists_the_valid_ones(tiny_home):
    with pytest.raises(UserError, match=r"unknown suite .nope.; valid: corruptions, forum, masking, paper, quick, standard \(files in"):
        harness.plan("mnist5k", "nope", home=tiny_home.home)


def test_untrained_models_are_refused_with_the_command_to_train(tiny_home):
    with pytest.raises(UserError, match="rbs train --dataset mnist5k"):
        harness.plan("mnist5k", "quick", device="cpu", home=tiny_home.home)


def test_the_command_to_train_names_models_that_run_only_when_named(tiny_home):
    """`rbs train` alone trains the default selection only: the hint must name the paper suite's models."""
    with pytest.raises(UserError) as err:
        harness.plan("mnist5k", "paper", device="cpu", home=tiny_home.home)
    assert "--models dense,dropout,batchnorm,kwinner,kwinner-boost,dense-cnn1,sparse-cnn1" in str(err.value)
    assert "rbs benchmark --suite paper" in str(err.value)


def _records(rows):
    return pd.DataFrame(
        [{"model": m, "seed": 0, "evaluation": k, "kind": k, "strength": e, "accuracy": a, "source": m,
          "spec": f"{k}(eps={e})", "n": 1000, "correct": round(a * 1000)}
         for m, k, e, a in rows]
    )


def test_ordering_flags_fire_on_masking_patterns_only():
    honest = _records([
        ("d", "fgsm", 0.1, 0.5), ("d", "ifgsm", 0.1, 0.2), ("d", "pgd", 0.1, 0.1),
        ("d", "fgsm", 0.3, 0.2), ("d", "ifgsm", 0.3, 0.0), ("d", "pgd", 0.3, 0.0),
    ])
    assert ordering_flags(honest) == []
    masked = _records([
        ("k", "fgsm", 0.1, 0.3), ("k", "ifgsm", 0.1, 0.6), ("k", "pgd", 0.1, 0.7),
        ("k", "fgsm", 0.3, 0.5), ("k", "ifgsm", 0.3, 0.6), ("k", "pgd", 0.3, 0.6),
    ])
    checks = {f.check for f in ordering_flags(masked)}
    assert checks == {"one-step beats iterative", "PGD weaker than I-FGSM", "accuracy rises with eps"}


def test_the_suite_file_recorded_with_results_holds_no_path_of_this_machine(tmp_path):
    from types import SimpleNamespace

    from robustbench_sparse.runtime import Paths

    home = tmp_path / "home"
    (home / "attacks").mkdir(parents=True)
    inside, outside = home / "attacks" / "quick.toml", tmp_path / "elsewhere" / "mine.toml"
    plan = lambda source: SimpleNamespace(suite=SimpleNamespace(source=str(source)), paths=Paths(home))  # noqa: E731
    assert harness.suite_file(plan(inside)) == "attacks/quick.toml"
    assert harness.suite_file(plan(outside)) == "mine.toml"


FEWER_SEEDS = """
test_size = 60
models = ["dense", "dropout"]
seeds_below = { dropout = 1 }
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.3]
"""


def test_a_model_the_suite_runs_on_fewer_seeds_is_neither_trained_nor_evaluated_on_the_others(
        trained_home, tmp_path, small_mnist):
    """`seeds_below = {dropout = 1}`: over seeds 0 and 1, dropout runs on seed 0 only (trained,
    evaluated, reported), dense on both, and the run says so; a seed on which no model runs is refused."""
    from robustbench_sparse.pipeline import train_missing

    home = make_home(tmp_path / "home")
    shutil.copytree(trained_home.checkpoints("mnist5k"), home.checkpoints("mnist5k"))
    (home.suites / "fewer.toml").write_text(FEWER_SEEDS)
    setup = harness.prepare("mnist5k", "fewer", seeds=(0, 1), device="cpu", home=home.home)
    assert [s.name for s in setup.specs] == ["dense", "dropout"]
    assert setup.notes == ("dropout run on training seeds below 1 only (the suite's seeds_below): not on seed 1",)
    with pytest.raises(UserError, match=r"rbs train --dataset mnist5k --models dense --seeds 1"):
        harness.plan_from(setup)  # the command to train names dense only
    trained = {(o.model, o.seed): o.action for o in train_missing(setup)}
    assert trained == {("dense", 0): "cached", ("dropout", 0): "cached", ("dense", 1): "trained"}
    frame = harness.evaluate("mnist5k", "fewer", seeds=(0, 1), device="cpu", home=home.home)
    assert frame.groupby("model")["seed"].unique().map(sorted).to_dict() == {"dense": [0, 1], "dropout": [0]}
    plan = harness.plan("mnist5k", "fewer", seeds=(0, 1), device="cpu", home=home.home)
    assert set(plan.checkpoints) == {("dense", 0), ("dense", 1), ("dropout", 0)}
    from robustbench_sparse.report import build_report

    report = build_report(plan, formats=("markdown",))
    assert "dropout run on training seeds below 1 only" in (report.folder / "report.md").read_text()
    cards = home.reports("mnist5k") / "cards"
    assert json.loads((cards / "dropout.json").read_text())["runs"]["fewer"]["seeds"] == [0]
    assert json.loads((cards / "dense.json").read_text())["runs"]["fewer"]["seeds"] == [0, 1]
    with pytest.raises(UserError, match=r"runs none of dropout on seeds 1 \(its seeds_below: dropout = 1\)"):
        harness.prepare("mnist5k", "fewer", models=("dropout",), seeds=(1,), home=home.home)


@pytest.mark.parametrize("line, message", [
    ('seeds_below = { dropout = 0 }', "seeds_below must be a table of model names and integers >= 1"),
    ('seeds_below = 5', "seeds_below must be a table of model names and integers >= 1"),
    ('seeds_below = { dropoutt = 5 }', "seeds_below names dropoutt, not zoo models for mnist5k; valid: dense"),
])
def test_a_bad_seeds_below_is_refused_before_any_work(tiny_home, line, message, monkeypatch):
    (tiny_home.suites / "bad.toml").write_text(f'{line}\n[[evaluations]]\nkind = "pixel"\neta = [0.1]\n')
    monkeypatch.setattr(harness, "load_dataset", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(UserError, match=message):
        harness.plan("mnist5k", "bad", device="cpu", home=tiny_home.home)
