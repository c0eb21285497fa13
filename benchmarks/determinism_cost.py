"""What the portable CPU regime costs per core: an attack step and a training epoch, pinned against
torch's own choices, and which part of the regime costs what.

Each configuration runs in its own process (the variables are read when torch starts), one torch
thread, on the zoo's mnist5k recipes (untrained weights: the cost does not depend on them):

- native: `RBS_CPU_REGIME=native`, torch's own choices (oneDNN convolutions, this CPU's kernels
  and MKL branch), one thread: how a task ran before the regime; machine-dependent;
- portable, MKL AVX2: the regime but MKL's AVX2 branch (on an AMD CPU MKL runs its AUTO branch for
  it, so this is not the same code on Intel and AMD: shown to split the cost, not offered);
- portable: the regime (im2col + GEMM convolutions, AVX2 kernels, MKL's COMPATIBLE branch).

Prints milliseconds per attack step (forward and input gradient on 200 test digits) for `dense`
and `kwinner-boost`, and per training epoch of `dense` on 1,000 digits, with the ratios to native,
all measured in one run.

    python benchmarks/determinism_cost.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CONFIGURATIONS = {
    "native": {"RBS_CPU_REGIME": "native"},
    "portable, MKL AVX2": {"RBS_TEST_MKL_CBWR": "AVX2,STRICT"},
    "portable": {},
}

MEASURE = r"""
import json, os, sys, time, dataclasses
import robustbench_sparse  # sets the regime's variables (unless RBS_CPU_REGIME=native)
if os.environ.get("RBS_TEST_MKL_CBWR"):
    os.environ["MKL_CBWR"] = os.environ["RBS_TEST_MKL_CBWR"]  # before MKL's first call
import torch
import torch.nn.functional as F
from robustbench_sparse.data.datasets import load_dataset
from robustbench_sparse.runtime import Paths, regime_block
from robustbench_sparse.training.train import train_model
from robustbench_sparse.zoo.build import build_model
from robustbench_sparse.zoo.spec import load_zoo

data = load_dataset("mnist5k")
zoo = load_zoo(Paths.default().zoo_spec)
x, y = data.test_x[:200], data.test_y[:200]
out = {}
with regime_block():
    torch.set_num_threads(1)
    for name in ("dense", "kwinner-boost"):
        model = build_model(zoo[name]["mnist5k"], data.info).eval()
        def step():
            xx = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xx), y), xx)
        for _ in range(2):
            step()
        started = time.perf_counter()
        for _ in range(10):
            step()
        out[f"{name} attack step"] = (time.perf_counter() - started) / 10 * 1000
    small = dataclasses.replace(data, train_x=data.train_x[:1000], train_y=data.train_y[:1000])
    spec = dataclasses.replace(zoo["dense"]["mnist5k"], epochs=1)
    started = time.perf_counter()
    train_model(spec, small, 0, torch.device("cpu"))
    out["dense training epoch"] = (time.perf_counter() - started) * 1000
print(json.dumps(out))
"""


def main() -> None:
    results = {}
    for name, env in CONFIGURATIONS.items():
        done = subprocess.run([sys.executable, "-c", MEASURE], env={**os.environ, **env}, capture_output=True,
                              text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    for what in results["native"]:
        cells = ", ".join(f"{name} {r[what]:.0f} ms ({r[what] / results['native'][what]:.2f}x)"
                          for name, r in results.items())
        print(f"{what}: {cells}")


if __name__ == "__main__":
    main()
