"""The report's plots (seaborn on matplotlib's file-only Agg backend), each saved as PNG and SVG.

matplotlib and seaborn are imported on first use, so importing the package stays light.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robustbench_sparse.analysis.tables import accuracies
from robustbench_sparse.perturb.corruptions import CORRUPTIONS, corrupt
from robustbench_sparse.results.transfer import transfer_matrix
from robustbench_sparse.runtime import atomic_write_bytes, generator, stable_seed

UNITS = {
    "sigma": "noise std σ (pixel units, [0,1] scale)",
    "eta": "fraction η of pixels",
    "size": "patch side (pixels)",
    "eps": "L∞ budget ε (pixel units, [0,1] scale)",
}
Colours = dict[str, tuple[float, float, float]]


def _libraries() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed on servers and CI
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def palette(models: list[str]) -> Colours:
    """One colour per model, the same in every plot (zoo order)."""
    _, sns = _libraries()
    colours = sns.color_palette("colorblind", len(models))
    return dict(zip(models, colours, strict=True))


def plot_sweeps(white: pd.DataFrame, colours: Colours, folder: Path) -> list[Path]:
    """Accuracy vs strength, one panel per evaluation, one line per model."""
    plt, sns = _libraries()
    data = accuracies(white)
    data = data[data["param"] != ""].copy()
    data["accuracy (%)"] = data["accuracy"] * 100
    evaluations = list(dict.fromkeys(data["evaluation"]))
    if not evaluations:
        return []
    cols = min(4, len(evaluations))
    rows = -(-len(evaluations) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, evaluation in zip(axes.flat, evaluations, strict=False):
        part = data[data["evaluation"] == evaluation]
        sns.lineplot(data=part, x="strength", y="accuracy (%)", hue="model", palette=colours, marker="o",
                     errorbar="sd", ax=ax, legend=False)
        ax.set_title(evaluation)
        ax.set_xticks(sorted(part["strength"].unique()))
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_xlabel(UNITS.get(part["param"].iloc[0], part["param"].iloc[0]))
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(evaluations):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=c, marker="o", label=m) for m, c in colours.items()]
    fig.legend(handles=handles, title="model", loc="lower center", ncol=len(handles), bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Accuracy under each perturbation (higher is more robust)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, folder / "accuracy_vs_strength")


def plot_transfer(records: pd.DataFrame, folder: Path) -> list[Path]:
    """Source x target heatmaps of accuracy, one figure per attack, one panel per eps."""
    plt, sns = _libraries()
    paths: list[Path] = []
    for evaluation in dict.fromkeys(records["evaluation"]):
        part = records[records["evaluation"] == evaluation]
        strengths = sorted(part["strength"].unique())
        fig, axes = plt.subplots(1, len(strengths), figsize=(4.6 * len(strengths), 4.2), squeeze=False)
        for ax, eps in zip(axes.flat, strengths, strict=True):
            matrix = transfer_matrix(part, evaluation, eps)
            sns.heatmap(matrix, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="viridis", ax=ax,
                        cbar_kws={"label": "target accuracy (%)"})
            ax.set_title(f"{evaluation}, ε = {eps:g}")
            ax.set_xlabel("target model (evaluated)")
            ax.set_ylabel("source model (crafted on)")
        fig.suptitle(f"Transfer of {evaluation} adversarial examples (diagonal = white-box)")
        fig.tight_layout()
        paths += _save(fig, folder / f"transfer_{evaluation}")
    return paths


def plot_corruptions(x: torch.Tensor, eval_seed: int, folder: Path) -> list[Path]:
    """One test image under each of MNIST-C's corruptions at its default severity."""
    plt, _ = _libraries()
    names = list(CORRUPTIONS)
    fig, axes = plt.subplots(2, 8, figsize=(13, 3.8))
    panels = [("clean", x)] + [(n, corrupt(n, x, CORRUPTIONS[n].default_severity,
                                           [generator(stable_seed(eval_seed, "corruption picture", n))]))
                               for n in names]
    for ax, (name, image) in zip(axes.flat, panels, strict=True):
        picture = image[0].permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
        severity = "" if name == "clean" else f" ({CORRUPTIONS[name].default_severity})"
        ax.set_title(f"{name.replace('_', ' ')}{severity}", fontsize=9)
        ax.axis("off")
    fig.suptitle("A test image under each MNIST-C corruption (MNIST-C's default severity in brackets)")
    fig.tight_layout()
    return _save(fig, folder / "corruptions")


# An SVG names its elements by salted hashes and dates itself; with a fixed salt and no date, a plot
# of the same numbers is the same file (a rebuilt report is the committed one, byte for byte).
SVG_SALT = "robustbench-sparse"


def _save(fig: Any, stem: Path) -> list[Path]:
    plt, _ = _libraries()
    out = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path, options in zip(out, ({"dpi": 110}, {"metadata": {"Date": None}}), strict=True):
        buffer = io.BytesIO()
        with plt.rc_context({"svg.hashsalt": SVG_SALT}):
            fig.savefig(buffer, format=path.suffix[1:], bbox_inches="tight", **options)
        if not path.exists() or path.read_bytes() != buffer.getvalue():
            atomic_write_bytes(path, buffer.getvalue())
    plt.close(fig)
    return out
