"""Records between homes: a study computed in parts, on several machines, merged into one home.

A home's records leave it as a part (`export_part`: the records of one run's cells, for some models
and seeds, one JSON object per line as the store holds them, with the manifests of the checkpoints
they were computed on), as `results.jsonl` (every record of a dataset's store, written after each
run) or as the export beside a report (`reports/<dataset>/<run>/records.json` and `transfer.json`:
the run's metadata and its records).
`import_records` merges such files into the home's result stores, one per dataset. A record is
keyed by everything its number depends on (`evaluation.cells`), so two machines that computed the
same cell hold the same key: the same numbers are one record, and different numbers under one key
mean something is not reproducible, so the whole import is refused and nothing is written. Records
computed with other library or code versions have other keys (the key names the environment):
they are imported as they are, kept apart, and counted in the summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robustbench_sparse.evaluation.cells import environment_id
from robustbench_sparse.results import harness
from robustbench_sparse.runtime import Paths, UserError, atomic_write_text

# What a record must hold to be stored: its key, its cell's identity and its numbers.
REQUIRED = ("key", "dataset", "model", "seed", "spec", "n", "correct", "flags")


@dataclass(frozen=True)
class Imported:
    """What `import_records` did to one dataset's store."""

    dataset: str
    store: Path
    new: int
    present: int  # already stored with the same numbers (or given twice)
    # Records computed in another environment: its description -> how many of them.
    other_environments: dict[str, int] = field(default_factory=dict)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records a file holds, as a result store holds them: results.jsonl (one per line) or a
    report's records.json / transfer.json (without its `suite` label). A file without them whole
    (an export from before records carried their keys and per-image flags) is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}, line {number}: not a JSON record ({err})") from None
    elif path.suffix == ".json":
        export = harness.read_export(path)
        assert export is not None
        if not export.complete:
            raise UserError(f"{path} holds its records without their keys and per-image flags (it was exported "
                            "before records carried them): nothing in it can be imported; `rbs report` still "
                            "rebuilds its report from it where no per-image result is needed")
        records = [{k: v for k, v in r.items() if k != "suite"} for r in export.records]
    else:
        raise UserError(f"{path}: import takes results.jsonl (a result store's records) or records.json / "
                        "transfer.json (beside a report)")
    for record in records:
        lacking = [k for k in REQUIRED if not isinstance(record, dict) or record.get(k) is None]
        if lacking:
            raise UserError(f"{path}: a record without {', '.join(lacking)} ({str(record)[:80]}): not a record export")
    return records


def environment_of(record: dict[str, Any]) -> str:
    """The environment id a record's key names ("" when it names none)."""
    try:
        return harness.key_environment(record["key"])
    except ValueError:
        return ""


def _described(record: dict[str, Any]) -> str:
    try:
        versions = json.loads(record.get("versions") or "{}")
    except json.JSONDecodeError:
        versions = {}
    parts = [f"code {versions['code']}"] if "code" in versions else []
    parts += [f"{k} {versions[k]}" for k in ("torch", "torchattacks", "foolbox") if k in versions]
    return f"environment {environment_of(record)}" + (f" ({', '.join(parts)})" if parts else "")


def _cell(record: dict[str, Any]) -> str:
    source = record.get("source")
    crafted = f", crafted on {source}" if source and source != record["model"] else ""
    return f"{record['model']} seed {record['seed']}, {record['spec']}{crafted}"


def _difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    if a["n"] != b["n"] or a["correct"] != b["correct"]:
        return f"{a['correct']}/{a['n']} vs {b['correct']}/{b['n']} correct"
    return "the same count, other per-image results"


def import_records(paths: Paths, files: Iterable[Path]) -> list[Imported]:
    """Merge the records of `files` into the home's result stores (one per dataset). Identical
    duplicates (in the files or in the store) are fine; a key held with other numbers refuses the
    whole import (a UserError naming the key, its cell and both places), and nothing is written."""
    files = [Path(f) for f in files]
    if not files:
        raise UserError("import needs at least one file (results.jsonl, records.json or transfer.json)")
    first: dict[str, tuple[dict[str, Any], Path]] = {}
    repeated: dict[str, int] = {}  # per dataset, records given again in the files
    for path in files:
        for record in read_records(path):
            seen = first.setdefault(record["key"], (record, path))
            if seen[0] is not record:
                if not harness.same_numbers(seen[0], record):
                    raise UserError(f"{record['key']} ({_cell(record)}) is in {seen[1]} and {path} with different "
                                    f"numbers ({_difference(seen[0], record)}); nothing was imported")
                repeated[record["dataset"]] = repeated.get(record["dataset"], 0) + 1
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for record, _ in first.values():
        by_dataset.setdefault(record["dataset"], []).append(record)
    checked = []
    for dataset, records in sorted(by_dataset.items()):  # every store is checked before any is written
        store = harness.open_store(paths, dataset)
        stored = store.records(r["key"] for r in records)
        for record in records:
            there = stored.get(record["key"])
            if there is not None and not harness.same_numbers(there, record):
                raise UserError(f"{record['key']} ({_cell(record)}) is in {first[record['key']][1]} and, with "
                                f"different numbers ({_difference(there, record)}), in {store.path}; nothing was "
                                "imported")
        checked.append((dataset, store, [r for r in records if r["key"] not in stored]))
    here = environment_id()
    summaries = []
    for dataset, store, new in checked:
        added = store.add(new)
        store.export_jsonl()  # the store's readable copy, as after a run
        others: dict[str, int] = {}
        for record in by_dataset[dataset]:
            if environment_of(record) != here:
                others[_described(record)] = others.get(_described(record), 0) + 1
        present = len(by_dataset[dataset]) - added + repeated.get(dataset, 0)
        summaries.append(Imported(dataset, store.path, added, present, others))
    return summaries


@dataclass(frozen=True)
class Part:
    """What `export_part` wrote."""

    records: Path
    manifests: Path
    count: int
    unchanged: bool  # both files were already there with this content


def manifests_path(records: Path) -> Path:
    """Where a part's checkpoint manifests go: beside its records, `<stem>-checkpoints.json`."""
    return records.with_name(f"{records.stem}-checkpoints.json")


def export_part(plan: harness.Plan, out: Path, replace: bool = False) -> Part:
    """The stored records of a run's cells (its evaluations, and its transfer cells where the
    suite has them) for the plan's models and seeds, as one part of a study computed in parts:
    `out`, JSON lines that `import_records` reads, and beside it (`manifests_path`) the manifests
    of the checkpoints they were computed on (validation and test accuracy, training time,
    SHA-256), which are not committed themselves. A part is whole: a cell without a stored result
    refuses the export. Files already there with other content are replaced only with `replace`;
    nothing is written when anything is refused."""
    from robustbench_sparse.results.transfer import transfer_cells  # it imports harness, as this module does
    from robustbench_sparse.zoo.checkpoints import read_manifest

    out = Path(out)
    if out.suffix != ".jsonl":
        raise UserError(f"{out}: a part is written as JSON lines; name it <name>.jsonl")
    cells = plan.cells() + (transfer_cells(plan) if plan.suite.transfer_cells() else [])
    store = harness.open_store(plan.paths, plan.info.name)
    stored = store.records(c.key for c in cells)
    missing = [c for c in cells if c.key not in stored]
    if missing:
        first = missing[0]
        crafted = f", crafted on {first.crafted_on[0]}" if first.crafted_on[0] != first.model else ""
        seeds = ",".join(map(str, plan.seeds))
        raise UserError(f"{len(missing)} of the {len(cells)} cells of suite {plan.suite.name!r} for these models and "
                        f"seeds {seeds} have no stored result (the first: {first.model} seed {first.seed}, "
                        f"{first.spec}{crafted}): run `rbs evaluate` (and `rbs transfer`) with the same options "
                        "first; nothing was written")
    manifests = {}
    for model, seed in plan.checkpoints:
        manifest = read_manifest(plan.paths, plan.info.name, model, seed)
        if manifest is not None:  # a model brought as an object has none
            manifests[f"{model}/seed{seed}"] = asdict(manifest)
    manifests = dict(sorted(manifests.items()))
    texts = {out: store.jsonl(stored), manifests_path(out): json.dumps(manifests, indent=1) + "\n"}
    there = {path: path.read_text(encoding="utf-8") if path.is_file() else None for path in texts}
    other = [path for path, text in texts.items() if there[path] is not None and there[path] != text]
    if other and not replace:
        raise UserError(f"{other[0]} is already there with other content (another part, or records computed "
                        "another way): give another --out, or --replace to replace it; nothing was written")
    for path, text in texts.items():
        if there[path] != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
    return Part(out, manifests_path(out), len(stored), all(there[p] == t for p, t in texts.items()))
