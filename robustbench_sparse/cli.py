"""`rbs`: the command line. A thin layer: it parses, calls the library, and prints."""

from __future__ import annotations

import enum
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from robustbench_sparse.data.datasets import DATASETS
from robustbench_sparse.execution.registry import EXECUTORS
from robustbench_sparse.perturb.backends import BACKENDS
from robustbench_sparse.results.request import DEFAULT_DATASET, RunRequest
from robustbench_sparse.runtime import DEVICES, BudgetViolation, Paths, UserError

app = typer.Typer(
    help="robustbench-sparse: do sparse networks really resist noise and adversarial attacks?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DatasetName = enum.StrEnum("DatasetName", {name: name for name in DATASETS})  # type: ignore[misc]
DeviceName = enum.StrEnum("DeviceName", {name: name for name in DEVICES})  # type: ignore[misc]
AUTO = DeviceName("auto")
DEFAULT_DATASET_NAME = DatasetName(DEFAULT_DATASET)

DatasetOpt = Annotated[DatasetName | None, typer.Option(
    "--dataset", "-d", help=f"Dataset to use (default: {DEFAULT_DATASET}; for check: the baseline's).")]
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
SuiteOpt = Annotated[str | None, typer.Option(
    "--suite", "-s", help="Suite name under attacks/ or a .toml path (for check: the baseline's).")]
BackendName = enum.StrEnum("BackendName", {name: name for name in BACKENDS})  # type: ignore[misc]
BackendOpt = Annotated[
    BackendName | None,
    typer.Option(help="Attack library for FGSM/I-FGSM/PGD (default: as the suite says, torchattacks)."),
]

ExecutorName = enum.StrEnum("ExecutorName", {name: name for name in EXECUTORS})  # type: ignore[misc]
LOCAL = ExecutorName("local")
ExecutorOpt = Annotated[ExecutorName, typer.Option(
    help="Where the work runs: local (this process) or ray (a private Ray on this machine, or the cluster "
         "at --address).")]
AddressOpt = Annotated[str | None, typer.Option(
    help="Ray cluster to join, HOST:PORT (from `ray start --head`); default: start a private Ray for the run.")]
WorkersOpt = Annotated[int | None, typer.Option(
    help="Worker processes (local) or CPUs of the private Ray (ray) for the run (default: one per core); "
         "each task computes on one thread, so results do not depend on it.")]

ReplaceOpt = Annotated[bool, typer.Option(
    "--replace", help="Replace a report in the run's folder that was made another way (other models, test images or "
         "compute regime); without it such a run is refused before any work.")]

ReportFormat = enum.StrEnum("ReportFormat", {"html": "html", "latex": "latex"})  # type: ignore[misc]
HTML = ReportFormat("html")

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
        except BudgetViolation as err:  # an attack library broke its threat model: no number is reported
            typer.secho(f"error: {err}; no result was stored for that cell", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper


def _resumable(store: Path) -> None:
    typer.secho(f"\ninterrupted: every finished cell is kept in {store}; run the same command to resume",
                fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(130)


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


# The run options every command that runs work shares, built into one RunRequest. name ->
# (typer annotation, default); a command leaves out what it does not take.
RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "dataset": (DatasetOpt, None),
    "suite": (SuiteOpt, None),
    "models": (ModelsOpt, None),
    "seeds": (SeedsOpt, "0"),
    "backend": (BackendOpt, None),
    "device": (DeviceOpt, AUTO),
    "home": (HomeOpt, None),
    "data_root": (DataRootOpt, None),
    "download": (DownloadOpt, False),
    "executor": (ExecutorOpt, LOCAL),
    "address": (AddressOpt, None),
    "workers": (WorkersOpt, None),
}


def _value(option: Any) -> Any:
    return option.value if isinstance(option, enum.Enum) else option


def run_command(*, omit: tuple[str, ...] = (), suite: str = "standard") -> Callable[[F], F]:
    """A command whose first parameter is a `RunRequest`, built from the shared run options (all
    but `omit`), which are added to the command's own; `suite` is the default the help names.
    A Ctrl-C says how to resume (every finished cell is kept)."""

    def decorate(func: F) -> F:
        own = list(inspect.signature(func).parameters.values())[1:]
        hints = typing.get_type_hints(func, include_extras=True)
        shared = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=suite if name == "suite" else default,
                              annotation=annotation)
            for name, (annotation, default) in RUN_OPTIONS.items() if name not in omit
        ]

        @functools.wraps(func)
        def wrapper(**values: Any) -> Any:
            options = {name: _value(values.pop(name)) for name in RUN_OPTIONS if name in values}
            if "models" in options:
                options["models"] = parse_names(options["models"])
            if "seeds" in options:
                options["seeds"] = tuple(parse_seeds(options["seeds"]))
            request = RunRequest(**options)
            try:
                return func(request, **values)
            except KeyboardInterrupt:
                from robustbench_sparse.results.harness import store_path

                paths = Paths(request.home) if request.home else Paths.default()
                _resumable(store_path(paths, request.resolved().dataset))

        parameters = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default,
                                        annotation=hints[p.name]) for p in own] + shared
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # typer reads the signature above, not the function's own
        return wrapper  # type: ignore[return-value]

    return decorate


def _print_table(frame: Any) -> None:
    typer.echo(frame.to_markdown(index=False))


@app.command()
@_user_errors
def zoo(home: HomeOpt = None) -> None:
    """List the zoo's variants, their key settings, and which are trained for each dataset."""
    from tabulate import tabulate  # what pandas' to_markdown calls; pandas itself is slow to import

    from robustbench_sparse.zoo.checkpoints import checkpoint_status
    from robustbench_sparse.zoo.spec import load_zoo

    paths = Paths(home) if home else Paths.default()
    rows = []
    for by_dataset in load_zoo(paths.zoo_spec).values():
        first = next(iter(by_dataset.values()))
        trained = ", ".join(
            f"{dataset}: {checkpoint_status(paths, spec, dataset, 0)}" for dataset, spec in by_dataset.items()
        )
        rows.append({**first.summary(), "checkpoints (seed 0)": trained})
    typer.echo(tabulate(rows, headers="keys", tablefmt="pipe"))
    typer.echo(f"\nspec file: {paths.zoo_spec}")


@app.command()
@_user_errors
@run_command(omit=("backend",))
def train(
    request: RunRequest,
    force: Annotated[bool, typer.Option(help="Retrain even when an up-to-date checkpoint exists.")] = False,
) -> None:
    """Train the zoo's models for a dataset once and cache them under models/ (skips up-to-date
    ones): those of --models, else the suite's (on the seeds it runs them on), else the default set."""
    import pandas as pd

    from robustbench_sparse.data.datasets import default_data_root, load_dataset
    from robustbench_sparse.execution.zoo_training import train_zoo
    from robustbench_sparse.results.harness import prepare

    request = request.resolved()
    setup = prepare(request)
    _print_notes(setup.notes)
    with request.open_executor() as runner:
        outcomes = train_zoo(
            setup.paths, setup.specs, setup.info.name,
            lambda: load_dataset(setup.info.name, request.data_root or default_data_root(), request.download),
            setup.seeds, setup.device, force, runner, setup.runs,
        )
    rows = [
        {
            "model": o.model,
            "seed": o.seed,
            "action": o.action,
            "val acc %": None if o.manifest.val_accuracy is None else round(100 * o.manifest.val_accuracy, 2),
            "test acc %": round(100 * o.manifest.clean_accuracy, 2),
            "train s": o.manifest.train_seconds,
            "sha256": o.manifest.short_hash,
        }
        for o in outcomes
    ]
    table = pd.DataFrame(rows)
    if table["val acc %"].isna().all():  # no validation split (mnist5k)
        table = table.drop(columns="val acc %")
    _print_table(table)
    if all(o.action == "cached" for o in outcomes):
        typer.echo("\nnothing to train: every checkpoint is up to date (use --force to retrain)")
    typer.echo(f"\ncheckpoints: {setup.paths.checkpoints(setup.info.name)}")


def _print_notes(notes: tuple[str, ...]) -> None:
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)


@app.command()
@_user_errors
@run_command()
def evaluate(request: RunRequest) -> None:
    """Run an evaluation suite against the trained zoo; resumes, and reuses finished cells."""
    from robustbench_sparse.analysis.diagnostics import masking_checks
    from robustbench_sparse.analysis.tables import summary
    from robustbench_sparse.results import harness

    the_plan = harness.plan(request)
    _print_notes(the_plan.setup.notes)
    with request.open_executor() as runner:
        frame = harness.run(the_plan, executor=runner)
    typer.echo(f"\nsuite {the_plan.setup.run_name!r} on {the_plan.info.name}, {the_plan.n} test images "
               f"(accuracy % at each evaluation's strongest setting)\n")
    _print_table(summary(frame, the_plan.info.num_classes))
    checks = masking_checks(frame, the_plan.info.num_classes)
    fired = checks[checks["status"] == "fired"]
    if not fired.empty:
        typer.secho("\npossible gradient masking (the attack, not the model, may be weak):",
                    fg=typer.colors.YELLOW)
        _print_table(fired.drop(columns="status"))
    typer.echo(f"\nresults: {harness.store_path(the_plan.paths, the_plan.info.name)} (`rbs report` writes the report "
               f"and its records export in {the_plan.folder})")


@app.command()
@_user_errors
@run_command()
def transfer(request: RunRequest) -> None:
    """Craft each attack once per source model and evaluate it on every model (N x N matrices)."""
    from robustbench_sparse.results import harness
    from robustbench_sparse.results.transfer import run_transfer, transfer_matrix

    the_plan = harness.plan(request)
    _print_notes(the_plan.setup.notes)
    with request.open_executor() as runner:
        frame = run_transfer(the_plan, executor=runner)
    for evaluation, strength in the_plan.suite.transfer_cells():
        typer.echo(f"\n{evaluation.name} at eps={strength:g}: accuracy % of each target (columns) "
                   "on examples crafted on each source (rows)\n")
        typer.echo(transfer_matrix(frame, evaluation.name, strength).round(1).to_markdown())
    typer.echo(f"\nresults: {harness.store_path(the_plan.paths, the_plan.info.name)} (`rbs report` writes the report "
               f"and its records export in {the_plan.folder})")


@app.command()
@_user_errors
@run_command(omit=("seeds", "device", "download", "executor", "address", "workers"))
def report(
    request: RunRequest,
    format: Annotated[ReportFormat, typer.Option(
        "--format", help="html: report.md and a self-contained report.html; latex: report.tex (booktabs "
                         "tables, compiles with pdflatex).")] = HTML,
    report_seeds: Annotated[str | None, typer.Option(
        "--seeds", help="Comma-separated training seeds (default: those of the report's records.json, else 0).")] = None,
    replace_existing: ReplaceOpt = False,
) -> None:
    """Build tables, plots, the report, its records export, model cards (JSON) and reports/index.html
    from stored results (re-runs nothing). Without the checkpoints here, from the records.json and
    transfer.json beside the report; models and seeds not given are those they record."""
    from robustbench_sparse.report import build_report
    from robustbench_sparse.results import harness

    given = report_seeds is not None
    request = replace(request, device="cpu", seeds=tuple(parse_seeds(report_seeds)) if given else (0,))
    the_plan = harness.report_plan(request, seeds_as_recorded=not given, prefer_store=replace_existing)
    _print_notes(the_plan.setup.notes)
    if the_plan.recorded is not None:
        typer.echo(f"no stored result of its checkpoints here: rebuilding from {the_plan.recorded.records.path}")
        if harness.store_has_others(the_plan):
            typer.secho("note: the result store holds records of other checkpoints of its models (`rbs import`); "
                        "`--replace` builds the report from those instead", fg=typer.colors.YELLOW)
    result = build_report(the_plan, formats=("latex",) if format.value == "latex" else ("markdown", "html"),
                          replace=replace_existing)
    if result.missing:
        typer.secho(f"{result.missing} declared cells have no stored result; run `rbs evaluate` and "
                    f"`rbs transfer` for suite {the_plan.suite.name!r} to fill them (they need the checkpoints: "
                    "`rbs train`), or `rbs import` the records of whoever computed them", fg=typer.colors.YELLOW)
    written = [result.latex] if result.latex else [result.markdown, result.html]
    cards = the_plan.paths.reports(the_plan.info.name) / "cards"
    typer.echo(f"report: {chr(10).join(f'        {p}' for p in written).strip()}\nfigures: {len(result.figures)} "
               f"files in {result.folder / 'figures'}\ncards: {cards}\nindex: {the_plan.paths.home / 'reports' / 'index.html'}")


@app.command("import")
@_user_errors
def import_(
    files: Annotated[list[Path], typer.Argument(
        help="results.jsonl (a result store's records, beside reports/<dataset>/results.sqlite) or records.json "
             "/ transfer.json (beside a report).", show_default=False)],
    home: HomeOpt = None,
) -> None:
    """Merge exported records into this home's result stores (a study computed in parts, on several
    machines). A key already held with other numbers refuses the whole import; nothing is written."""
    from robustbench_sparse.results.exchange import import_records

    paths = Paths(home) if home else Paths.default()
    for done in import_records(paths, files):
        typer.echo(f"{done.dataset}: {done.new} new, {done.present} already present -> {done.store}")
        for environment, count in done.other_environments.items():
            typer.secho(f"    {count} from another {environment}: kept under their own keys (reports built with "
                        "this code do not use them)", fg=typer.colors.YELLOW)


@app.command("export")
@_user_errors
@run_command(omit=("device", "download", "executor", "address", "workers"))
def export_(
    request: RunRequest,
    out: Annotated[Path, typer.Option(help="Where to write the part's records (<name>.jsonl; its checkpoints' "
                                           "manifests go beside it, as <name>-checkpoints.json).")],
    replace_existing: Annotated[bool, typer.Option(
        "--replace", help="Replace files already at --out with other content; without it the export is refused.")] = False,
) -> None:
    """Write one part of a study computed in parts: the stored records of a suite's cells (with
    its transfer cells) for the models and seeds given, and their checkpoints' manifests, for
    `rbs import` in another home. Every cell must have its result."""
    from robustbench_sparse.results import harness
    from robustbench_sparse.results.exchange import export_part

    the_plan = harness.plan(replace(request, device="cpu"))
    part = export_part(the_plan, out, replace_existing)
    typer.echo(f"{part.count} records{' (unchanged)' if part.unchanged else ''}: {part.records}\n"
               f"checkpoints' manifests: {part.manifests}")


@app.command()
@_user_errors
@run_command()
def benchmark(request: RunRequest, replace_existing: ReplaceOpt = False) -> None:
    """The whole job: train what is missing, evaluate, transfer, report. Re-runs reuse everything;
    the run ends compared with the report it found in its folder (the committed reference)."""
    import pandas as pd

    from robustbench_sparse import pipeline
    from robustbench_sparse.analysis.tables import summary

    result = pipeline.benchmark(request, echo=typer.echo, replace=replace_existing)
    typer.echo("")
    records = result.records
    if result.moves is not None and not result.moves.empty:  # as the report's overview: transfer feeds check 4
        records = pd.concat([records, result.moves[result.moves["source"] != result.moves["model"]]],
                            ignore_index=True)
    _print_table(summary(records, result.plan.info.num_classes))
    typer.echo(f"\nreport: {result.report.markdown}\n        {result.report.html}")
    if result.reference is not None:
        folder = result.plan.folder.relative_to(result.plan.paths.home) if result.plan.folder.is_relative_to(
            result.plan.paths.home) else result.plan.folder
        typer.echo(result.reference.line(str(folder)))


@app.command()
@_user_errors
@run_command(suite="quick")
def baseline(
    request: RunRequest,
    out: Annotated[Path, typer.Option(help="Where to write the baseline JSON (commit it).")],
) -> None:
    """Write a robustness baseline (per model, evaluation and strength: accuracy, mean and std over
    seeds; and the masking checks that fired)."""
    from robustbench_sparse import pipeline

    doc = pipeline.baseline(out, request, echo=typer.echo)
    typer.echo(f"baseline: {len(doc['cells'])} cells, {len(doc['models'])} models, seeds {doc['seeds']} -> {out}")


@app.command()
@_user_errors
@run_command(omit=("models", "seeds"), suite=None)
def check(
    request: RunRequest,
    baseline: Annotated[Path, typer.Option(help="Baseline JSON written by `rbs baseline`.")],
    tolerance: Annotated[float, typer.Option(help="Allowed change in accuracy points.")] = 1.0,
    sigma: Annotated[float | None, typer.Option(
        help="Allowed change in baseline standard deviations (needs a multi-seed baseline); "
             "with --tolerance, the larger of the two.")] = None,
    allow_missing: Annotated[bool, typer.Option(help="Do not fail on cells missing on either side.")] = False,
    allow_rise: Annotated[bool, typer.Option(
        help="Do not fail when an attack's accuracy rose beyond the allowed change (listed as suspicious: "
             "a weaker attack or masked gradients look like robustness).")] = False,
) -> None:
    """Re-run (or reuse) the baseline's evaluations on its models and seeds; exit 1 on a drop beyond
    tolerance, a masking check that newly fires, or a suspicious rise under attack. --dataset,
    --suite and --backend, if given, must match the baseline's."""
    from robustbench_sparse import pipeline

    doc, result = pipeline.check(baseline, tolerance, sigma, request, echo=typer.echo)
    typer.echo(f"\ncompared {result.compared} cells with {baseline} ({doc['dataset']}, suite {doc['suite']}, "
               f"models {', '.join(doc['models'])}, seeds {doc['seeds']})")
    if not result.improvements.empty:
        typer.echo("\nimproved under noise (passes):")
        _print_table(result.improvements)
    if result.missing:
        typer.secho(f"\nmissing cells{' (allowed)' if allow_missing else ''}:", fg=typer.colors.YELLOW)
        typer.echo("\n".join(f"  {m}" for m in result.missing))
    if not result.rises.empty:
        typer.secho(f"\nSUSPICIOUS: accuracy under attack rose beyond the allowed change"
                    f"{' (allowed by --allow-rise)' if allow_rise else ''}; a weaker attack or masked gradients "
                    "look like robustness", fg=typer.colors.YELLOW if allow_rise else typer.colors.RED)
        _print_table(result.rises)
    if not result.new_flags.empty:
        typer.secho("\nNEW MASKING FLAGS: checks that fire now and did not in the baseline", fg=typer.colors.RED)
        _print_table(result.new_flags)
    if not result.unproven.empty:
        typer.echo("\nnot significant (no flag; a difference beyond a check's margin on too few images, "
                   "docs/masking.md#significance):")
        _print_table(result.unproven)
    if not result.regressions.empty:
        typer.secho("\nREGRESSIONS: accuracy fell beyond the allowed drop", fg=typer.colors.RED)
        _print_table(result.regressions)
    if not result.passed(allow_missing, allow_rise):
        raise typer.Exit(1)
    typer.secho("\nrobustness check passed", fg=typer.colors.GREEN)


@app.command()
@_user_errors
def claims(
    dataset: Annotated[DatasetName, typer.Option(
        "--dataset", "-d", help="Dataset whose committed reports to read.")] = DEFAULT_DATASET_NAME,
    home: HomeOpt = None,
) -> None:
    """Test each published claim about sparse networks on the dataset's committed reports (their
    records exports: no training) and write reports/<dataset>/claims.md with the verdicts."""
    from robustbench_sparse.report.claims import build_claims

    paths = Paths(home) if home else Paths.default()
    result = build_claims(paths, dataset.value)
    _print_table(result.verdicts[["claim", "comparisons", "hold", "reversed", "largest difference", "verdict"]])
    typer.echo(f"claims: {result.markdown}\ncomparisons: {result.csv}")


@app.command()
@_user_errors
def evaluations() -> None:
    """List the evaluation kinds a suite can use, with their parameters and valid ranges."""
    import pandas as pd

    from robustbench_sparse.evaluation.kinds import KINDS

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


if __name__ == "__main__":  # pragma: no cover - `python -m robustbench_sparse.cli`
    main()
