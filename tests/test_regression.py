import json
import shutil

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
    monkeypatch.setattr("robustbench_sparse.cli.load_dataset", lambda *a, **k: small_mnist)
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
    # the zoo has 5 models; the baseline 2: the others are reported as missing unless allowed
    strict = _rbs(home, "check", "--baseline", str(out), "--tolerance", "0")
    assert strict.exit_code == 1 and "in this run, not in the baseline" in strict.output
    allowed = _rbs(home, "check", "--baseline", str(out), "--tolerance", "0", "--allow-missing")
    assert allowed.exit_code == 0, allowed.output
    assert "robustness check passed" in allowed.output and "REGRESSIONS" not in allowed.output


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
    (home.suites / "ci.toml").write_text(SUITE.replace("steps = 5", "steps = 7"))
    changed = _rbs(home, "check", "--baseline", str(out), "--allow-missing")
    assert changed.exit_code == 2 and "suite changed since the baseline" in changed.output


def test_three_seeds_give_mean_and_std_in_baseline_and_report(home, tmp_path):
    out = tmp_path / "baseline.json"
    made = _rbs(home, "baseline", "--suite", "ci", "--models", "dense,kwinner", "--seeds", "0,1,2", "--out", str(out))
    assert made.exit_code == 0, made.output
    doc = json.loads(out.read_text())
    assert doc["seeds"] == [0, 1, 2]
    stds = [c["accuracy"]["std"] for c in doc["cells"]]
    assert all(len(c["accuracy"]["per_seed"]) == 3 for c in doc["cells"]) and max(stds) > 0
    passed = _rbs(home, "check", "--baseline", str(out), "--sigma", "3", "--tolerance", "0", "--allow-missing")
    assert passed.exit_code == 0, passed.output
    report = runner.invoke(app, ["report", "--home", str(home.home), "--suite", "ci", "--models", "dense,kwinner",
                                 "--seeds", "0,1,2"])
    assert report.exit_code == 0, report.output
    text = (home.reports("mnist5k") / "ci" / "report.md").read_text()
    assert " ± " in text and "training seeds | 0, 1, 2" in text
