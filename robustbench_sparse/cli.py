"""`rbs`: the command line. A thin layer: it parses, calls the library, and prints."""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pandas as pd
import typer

from robustbench_sparse.attacks import BACKENDS
from robustbench_sparse.data import DATASETS, default_data_root, load_dataset
from robustbench_sparse.runtime import DEVICES, Paths, UserError, resolve_device

app = typer.Typer(
    help="robustbench-sparse: do sparse networks really resist noise and adversarial attacks?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DatasetName = enum.StrEnum("DatasetName", {name: name for name in DATASETS})  # type: ignore[misc]
DeviceName = enum.StrEnum("DeviceName", {name: name for name in DEVICES})  # type: ignore[misc]
DEFAULT_DATASET = DatasetName("mnist5k")
AUTO = DeviceName("auto")

DatasetOpt = Annotated[DatasetName, typer.Option("--dataset", "-d", help="Dataset to use.")]
DeviceOpt = Annotated[DeviceName, typer.Option(help="Where models run; auto picks CUDA when available.")]
HomeOpt = Annotated[
    Path | None,
    typer.Option(help="Folder holding models/, attacks/ and reports/ (default: $RBS_HOME, the current "
                 "folder if it has models/zoo.toml, else the repository)."),
]
DataRootOpt = Annotated[
    Path | None, typer.Option(help="torchvision-style data folder (default: $RBS_DATA_ROOT or ~/.cache).")
]
DownloadOpt = Annotated[bool, typer.Option(help="Let torchvision download a missing dataset (needs internet).")]
ModelsOpt = Annotated[str | None, typer.Option(help="Comma-separated model names (default: the whole zoo).")]
SeedsOpt = Annotated[str, typer.Option(help="Comma-separated training seeds, e.g. 0,1,2.")]
SuiteOpt = Annotated[str, typer.Option("--suite", "-s", help="Suite name under attacks/ or a .toml path.")]
BackendName = enum.StrEnum("BackendName", {name: name for name in BACKENDS})  # type: ignore[misc]
BackendOpt = Annotated[
    BackendName | None,
    typer.Option(help="Attack library for FGSM/I-FGSM/PGD (default: as the suite says, torchattacks)."),
]

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(func: F) -> F:
    """Print a UserError as one clear line and exit 2, with no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


def _resumable(store: Path) -> Callable[[], None]:
    def on_interrupt() -> None:
        typer.secho(
            f"\ninterrupted: every finished cell is kept in {store}; run the same command to resume",
            fg=typer.colors.YELLOW, err=True,
        )
        raise typer.Exit(130)

    return on_interrupt


def _paths(home: Path | None) -> Paths:
    return Paths(home) if home else Paths.default()


def parse_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--models was given but names no model")
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated non-negative integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def _print_table(frame: pd.DataFrame) -> None:
    typer.echo(frame.to_markdown(index=False))


@app.command()
@_user_errors
def zoo(home: HomeOpt = None) -> None:
    """List the zoo's variants, their key settings, and which are trained for each dataset."""
    from robustbench_sparse.checkpoints import checkpoint_status
    from robustbench_sparse.zoo import load_zoo

    paths = _paths(home)
    rows = []
    for by_dataset in load_zoo(paths.zoo_spec).values():
        first = next(iter(by_dataset.values()))
        trained = ", ".join(
            f"{dataset}: {checkpoint_status(paths, spec, dataset, 0)}" for dataset, spec in by_dataset.items()
        )
        rows.append({**first.summary(), "checkpoints (seed 0)": trained})
    _print_table(pd.DataFrame(rows))
    typer.echo(f"\nspec file: {paths.zoo_spec}")


@app.command()
@_user_errors
def train(
    dataset: DatasetOpt = DEFAULT_DATASET,
    models: ModelsOpt = None,
    seeds: SeedsOpt = "0",
    force: Annotated[bool, typer.Option(help="Retrain even when an up-to-date checkpoint exists.")] = False,
    device: DeviceOpt = AUTO,
    home: HomeOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Train every zoo model for a dataset once and cache it under models/ (skips up-to-date ones)."""
    from robustbench_sparse.train import train_zoo
    from robustbench_sparse.zoo import load_zoo, select_models

    paths = _paths(home)
    specs = select_models(load_zoo(paths.zoo_spec), dataset.value, parse_names(models))
    seed_list = parse_seeds(seeds)
    dev = resolve_device(device.value)
    outcomes = train_zoo(
        paths, specs, dataset.value,
        lambda: load_dataset(dataset.value, data_root or default_data_root(), download),
        seed_list, dev, force,
    )
    rows = [
        {
            "model": o.model,
            "seed": o.seed,
            "action": o.action,
            "clean acc %": round(100 * o.manifest.clean_accuracy, 2),
            "train s": o.manifest.train_seconds,
            "sha256": o.manifest.short_hash,
        }
        for o in outcomes
    ]
    _print_table(pd.DataFrame(rows))
    if all(o.action == "cached" for o in outcomes):
        typer.echo("\nnothing to train: every checkpoint is up to date (use --force to retrain)")
    typer.echo(f"\ncheckpoints: {paths.checkpoints(dataset.value)}")


@app.command()
@_user_errors
def evaluate(
    dataset: DatasetOpt = DEFAULT_DATASET,
    suite: SuiteOpt = "standard",
    models: ModelsOpt = None,
    seeds: SeedsOpt = "0",
    backend: BackendOpt = None,
    device: DeviceOpt = AUTO,
    home: HomeOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Run an evaluation suite against the trained zoo; resumes, and reuses finished cells."""
    from robustbench_sparse import harness
    from robustbench_sparse.diagnostics import flags_frame, ordering_flags
    from robustbench_sparse.tables import summary

    the_plan = harness.plan(
        dataset.value, suite, parse_names(models), parse_seeds(seeds), device.value,
        backend.value if backend else None, home, data_root, download,
    )
    store = harness.store_path(the_plan.paths, dataset.value)
    try:
        frame = harness.run(the_plan)
    except KeyboardInterrupt:
        _resumable(store)()
    csv_path, json_path = harness.export(frame, the_plan, "records")
    typer.echo(f"\nsuite {the_plan.suite.name!r} on {dataset.value}, {the_plan.n} test images "
               f"(accuracy % at each evaluation's strongest setting)\n")
    _print_table(summary(frame))
    flags = ordering_flags(frame)
    if flags:
        typer.secho("\npossible gradient masking (the attack, not the model, may be weak):",
                    fg=typer.colors.YELLOW)
        _print_table(flags_frame(flags))
    typer.echo(f"\nrecords: {csv_path}, {json_path}")


@app.command()
@_user_errors
def transfer(
    dataset: DatasetOpt = DEFAULT_DATASET,
    suite: SuiteOpt = "standard",
    models: ModelsOpt = None,
    seeds: SeedsOpt = "0",
    backend: BackendOpt = None,
    device: DeviceOpt = AUTO,
    home: HomeOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Craft each attack once per source model and evaluate it on every model (N x N matrices)."""
    from robustbench_sparse import harness
    from robustbench_sparse.transfer import run_transfer, transfer_matrix

    the_plan = harness.plan(
        dataset.value, suite, parse_names(models), parse_seeds(seeds), device.value,
        backend.value if backend else None, home, data_root, download,
    )
    try:
        frame = run_transfer(the_plan)
    except KeyboardInterrupt:
        _resumable(harness.store_path(the_plan.paths, dataset.value))()
    csv_path, json_path = harness.export(frame, the_plan, "transfer")
    for evaluation, strength in the_plan.suite.transfer_cells():
        typer.echo(f"\n{evaluation.name} at eps={strength:g}: accuracy % of each target (columns) "
                   "on examples crafted on each source (rows)\n")
        typer.echo(transfer_matrix(frame, evaluation.name, strength).round(1).to_markdown())
    typer.echo(f"\nrecords: {csv_path}, {json_path}")


@app.command()
@_user_errors
def report(
    dataset: DatasetOpt = DEFAULT_DATASET,
    suite: SuiteOpt = "standard",
    models: ModelsOpt = None,
    seeds: SeedsOpt = "0",
    home: HomeOpt = None,
    data_root: DataRootOpt = None,
) -> None:
    """Build tables, plots, Markdown and HTML from stored results (re-runs nothing)."""
    from robustbench_sparse import harness
    from robustbench_sparse.report import build_report

    the_plan = harness.plan(dataset.value, suite, parse_names(models), parse_seeds(seeds), "cpu",
                            None, home, data_root, False)
    result = build_report(the_plan)
    if result.missing:
        typer.secho(f"{result.missing} declared cells have no stored result; run `rbs evaluate` and "
                    f"`rbs transfer` for suite {suite!r} to fill them", fg=typer.colors.YELLOW)
    typer.echo(f"report: {result.markdown}\n        {result.html}\nfigures: {len(result.figures)} files in "
               f"{result.folder / 'figures'}")


@app.command()
@_user_errors
def benchmark(
    dataset: DatasetOpt = DEFAULT_DATASET,
    suite: SuiteOpt = "standard",
    models: ModelsOpt = None,
    seeds: SeedsOpt = "0",
    device: DeviceOpt = AUTO,
    home: HomeOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
) -> None:
    """The whole job: train what is missing, evaluate, transfer, report. Re-runs reuse everything."""
    from robustbench_sparse import harness
    from robustbench_sparse.report import build_report
    from robustbench_sparse.tables import summary
    from robustbench_sparse.train import train_zoo
    from robustbench_sparse.transfer import run_transfer
    from robustbench_sparse.zoo import load_zoo, select_models

    paths = _paths(home)
    names, seed_list = parse_names(models), parse_seeds(seeds)
    specs = select_models(load_zoo(paths.zoo_spec), dataset.value, names)
    dev = resolve_device(device.value)
    # Check the suite before the first model is trained: bad input costs nothing.
    from robustbench_sparse.data import dataset_info
    from robustbench_sparse.suites import load_suite

    load_suite(paths, suite, dataset_info(dataset.value))
    typer.echo("1/4 train")
    outcomes = train_zoo(paths, specs, dataset.value,
                         lambda: load_dataset(dataset.value, data_root or default_data_root(), download),
                         seed_list, dev)
    trained = [o for o in outcomes if o.action != "cached"]
    typer.echo(f"    trained {len(trained)}, cached {len(outcomes) - len(trained)}")
    the_plan = harness.plan(dataset.value, suite, names, seed_list, device.value, None, paths.home, data_root, download)
    store = harness.store_path(paths, dataset.value)
    try:
        typer.echo("2/4 evaluate")
        frame = harness.run(the_plan)
        harness.export(frame, the_plan, "records")
        if the_plan.suite.transfer_cells():
            typer.echo("3/4 transfer")
            harness.export(run_transfer(the_plan), the_plan, "transfer")
        else:
            typer.echo("3/4 transfer: the suite declares none")
    except KeyboardInterrupt:
        _resumable(store)()
    typer.echo("4/4 report")
    result = build_report(the_plan)
    typer.echo("")
    _print_table(summary(frame))
    typer.echo(f"\nreport: {result.markdown}\n        {result.html}")


@app.command()
@_user_errors
def evaluations() -> None:
    """List the evaluation kinds a suite can use, with their parameters and valid ranges."""
    from robustbench_sparse.evaluations import KINDS

    rows = [
        {
            "kind": k.name,
            "what": k.description,
            "swept": k.strength or "-",
            "parameters (default; valid)": "; ".join(f"{n}={p.default!r} ({p.valid})" for n, p in k.params.items()),
        }
        for k in KINDS.values()
    ]
    _print_table(pd.DataFrame(rows))


def main() -> None:  # pragma: no cover - console entry point
    app()
