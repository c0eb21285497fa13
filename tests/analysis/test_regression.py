import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from tests.conftest import make_home

runner = CliRunner()

SUITE = """
test_size = 60
batch_size = 30
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.3]
[[evaluations]]
kind = "fgsm"
eps = [0.1, 0.2]
[[evaluations]]
kind = "pgd"
eps = [0.1]
steps = 5
"""


def _rbs(home, *args):
    return runner.invoke(app, [*args, "--home", str(home.home), "--device", "cpu"])


@pytest.fixture()
def home(tmp_path, trained_home, small_mnist, monkeypatch):
    """A fresh home holding copies of the session's trained tiny checkpoints (seed 0); models the
    CLI trains here learn from the same 1,000-image slice, to keep the tests fast."""
    monkeypatch.setattr("robustbench_sparse.pipeline.load_dataset", lambda *a, **k: small_mnist)
    paths = make_home(tmp_path)
    shutil.copytree(trained_home.checkpoints("mnist5k"), paths.checkpoints("mnist5k"))
    (paths.suites / "ci.toml").write_text(SUITE)
    return paths


def test_same_commit_passes_with_zero_tolerance(home, tmp_path):
    out = tmp_path / "baseline.json"
    made = _rbs(home, "baseline", "--suite", "ci", "--models", "dense,kwinner", "--out", str(out))
    assert made.exit_code == 0, made.output
    doc = json.loads(out.read_text())
    assert doc["dataset"] == "mnist5k" and doc["suite"] == "ci" and doc["seeds"] == [0]
    assert {"versions", "checkpoints", "split"} <= set(doc["environment"])
    assert len(doc["cells"]) == 2 * (1 + 2 + 2 + 1)
    cell = doc["cells"][0]
    assert set(cell["accuracy"]) == {"mean", "std", "per_seed"} and "spec" in cell
    # the zoo has 5 models, the baseline 2: check evaluates the baseline's models, nothing else
    strict = _rbs(home, "check", "--baseline", str(out), "--tolerance", "0")
    assert strict.exit_code == 0, strict.output
    assert "compared 12 cells" in strict.output and "models dense, kwinner" in strict.output
    assert "robustness check passed" in strict.output and "REGRESSIONS" not in strict.output
    assert "missing cells" not in strict.output


def test_a_weakened_model_fails_with_a_table_of_what_fell(home, tmp_path):
    out = tmp_path / "baseline.json"
    assert _rbs(home, "baseline", "--suite", "ci", "--out", str(out)).exit_code == 0
    # same name, much weaker variant: a 2-unit hidden layer
    text = home.zoo_spec.read_text().replace("[models.kwinner]\n", "[models.kwinner]\nhidden = 2\n")
    home.zoo_spec.write_text(text)
    result = _rbs(home, "check", "--baseline", str(out), "--tolerance", "1")
    assert result.exit_code == 1, result.output
    assert "REGRESSIONS" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| kwinner ")]
    assert rows and all(float(r.split("|")[6]) < -1 for r in rows)  # change (points) column
    assert not any(line.startswith("| dense ") for line in result.output.split("REGRESSIONS")[1].splitlines())


def test_unusable_input_exits_2(home, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = _rbs(home, "check", "--baseline", str(bad))
    assert result.exit_code == 2 and "unreadable" in result.output
    assert _rbs(home, "check", "--baseline", str(tmp_path / "none.json")).exit_code == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    assert "not a robustbench-sparse baseline" in _rbs(home, "check", "--baseline", str(other)).output
    out = tmp_path / "baseline.json"
    assert _rbs(home, "baseline", "--suite", "ci", "--models", "dense", "--out", str(out)).exit_code == 0
    wrong = _rbs(home, "check", "--baseline", str(out), "--dataset", "fashion-mnist")
    assert wrong.exit_code == 2 and "differs from the baseline's 'mnist5k'" in wrong.output
    wrong = _rbs(home, "check", "--baseline", str(out), "--suite", "quick")
    assert wrong.exit_code == 2 and "differs from the baseline's 'ci'" in wrong.output
    sigma = _rbs(home, "check", "--baseline", str(out), "--sigma", "2")
    assert sigma.exit_code == 2 and "several seeds" in sigma.output
    wrong = _rbs(home, "check", "--baseline", str(out), "--backend", "foolbox")
    assert wrong.exit_code == 2 and "--backend foolbox differs from the baseline's" in wrong.output


@pytest.mark.parametrize("change, message", [
    (("steps = 5", "steps = 7"), "pgd at 0.1 was pgd("),
    (("batch_size = 30", "batch_size = 20"), "batch size 30 -> 20"),
    (("eps = [0.1, 0.2]", "eps = [0.1, 0.2, 0.3]"), "added fgsm@0.3"),
    (("test_size = 60", "test_size = 50"), "test size 60 -> 50"),
])
def test_a_changed_suite_is_refused_before_any_work(home, tmp_path, monkeypatch, change, message):
    out = tmp_path / "baseline.json"
    assert _rbs(home, "baseline", "--suite", "ci", "--models", "dense", "--out", str(out)).exit_code == 0
    (home.suites / "ci.toml").write_text(SUITE.replace(*change))
    monkeypatch.setattr("robustbench_sparse.pipeline.train_zoo", lambda *a, **k: pytest.fail("work started"))
    changed = _rbs(home, "check", "--baseline", str(out))
    assert changed.exit_code == 2, changed.output
    assert "changed since the baseline" in changed.output and message in changed.output


def test_three_seeds_give_mean_and_std_in_baseline_and_report(home, tmp_path):
    out = tmp_path / "baseline.json"
    made = _rbs(home, "baseline", "--suite", "ci", "--models", "dense,kwinner", "--seeds", "0,1,2", "--out", str(out))
    assert made.exit_code == 0, made.output
    doc = json.loads(out.read_text())
    assert doc["seeds"] == [0, 1, 2]
    for model, fired in doc["fired"].items():  # a check that fired for any seed is "fired" overall
        assert all(doc["masking_checks"][model][check] == "fired" for check in fired)
    stds = [c["accuracy"]["std"] for c in doc["cells"]]
    assert all(len(c["accuracy"]["per_seed"]) == 3 for c in doc["cells"]) and max(stds) > 0
    passed = _rbs(home, "check", "--baseline", str(out), "--sigma", "3", "--tolerance", "0", "--allow-missing")
    assert passed.exit_code == 0, passed.output
    report = runner.invoke(app, ["report", "--home", str(home.home), "--suite", "ci", "--models", "dense,kwinner",
                                 "--seeds", "0,1,2"])
    assert report.exit_code == 0, report.output
    text = (home.reports("mnist5k") / "ci-seeds0-2" / "report.md").read_text()  # a folder named by its seeds
    assert " ± " in text and "training seeds | 0, 1, 2" in text


MASKING_SUITE = SUITE + """
[[evaluations]]
kind = "pgd"
name = "pgd-bpda"
eps = [0.1]
steps = 5
bpda = "relu"
[[evaluations]]
kind = "gradients"
"""


def test_a_change_that_kills_gradients_fails_the_check(home, tmp_path, monkeypatch):
    """Gradients cut at the k-winners layers make every attack weaker: accuracy under attack rises.
    That must fail CI (new masking flags; suspicious rises), not pass as an improvement."""
    from robustbench_sparse.zoo import sparse

    (home.suites / "cim.toml").write_text(MASKING_SUITE)
    out = tmp_path / "baseline.json"
    made = _rbs(home, "baseline", "--suite", "cim", "--models", "dense,kwinner", "--out", str(out))
    assert made.exit_code == 0, made.output
    honest = _rbs(home, "check", "--baseline", str(out), "--tolerance", "0")
    assert honest.exit_code == 0, honest.output

    real = sparse._KWinnersBase._with_backward

    def no_gradient(self, x, out, *args, **kwargs):
        if self.bpda is not None:
            return real(self, x, out, *args, **kwargs)
        return out.detach() + 0 * x  # same forward values, zero gradient

    monkeypatch.setattr(sparse._KWinnersBase, "_with_backward", no_gradient)
    from robustbench_sparse.execution import local

    monkeypatch.setattr(local, "default_workers", lambda: 1)  # the patch lives in this process: run here
    # CI starts from a clean checkout: nothing stored or cached from the honest run.
    shutil.rmtree(home.home / "reports")
    shutil.rmtree(home.cache)
    broken = _rbs(home, "check", "--baseline", str(out), "--tolerance", "2")
    assert broken.exit_code == 1, broken.output
    assert "NEW MASKING FLAGS" in broken.output and "SUSPICIOUS" in broken.output
    flagged = broken.output.split("NEW MASKING FLAGS")[1]
    assert "dead gradients" in flagged and "| kwinner " in flagged and "| dense " not in flagged
    rises = broken.output.split("SUSPICIOUS")[1].split("NEW MASKING FLAGS")[0]
    assert "| kwinner | pgd " in rises
    # --allow-rise accepts the rises, never the new masking flags
    still = _rbs(home, "check", "--baseline", str(out), "--tolerance", "2", "--allow-rise")
    assert still.exit_code == 1 and "NEW MASKING FLAGS" in still.output


def test_backend_is_part_of_the_run_and_of_the_baseline(home, tmp_path):
    plain = _rbs(home, "evaluate", "--suite", "ci", "--models", "dense")
    fool = _rbs(home, "evaluate", "--suite", "ci", "--models", "dense", "--backend", "foolbox")
    assert plain.exit_code == 0 and fool.exit_code == 0, fool.output
    reports = home.reports("mnist5k")
    for backend in ((), ("--backend", "foolbox")):
        made = runner.invoke(app, ["report", "--home", str(home.home), "--suite", "ci", "--models", "dense", *backend])
        assert made.exit_code == 0, made.output
        # only the suite's transfer cells (never run here) can be missing
        assert "no stored result" not in made.output or "run `rbs evaluate` and `rbs transfer`" in made.output
    ours = pd.read_csv(reports / "ci" / "records.csv")  # each report's records export
    theirs = pd.read_csv(reports / "ci@foolbox" / "records.csv")
    assert ours["spec"].str.contains("backend=torchattacks").any()
    assert not ours["spec"].str.contains("backend=foolbox").any()
    assert theirs[theirs["kind"].isin(["fgsm", "pgd"])]["spec"].str.contains("backend=foolbox").all()
    text = (reports / "ci@foolbox" / "report.md").read_text()
    assert "attack backend | foolbox" in text and "ci@foolbox" in text
    out = tmp_path / "fool.json"
    made = _rbs(home, "baseline", "--suite", "ci", "--models", "dense", "--backend", "foolbox", "--out", str(out))
    assert made.exit_code == 0, made.output
    assert json.loads(out.read_text())["backend"] == "foolbox"
    checked = _rbs(home, "check", "--baseline", str(out), "--tolerance", "0")
    assert checked.exit_code == 0, checked.output
