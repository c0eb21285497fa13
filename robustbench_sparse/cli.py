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


def _plan(
    dataset: Any, suite: str, models: str | None, seeds: str, device: Any, backend: Any,
    home: Path | None, data_root: Path | None, download: bool,
) -> Any:
    from robustbench_sparse import harness

    return harness.plan(dataset.value, suite, parse_names(models), parse_seeds(seeds), device.value,
                        backend.value if backend else None, home, data_root, download)


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
    from robustbench_sparse.diagnostics import flags_frame, masking_flags
    from robustbench_sparse.tables import summary

    the_plan = _plan(dataset, suite, models, seeds, device, backend, home, data_root, download)
    store = harness.store_path(the_plan.paths, dataset.value)
    try:
        frame = harness.run(the_plan)
    except KeyboardInterrupt:
        _resumable(store)()
    csv_path, json_path = harness.export(frame, the_plan, "records")
    typer.echo(f"\nsuite {the_plan.suite.name!r} on {dataset.value}, {the_plan.n} test images "
               f"(accuracy % at each evaluation's strongest setting)\n")
    _print_table(summary(frame, the_plan.data.info.num_classes))
    flags = masking_flags(frame, the_plan.data.info.num_classes)
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

    the_plan = _plan(dataset, suite, models, seeds, device, backend, home, data_root, download)
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


def _train_and_evaluate(
    paths: Paths, dataset: str, suite: str, names: list[str] | None, seeds: list[int], device: str,
    data_root: Path | None, download: bool, step: str = "",
) -> tuple[Any, pd.DataFrame]:
    """Train what is missing, then run (or reuse) the suite's cells. The suite is checked first,
    so bad input costs no training."""
    from robustbench_sparse import harness
    from robustbench_sparse.data import dataset_info
    from robustbench_sparse.suites import load_suite
    from robustbench_sparse.train import train_zoo
    from robustbench_sparse.zoo import load_zoo, select_models

    specs = select_models(load_zoo(paths.zoo_spec), dataset, names)
    load_suite(paths, suite, dataset_info(dataset))
    dev = resolve_device(device)
    typer.echo(f"{step}train (only what is missing)")
    outcomes = train_zoo(paths, specs, dataset, lambda: load_dataset(dataset, data_root or default_data_root(), download),
                         seeds, dev)
    trained = sum(o.action != "cached" for o in outcomes)
    typer.echo(f"    trained {trained}, cached {len(outcomes) - trained}")
    the_plan = harness.plan(dataset, suite, names, seeds, device, None, paths.home, data_root, download)
    typer.echo(f"{step}evaluate (suite {suite!r}, {the_plan.n} test images)")
    try:
        frame = harness.run(the_plan)
    except KeyboardInterrupt:
        _resumable(harness.store_path(paths, dataset))()
    harness.export(frame, the_plan, "records")
    return the_plan, frame


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
    from robustbench_sparse.transfer import run_transfer

    paths = _paths(home)
    the_plan, frame = _train_and_evaluate(paths, dataset.value, suite, parse_names(models), parse_seeds(seeds),
                                          device.value, data_root, download, step="1-2/4 ")
    if the_plan.suite.transfer_cells():
        typer.echo("3/4 transfer")
        try:
            harness.export(run_transfer(the_plan), the_plan, "transfer")
        except KeyboardInterrupt:
            _resumable(harness.store_path(paths, dataset.value))()
    else:
        typer.echo("3/4 transfer: the suite declares none")
    typer.echo("4/4 report")
    result = build_report(the_plan)
    typer.echo("")
    _print_table(summary(frame))
    typer.echo(f"\nreport: {result.markdown}\n        {result.html}")


@app.command()
@_user_errors
def baseline(
    out: Annotated[Path, typer.Option(help="Where to write the baseline JSON (commit it).")],
    dataset: DatasetOpt = DEFAULT_DATASET,
    suite: SuiteOpt = "quick",
    models: ModelsOpt = None,
    seeds: SeedsOpt = "0",
    device: DeviceOpt = AUTO,
    home: HomeOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Write a robustness baseline (per model, evaluation and strength: accuracy, mean and std over seeds)."""
    from robustbench_sparse.regression import make_baseline, write_baseline

    the_plan, frame = _train_and_evaluate(_paths(home), dataset.value, suite, parse_names(models),
                                          parse_seeds(seeds), device.value, data_root, download)
    doc = make_baseline(frame, the_plan)
    write_baseline(doc, out)
    typer.echo(f"baseline: {len(doc['cells'])} cells, {len(the_plan.specs)} models, seeds {the_plan.seeds} -> {out}")


@app.command()
@_user_errors
def check(
    baseline: Annotated[Path, typer.Option(help="Baseline JSON written by `rbs baseline`.")],
    tolerance: Annotated[float, typer.Option(help="Allowed drop in accuracy points.")] = 1.0,
    sigma: Annotated[float | None, typer.Option(
        help="Allowed drop in baseline standard deviations (needs a multi-seed baseline); "
             "with --tolerance, the larger of the two.")] = None,
    allow_missing: Annotated[bool, typer.Option(help="Do not fail on cells missing on either side.")] = False,
    dataset: Annotated[DatasetName | None, typer.Option(help="Must match the baseline's, if given.")] = None,
    suite: Annotated[str | None, typer.Option(help="Must match the baseline's, if given.")] = None,
    device: DeviceOpt = AUTO,
    home: HomeOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Re-run (or reuse) the baseline's evaluations; exit 1 if any accuracy fell beyond tolerance."""
    from robustbench_sparse.regression import compare, read_baseline

    doc = read_baseline(baseline)
    if dataset is not None and dataset.value != doc["dataset"]:
        raise UserError(f"--dataset {dataset.value} differs from the baseline's {doc['dataset']!r}")
    if suite is not None and suite != doc["suite"]:
        raise UserError(f"--suite {suite} differs from the baseline's {doc['suite']!r}")
    if tolerance < 0 or (sigma is not None and sigma < 0):
        raise UserError("--tolerance and --sigma must be >= 0")
    if sigma is not None and len(doc["seeds"]) < 2:
        raise UserError("--sigma needs a baseline over several seeds (this one has one); use --tolerance")
    if doc["dataset"] not in DATASETS:
        raise UserError(f"the baseline's dataset {doc['dataset']!r} is unknown; valid: {', '.join(DATASETS)}")
    the_plan, frame = _train_and_evaluate(_paths(home), doc["dataset"], doc["suite"], None, list(doc["seeds"]),
                                          device.value, data_root, download)
    if (the_plan.n, the_plan.suite.seed) != (doc["test_size"], doc["eval_seed"]):
        raise UserError(f"the suite {doc['suite']!r} changed since the baseline (test size / seed "
                        f"{the_plan.n}/{the_plan.suite.seed} vs {doc['test_size']}/{doc['eval_seed']}); "
                        "regenerate the baseline")
    result = compare(doc, frame, tolerance, sigma)
    typer.echo(f"\ncompared {result.compared} cells with {baseline} ({doc['dataset']}, suite {doc['suite']}, "
               f"seeds {doc['seeds']})")
    if not result.improvements.empty:
        typer.echo("\nimproved (passes):")
        _print_table(result.improvements)
    if result.missing:
        typer.secho(f"\nmissing cells{' (allowed)' if allow_missing else ''}:", fg=typer.colors.YELLOW)
        typer.echo("\n".join(f"  {m}" for m in result.missing))
    if not result.regressions.empty:
        typer.secho("\nREGRESSIONS: accuracy fell beyond the allowed drop", fg=typer.colors.RED)
        _print_table(result.regressions)
    if not result.passed(allow_missing):
        raise typer.Exit(1)
    typer.secho("\nrobustness check passed", fg=typer.colors.GREEN)


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
