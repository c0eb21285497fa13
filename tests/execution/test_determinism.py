"""The CPU regime (`runtime.CPU_REGIME`): one SHA-256 per (model, seed), and the same records,
whatever the machine's thread settings, oneDNN's ISA cap, torch's kernel choice or the executor.

Each run is a fresh `rbs` process with its own environment (the variables are read when torch
starts, so they cannot be varied inside one process). A control run in the native regime shows
that the same variation does change the weights when nothing pins them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_home

SUITE = """
test_size = 60
batch_size = 30
[[evaluations]]
kind = "pixel"
eta = [0.3]
[[evaluations]]
kind = "pgd"
eps = [0.1, 0.3]
steps = 5
"""
MODELS = "dense,kwinner-boost"
# The settings a machine or a user may bring; the regime must make every one irrelevant.
SETTINGS = {
    "1 thread, oneDNN capped at AVX2": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "2 threads, 2 workers, oneDNN capped at AVX512_CORE": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                                                           "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "RBS_TEST_WORKERS": "2"},
    "torch's generic kernels and MKL's auto branch asked for, 1 worker": {
        "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO", "RBS_TEST_WORKERS": "1"},
}


def _rbs(home: Path, env: dict[str, str], *args: str) -> None:
    workers = env.get("RBS_TEST_WORKERS")
    full = {**{k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}, **env}
    command = [sys.executable, "-m", "robustbench_sparse.cli", *args, "--home", str(home), "--device", "cpu",
               *(["--workers", workers] if workers else [])]
    done = subprocess.run(command, env=full, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def _checkpoints(home: Path) -> dict[str, str]:
    manifests = sorted((home / "models" / "mnist5k").glob("*.json"))
    return {json.loads(m.read_text())["model"]: json.loads(m.read_text())["sha256"] for m in manifests}


def _train(tmp_path: Path, name: str, env: dict[str, str]) -> Path:
    home = make_home(tmp_path / name.replace(" ", "-").replace(",", "")).home
    _rbs(home, env, "train", "--models", MODELS, "--seeds", "0")
    return home


@pytest.mark.slow  # a dozen fresh processes
def test_one_sha256_and_the_same_records_under_every_setting(tmp_path):
    homes = {name: _train(tmp_path, name, env) for name, env in SETTINGS.items()}
    hashes = {name: _checkpoints(home) for name, home in homes.items()}
    assert len({json.dumps(h, sort_keys=True) for h in hashes.values()}) == 1, hashes
    first_home = next(iter(homes.values()))
    manifest = json.loads(next((first_home / "models" / "mnist5k").glob("dense-*.json")).read_text())
    assert manifest["regime"]["name"] == "cpu-portable-1" and manifest["regime"]["threads"] == 1

    records = {}
    for name, home in list(homes.items())[1:]:
        (home / "attacks" / "det.toml").write_text(SUITE)
        _rbs(home, SETTINGS[name], "evaluate", "--suite", "det", "--models", MODELS)
        lines = (home / "reports" / "mnist5k" / "results.jsonl").read_text().splitlines()
        records[name] = sorted((r["key"], r["correct"], r["flags"]) for r in map(json.loads, lines))
    first, second = records.values()
    assert len(first) == 2 * (1 + 1 + 2)  # clean, pixel, pgd at two eps, for both models
    assert first == second

    # The control: without the regime, torch's kernel choice alone changes the weights.
    native = [_checkpoints(_train(tmp_path, f"native {cap}", {"RBS_CPU_REGIME": "native", "ATEN_CPU_CAPABILITY": cap,
                                                              "RBS_TEST_WORKERS": "1"}))
              for cap in ("default", "avx2")]
    assert native[0]["dense"] != native[1]["dense"]
