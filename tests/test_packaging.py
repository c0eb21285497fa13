"""The suite installs like its peers: a wheel, installed without the source tree, runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from robustbench_sparse.runtime import REPO_ROOT

pytestmark = pytest.mark.slow

TINY_SUITE = """
description = "FGSM on 40 digits"
test_size = 40
seed = 0
batch_size = 40

[[evaluations]]
kind = "fgsm"
eps = [0.0, 0.2]
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True, capture_output=True, text=True)
    (found,) = out.glob("robustbench_sparse-*.whl")
    return found


def test_the_wheel_carries_the_zoo_the_suites_and_the_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("robustbench_sparse/shipped/"))
    suites = sorted(p.name for p in (REPO_ROOT / "attacks").glob("*.toml"))
    assert shipped == sorted(["robustbench_sparse/shipped/models/zoo.toml",
                              *(f"robustbench_sparse/shipped/attacks/{s}" for s in suites)])
    assert "robustbench_sparse/report/schemas/card.schema.json" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "reports/")) for n in names)


def test_an_installed_wheel_runs_zoo_and_a_tiny_evaluation_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies come from this environment's site-packages (added as a path, so the
    # editable install of the checkout, a .pth hook there, is not seen); the package itself
    # only from the wheel, unpacked as pip would.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RBS_HOME", "PYTHONPATH")}
    env.update(RBS_NO_PROGRESS="1", OMP_NUM_THREADS="1")

    def rbs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), "-m", "robustbench_sparse.cli", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(python), "-c", "import robustbench_sparse; print(robustbench_sparse.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where

    listed = rbs("zoo")
    assert listed.returncode == 0, listed.stderr
    assert "kwinner-boost" in listed.stdout and "mnist5k: missing" in listed.stdout

    (work / "tiny.toml").write_text(TINY_SUITE)
    trained = rbs("train", "--models", "dense", "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    assert list((work / "models" / "mnist5k").glob("dense-seed0-*.pt"))  # the home is the current folder
    evaluated = rbs("evaluate", "--suite", "tiny.toml", "--models", "dense", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    lines = (work / "reports" / "mnist5k" / "results.jsonl").read_text().splitlines()  # the store's readable copy
    rows = {r["strength"]: r for r in map(json.loads, lines) if r["kind"] == "fgsm"}
    assert set(rows) == {0.0, 0.2} and all(r["n"] == 40 for r in rows.values())
    assert rows[0.0]["accuracy"] > 0.5  # a trained model on clean digits (eps = 0 is the clean image)
    assert rows[0.2]["accuracy"] <= rows[0.0]["accuracy"]  # robust <= clean
