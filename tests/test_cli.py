from typer.testing import CliRunner

from robustbench_sparse.cli import app

runner = CliRunner()


def test_unknown_model_is_rejected_with_the_valid_list(tiny_home):
    result = runner.invoke(app, ["train", "--home", str(tiny_home.home), "--models", "dense,foo"])
    assert result.exit_code == 2
    assert "unknown model(s) foo" in result.output
    assert "valid: dense, dropout, batchnorm, kwinner-boost, kwinner" in result.output


def test_unknown_dataset_is_rejected_with_the_valid_list(tiny_home):
    result = runner.invoke(app, ["train", "--home", str(tiny_home.home), "--dataset", "imagenet"])
    assert result.exit_code == 2
    for name in ("mnist5k", "mnist", "fashion-mnist", "cifar10"):
        assert name in result.output


def test_bad_seeds_are_refused(tiny_home):
    result = runner.invoke(app, ["train", "--home", str(tiny_home.home), "--seeds", "0,x"])
    assert result.exit_code == 2 and "--seeds" in result.output


def test_train_then_zoo_shows_trained_and_second_run_trains_nothing(tiny_home):
    args = ["train", "--home", str(tiny_home.home), "--models", "dense", "--device", "cpu"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "| dense" in first.output and "trained" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "nothing to train" in second.output
    listing = runner.invoke(app, ["zoo", "--home", str(tiny_home.home)])
    assert listing.exit_code == 0
    dense_row = next(line for line in listing.output.splitlines() if line.startswith("| dense "))
    assert "mnist5k: trained" in dense_row and "mnist: missing" in dense_row


def test_train_with_a_suite_trains_its_models_on_the_seeds_it_runs_them_on(tiny_home):
    (tiny_home.suites / "fewer.toml").write_text(
        'models = ["dense", "dropout"]\nseeds_below = { dropout = 1 }\n[[evaluations]]\nkind = "pixel"\neta = [0.1]\n')
    args = ["train", "--home", str(tiny_home.home), "--suite", "fewer", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert "note: dropout run on training seeds below 1 only" in result.output
    assert "| dense " in result.output and "dropout" not in result.output.split("note:")[1].split("\n", 1)[1]
    assert not list(tiny_home.checkpoints("mnist5k").glob("dropout-*"))
    refused = runner.invoke(app, [*args, "--seeds", "1", "--models", "dropout"])
    assert refused.exit_code == 2 and "runs none of dropout on seeds 1" in refused.output
