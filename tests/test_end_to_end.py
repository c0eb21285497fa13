"""The harness core: every shipped suite end to end, masking-check statuses, run identity, keys,
the shared store with leases, and processes that run at once or are killed."""

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from robustbench_sparse.cli import app
from robustbench_sparse.evaluation import cells
from robustbench_sparse.evaluation.suites import available_suites, parse_suite
from robustbench_sparse.execution.executor import perturbed_set
from robustbench_sparse.results import harness
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.runtime import REPO_ROOT, UserError, progress_disabled
from robustbench_sparse.zoo.checkpoints import checkpoint_status
from robustbench_sparse.zoo.spec import load_zoo, select_models
from tests.conftest import make_home

runner = CliRunner()
CPU = torch.device("cpu")
SHIPPED = available_suites(harness.Paths(REPO_ROOT))


def _small(text: str, size: int) -> str:
    """A shipped suite on its first `size` test images."""
    text = re.sub(r"(?m)^test_size\s*=.*$", "", text)
    return f"test_size = {size}\n" + text


@pytest.fixture()
def home(tmp_path, trained_home, small_mnist, monkeypatch):
    """A fresh home with the session's trained tiny checkpoints and every shipped suite on 12 images."""
    monkeypatch.setattr("robustbench_sparse.pipeline.load_dataset", lambda *a, **k: small_mnist)
    paths = make_home(tmp_path / "home")
    shutil.copytree(trained_home.checkpoints("mnist5k"), paths.checkpoints("mnist5k"))
    for name in SHIPPED:
        path = paths.suites / f"{name}.toml"
        path.write_text(_small(path.read_text(), 12))
    return paths


def _rbs(paths, *args, device=True):
    return runner.invoke(app, [*args, "--home", str(paths.home), *(["--device", "cpu"] if device else [])])


def test_the_shipped_suites_are_the_documented_ones():
    assert SHIPPED == ["corruptions", "forum", "masking", "paper", "quick", "standard"]


@pytest.mark.parametrize("suite", SHIPPED)
def test_every_shipped_suite_runs_through_evaluate_report_and_benchmark(home, suite):
    evaluated = _rbs(home, "evaluate", "--suite", suite)
    assert evaluated.exit_code == 0, evaluated.output
    assert "Traceback" not in evaluated.output and "masking checks" in evaluated.output
    reported = _rbs(home, "report", "--suite", suite, device=False)
    assert reported.exit_code == 0, reported.output
    benched = _rbs(home, "benchmark", "--suite", suite)
    assert benched.exit_code == 0, benched.output
    text = (home.reports("mnist5k") / suite / "report.md").read_text()
    overview = text.split("## Overview")[1].split("##")[0]
    rows = [line for line in overview.splitlines() if line.startswith("| ") and "model" not in line]
    assert len(rows) == (11 if suite == "paper" else 5)  # the zoo and Table 1's eight networks
    for row in rows:  # a status for the checks, never a bare dash
        last = row.rstrip(" |").split("|")[-1].strip()
        assert last not in ("", "-") and ("fired" in last or "passed" in last or "not run" in last), row


def test_each_check_has_a_status_and_not_run_names_what_it_needs(home):
    assert _rbs(home, "evaluate", "--suite", "standard", "--models", "dense").exit_code == 0
    plan = harness.plan("mnist5k", "standard", ["dense"], device="cpu", home=home.home)
    checks = harness.open_store(plan.paths, "mnist5k").frame(c.key for c in plan.cells())
    from robustbench_sparse.analysis.diagnostics import CHECK_NEEDS, masking_checks

    table = masking_checks(checks)
    assert len(table) == len(CHECK_NEEDS) == 11 and set(table["status"]) <= {"fired", "passed", "not run"}
    status = dict(zip(table["check"].str.split(".").str[0].astype(int), table["status"], strict=True))
    assert status[1] in ("passed", "fired")  # FGSM, I-FGSM and PGD all run
    # no 5x PGD, eps = 1, BPDA, gradients, determinism, logits, AutoAttack, adaptive attacks in `standard`
    for number in (2, 3, 5, 6, 7, 8, 9, 10, 11):
        assert status[number] == "not run"
        needs = table.loc[table["check"].str.startswith(f"{number}."), "evidence / needs"].item()
        assert needs == f"needs {CHECK_NEEDS[number][1]}"


def test_the_paper_suite_without_attacks_reports_checks_as_not_run(home):
    """Regression: the masking checks raised KeyError('model') on a suite with no attack."""
    result = _rbs(home, "evaluate", "--suite", "paper")
    assert result.exit_code == 0, result.output
    assert "none fired; not run: 1, 2, 3, 4, 5, 6" in result.output


def test_a_model_subset_restricts_the_ensemble_with_a_note(home):
    result = _rbs(home, "benchmark", "--suite", "quick", "--models", "dense,kwinner")
    assert result.exit_code == 0, result.output
    assert "transfer ensemble dropped" in result.output
    two = _rbs(home, "transfer", "--suite", "quick", "--models", "dense,dropout,kwinner")
    assert two.exit_code == 0, two.output
    assert "restricted to the selected models dense, dropout (left out: batchnorm)" in two.output
    assert "| ensemble " in two.output


def test_bad_input_is_refused_before_any_training(home, monkeypatch):
    monkeypatch.setattr("robustbench_sparse.pipeline.train_zoo", lambda *a, **k: pytest.fail("work started"))
    for args, message in [
        (("--models", "dense,nope"), "unknown model(s) nope"),
        (("--suite", "nope"), "unknown suite 'nope'"),
        (("--seeds", "0,0"), "--seeds"),
    ]:
        result = _rbs(home, "benchmark", *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output


# --- keys ------------------------------------------------------------------------------------

SUITE = """
test_size = 40
batch_size = {bs}
[[evaluations]]
kind = "gaussian"
sigma = [0.3]
[[evaluations]]
kind = "pixel"
eta = [0.2]
[[evaluations]]
kind = "occlusion"
size = [8]
fill = "noise"
[[evaluations]]
kind = "fgsm"
eps = [{eps}]
[[evaluations]]
kind = "pgd"
eps = [0.2]
steps = 3
[[evaluations]]
kind = "pgd"
name = "pgd-margin"
eps = [0.2]
steps = 3
loss = "margin"
"""


def _plan(paths, bs=10, eps="0.1"):
    (paths.suites / "keys.toml").write_text(SUITE.format(bs=bs, eps=eps))
    return harness.plan("mnist5k", "keys", ["dense"], device="cpu", home=paths.home)


def _keys(plan):
    return {(c.evaluation.name, c.strength): c.key for c in plan.cells()}


def test_keys_ignore_batch_size_where_every_draw_is_per_image(home):
    small, large = _plan(home, bs=7), _plan(home, bs=40)
    a, b = _keys(small), _keys(large)
    for name in ("clean", "gaussian", "pixel", "occlusion", "fgsm", "pgd-margin"):
        same = [k for k in a if k[0] == name]
        assert same and all(a[k] == b[k] for k in same), name
    assert a[("pgd", 0.2)] != b[("pgd", 0.2)]  # torchattacks draws PGD's random start per batch
    model = harness.workspace(small).model("dense", 0)
    x, y = small.test_set()
    for evaluation in small.suite.evaluations:
        for strength in evaluation.strengths:
            if evaluation.name == "pgd":
                continue
            sets = [perturbed_set(model, evaluation, strength, x, y, small.info, CPU, 0, bs) for bs in (7, 40)]
            assert torch.allclose(sets[0], sets[1], atol=1e-6), evaluation.name


def test_int_and_float_strengths_are_one_cell(home):
    assert _keys(_plan(home, eps="1"))[("fgsm", 1.0)] == _keys(_plan(home, eps="1.0"))[("fgsm", 1.0)]


def test_keys_change_with_versions_code_and_test_images(home, monkeypatch):
    plan = _plan(home)
    before = _keys(plan)
    other = dataclasses.replace(plan.data, test_x=plan.data.test_x.flip(0), test_y=plan.data.test_y.flip(0))
    assert all(v not in before.values() for v in _keys(dataclasses.replace(plan, data=other)).values())
    real = cells.environment()
    for change in ({"torchattacks": "9.9"}, {"code": "0" * 16}):
        monkeypatch.setattr(cells, "environment", lambda c=change: {**real, **c})
        cells.environment_id.cache_clear()
        assert all(v not in before.values() for v in _keys(plan).values()), change
        monkeypatch.undo()
        cells.environment_id.cache_clear()
    assert _keys(plan) == before


def test_a_models_description_and_dataset_list_do_not_retrain_or_change_keys(home):
    before = _keys(_plan(home))
    text = home.zoo_spec.read_text().replace(
        "[models.dense]\n", '[models.dense]\ndescription = "a new text"\ndatasets = ["mnist5k", "cifar10"]\n')
    home.zoo_spec.write_text(text)
    spec = select_models(load_zoo(home.zoo_spec), "mnist5k", ["dense"])[0]
    assert spec.description == "a new text"
    assert checkpoint_status(home, spec, "mnist5k", 0) == "trained"
    assert _keys(_plan(home)) == before


def test_gradient_share_is_kept_apart_from_accuracies(home):
    assert _rbs(home, "evaluate", "--suite", "quick", "--models", "dense").exit_code == 0
    frame = pd.read_json(home.reports("mnist5k") / "results.jsonl", lines=True)  # the store's readable copy
    assert set(frame.loc[frame["kind"] == "gradients", "metric"]) == {"live-gradient share"}
    assert set(frame.loc[frame["kind"] == "determinism", "metric"]) == {"deterministic share"}
    assert set(frame.loc[frame["kind"] == "logits", "metric"]) == {"logit-output share"}
    measured = frame["kind"].isin(["gradients", "determinism", "logits"])
    assert set(frame.loc[~measured, "metric"]) == {"accuracy"}
    from robustbench_sparse.analysis.tables import summary

    columns = " ".join(summary(frame).columns)
    assert not any(name in columns for name in ("live-gradients", "determinism", "logits"))


@pytest.mark.parametrize("value, disabled", [("1", True), ("true", True), ("0", None), ("", None), ("no", None)])
def test_rbs_no_progress_means_what_it_says(monkeypatch, value, disabled):
    monkeypatch.setenv("RBS_NO_PROGRESS", value)
    assert progress_disabled() is disabled


def test_unknown_executor_is_refused(home):
    plan = _plan(home)
    with pytest.raises(UserError, match="unknown executor 'nope'; valid: local"):
        harness.run(plan, executor="nope")


# --- the store: leases, several processes, kill -9 ----------------------------------------------


def test_a_lease_keeps_others_out_until_released_expired_or_its_holder_dies(tmp_path):
    a, b = ResultStore(tmp_path / "s.sqlite", lease_seconds=60), ResultStore(tmp_path / "s.sqlite", lease_seconds=60)
    assert a.claim("job") and not b.claim("job")
    a.release("job")
    assert b.claim("job") and not a.claim("job")
    b.close()
    short = ResultStore(tmp_path / "s.sqlite", lease_seconds=0.2)
    assert short.claim("other")
    short._stop.set()  # its heartbeat stops, as in a hung or killed worker
    time.sleep(0.5)
    assert a.claim("other")
    # a lease whose holder process is gone is taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with a._connect() as db:
        db.execute("UPDATE leases SET owner = 'gone', pid = ?, expires = ? WHERE key = 'other'",
                   (dead.pid, time.time() + 3600))
    assert b.claim("other")


def test_a_record_is_stored_once(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    record = {"key": "k", "model": "m"}
    assert store.add([record]) == 1 and store.add([record]) == 0 and store.count() == 1


CONCURRENT = """
test_size = 150
batch_size = 50
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
[[evaluations]]
kind = "fgsm"
eps = [0.1, 0.2]
[[evaluations]]
kind = "pgd"
eps = [0.1, 0.2, 0.3]
steps = 20
"""


def _cli(paths: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RBS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "robustbench_sparse.cli", *args, "--home", str(paths), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT,
    )


@pytest.fixture()
def shared(tmp_path, trained_home):
    paths = make_home(tmp_path / "shared")
    shutil.copytree(trained_home.checkpoints("mnist5k"), paths.checkpoints("mnist5k"))
    (paths.suites / "busy.toml").write_text(CONCURRENT)
    return paths


def _reference(shared, tmp_path):
    plan = harness.plan("mnist5k", "busy", device="cpu", home=shared.home)
    frame = harness.run(plan, ResultStore(tmp_path / "reference.sqlite"), harness.ArtifactStore(tmp_path / "ref"))
    return plan, frame.set_index("key")[["correct", "flags"]]


@pytest.mark.slow  # several processes
def test_two_processes_on_one_home_share_the_cells_and_store_each_once(shared, tmp_path):
    procs = [_cli(shared.home, "evaluate", "--suite", "busy") for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    plan, reference = _reference(shared, tmp_path)
    store = harness.open_store(shared, "mnist5k")
    assert store.count() == len(plan.cells())  # each cell once
    frame = store.frame(c.key for c in plan.cells()).set_index("key")[["correct", "flags"]]
    pd.testing.assert_frame_equal(frame, reference.loc[frame.index])


@pytest.mark.slow  # several processes
def test_kill_9_then_the_same_command_gives_the_uninterrupted_records(shared, tmp_path):
    store = harness.open_store(shared, "mnist5k")
    proc = _cli(shared.home, "evaluate", "--suite", "busy")
    deadline = time.time() + 300
    while store.count() < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = store.count()
    again = _cli(shared.home, "evaluate", "--suite", "busy")
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out
    plan, reference = _reference(shared, tmp_path)
    assert 3 <= partial < len(plan.cells()) == store.count()
    frame = store.frame(c.key for c in plan.cells()).set_index("key")[["correct", "flags"]]
    pd.testing.assert_frame_equal(frame, reference.loc[frame.index])


def test_suites_parse_strengths_canonically():
    from robustbench_sparse.data.datasets import dataset_info

    suite = parse_suite('[[evaluations]]\nkind = "pgd"\neps = [1, 0.5]\n', "s", dataset_info("mnist5k"))
    assert suite.evaluation("pgd").strengths == (1.0, 0.5)
    with pytest.raises(UserError, match="lists a strength twice"):
        parse_suite('[[evaluations]]\nkind = "pgd"\neps = [1, 1.0]\n', "s", dataset_info("mnist5k"))


def test_a_suite_may_set_its_test_size_per_dataset():
    from robustbench_sparse.data.datasets import dataset_info

    text = 'test_size = {fashion-mnist = 2000, cifar10 = 1000}\n[[evaluations]]\nkind = "fgsm"\neps = [0.1]\n'
    assert parse_suite(text, "s", dataset_info("fashion-mnist")).test_size == 2000
    assert parse_suite(text, "s", dataset_info("cifar10")).test_size == 1000
    assert parse_suite(text, "s", dataset_info("mnist5k")).test_size is None  # not named: the whole test set
    standard = parse_suite((REPO_ROOT / "attacks" / "standard.toml").read_text(), "standard", dataset_info("fashion-mnist"))
    assert standard.test_size == 2000
    for bad, message in [("{fashion = 10}", "test_size names unknown datasets fashion"),
                         ("{mnist = 0}", "test_size for mnist must be an integer >= 1"),
                         ("{mnist5k = {}}", "test_size for mnist5k must be"),
                         ("{mnist = true}", "test_size for mnist must be"), ("true", "test_size must be")]:
        with pytest.raises(UserError, match=message):
            parse_suite(text.replace("{fashion-mnist = 2000, cifar10 = 1000}", bad), "s", dataset_info("mnist5k"))
    for key in ("seed", "batch_size"):  # TOML's true is not the integer 1
        with pytest.raises(UserError, match=f"{key} must be an integer"):
            parse_suite(f"{key} = true\n" + text, "s", dataset_info("mnist5k"))


def test_a_renamed_evaluation_reuses_its_cells_under_the_new_name(home, monkeypatch):
    plan = _plan(home)
    harness.run(plan)
    text = SUITE.format(bs=10, eps="0.1").replace('kind = "fgsm"', 'kind = "fgsm"\nname = "fgsm-renamed"')
    (home.suites / "keys.toml").write_text(text)
    renamed = harness.plan("mnist5k", "keys", ["dense"], device="cpu", home=home.home)
    monkeypatch.setattr(harness, "make_record", lambda *a, **k: pytest.fail("a stored cell was recomputed"))
    frame = harness.run(renamed)
    assert "fgsm-renamed" in set(frame["evaluation"]) and "fgsm" not in set(frame["evaluation"])


@pytest.mark.parametrize("text, message", [
    ('[[evaluations]]\nkind = "pgd"\neps = [0.1]\n[[evaluations]]\nkind = "pgd"\nname = "again"\neps = [0.1]\n',
     "evaluations 'pgd' and 'again' are the same at 0.1"),
    ('[[evaluations]]\nkind = "pgd"\neps = [0.1]\n[transfer]\nstrengths = 0.1\n', "`strengths` must be a list of numbers"),
    ('[[evaluations]]\nkind = "pgd"\neps = [0.1]\n[transfer]\nensemble = "dense"\n', "`ensemble` must be a list of names"),
    ('transfer = "x"\n[[evaluations]]\nkind = "pgd"\neps = [0.1]\n', "`transfer` must be a table"),
    ('evaluations = ["pgd"]\n', "`evaluations` must be a list of tables"),
])
def test_malformed_suites_are_clear_errors(text, message):
    from robustbench_sparse.data.datasets import dataset_info

    with pytest.raises(UserError, match=re.escape(message)):
        parse_suite(text, "bad", dataset_info("mnist5k"))


def test_an_ensemble_member_that_is_no_model_is_refused(home):
    (home.suites / "ens.toml").write_text('[[evaluations]]\nkind = "fgsm"\neps = [0.1]\n'
                                          '[transfer]\nensemble = ["dense", "dropuot"]\n')
    result = _rbs(home, "transfer", "--suite", "ens")
    assert result.exit_code == 2 and "member(s) dropuot are not zoo models" in result.output
