"""The paper suite on a GPU against the CPU: do CUDA-trained Table 1 networks score within the
CPU seeds' spread, and what does training cost on each?

Reads committed records only (nothing is trained or run): the CPU parts
`reports/mnist/parts/paper-seed*.jsonl` (portable regime, one thread per training) and the CUDA
parts `reports/mnist/parts/cuda/*.jsonl` (made on an NVIDIA H200 with `--device cuda`, torch 2.11),
with their checkpoints' manifests. For each network it prints the noise score (correct of
110,000 over the 11 pixel-noise levels) as the CPU seeds' mean ± std, the CUDA seeds' scores, how
many CPU standard deviations each lies from the CPU mean, Welch's p of CUDA against CPU (Holm over
the networks), the CUDA-minus-CPU difference on each seed the two share (same initial weights and
batch order, other arithmetic), clean accuracies, and the recorded training seconds on each.

    python benchmarks/cuda_vs_cpu.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from statsmodels.stats.multitest import multipletests

from robustbench_sparse.analysis.stats import welch_p
from robustbench_sparse.results.exchange import manifests_path, read_records

PARTS = Path(__file__).resolve().parent.parent / "reports" / "mnist" / "parts"


def _frame(files: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    pixel = pd.DataFrame([r for f in files for r in read_records(f) if r["kind"] == "pixel"])
    scores = pixel.groupby(["model", "seed"]).agg(score=("correct", "sum"), device=("device", "first"))
    clean = pixel[pixel["strength"] == 0].set_index(["model", "seed"])["accuracy"]
    seconds = pd.Series({(m["model"], m["seed"]): m["train_seconds"] for f in files
                         for m in json.loads(manifests_path(f).read_text()).values()}, name="seconds")
    return scores.join(clean.rename("clean")), seconds


def main() -> None:
    cpu, cpu_s = _frame(sorted(PARTS.glob("paper-seed*.jsonl")))
    cuda, cuda_s = _frame(sorted((PARTS / "cuda").glob("*.jsonl")))
    assert set(cpu["device"]) == {"cpu"} and set(cuda["device"]) == {"cuda"}
    rows = []
    for model, on_gpu in cuda.groupby(level="model"):
        on_cpu = cpu.xs(model, level="model")
        mean, std = on_cpu["score"].mean(), on_cpu["score"].std()
        gpu = on_gpu.xs(model, level="model")
        shared = gpu.index.intersection(on_cpu.index)
        rows.append({
            "model": model, "cpu seeds": len(on_cpu), "cpu score": f"{mean:,.0f} ± {std:,.0f}",
            "cuda seeds": ", ".join(map(str, gpu.index)),
            "cuda scores": ", ".join(f"{s:,}" for s in gpu["score"]),
            "z": ", ".join(f"{(s - mean) / std:+.2f}" for s in gpu["score"]),
            "p": welch_p(gpu["score"], on_cpu["score"]),
            "same seed cuda - cpu": ", ".join(f"{gpu.at[s, 'score'] - on_cpu.at[s, 'score']:+,}" for s in shared),
            "clean % cpu": f"{100 * on_cpu['clean'].mean():.2f}",
            "clean % cuda": ", ".join(f"{100 * c:.2f}" for c in gpu["clean"]),
            "train s cpu (1 thread)": f"{cpu_s.xs(model).median():.0f}",
            "train s cuda": ", ".join(f"{cuda_s[(model, s)]:.0f}" for s in gpu.index),
        })
    table = pd.DataFrame(rows).set_index("model")
    table["p (Holm)"] = multipletests(table.pop("p"), method="holm")[1].round(2)
    print(table.to_markdown())
    print(f"\nCUDA scores within 2 CPU std of the CPU mean: "
          f"{sum(abs(float(z)) <= 2 for zs in table['z'] for z in zs.split(','))} of {len(cuda)}")


if __name__ == "__main__":
    main()
