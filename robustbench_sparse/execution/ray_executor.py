"""The Ray executor: jobs and training on a Ray cluster (a laptop, a multi-GPU box, many machines).

Each job becomes a small task graph: one *craft* task (source model, evaluation, strength -> the
perturbed set) whose result stays in Ray's object store, and one *score* task per target (target
model, that set -> per-image correctness), so a transfer set is crafted once and scored on every
target without a shared filesystem. Checkpoints travel as their bytes through the object store;
the driver is the single writer of the result store and the adversarial-set cache. `train`
sends each (model, seed) to a task and returns the weights to the driver, which writes the
checkpoint.

Every task asks for one CPU (and `gpus` of a GPU when the device is CUDA) and computes in the CPU
regime (`runtime.regime_block`: one torch thread), so N tasks on N cores do not fight. Seeds are
per cell and per image, so the records and trained weights are bit for bit the local executor's. A task whose worker dies is retried by Ray (`max_retries`); a driver that dies loses only
unfinished cells (the same command resumes).

Joining a cluster (`address`) is checked before Ray is: something must answer at the address, it
must be Ray's GCS, this machine must hold the cluster's token when it asks for one (Ray 2.59+
turns token authentication on; the token is `RAY_AUTH_TOKEN`, the file at `RAY_AUTH_TOKEN_PATH`
or `~/.ray/auth_token`, as Ray itself reads it), and every node must compute with this machine's
libraries and code. Each failure is one `UserError` line naming the address, not Ray's log stream.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_sparse.data.datasets import Dataset, DatasetInfo
from robustbench_sparse.evaluation.cells import Cell, Job, environment_id
from robustbench_sparse.evaluation.kinds import ACCURACY, kind_of
from robustbench_sparse.evaluation.suites import Evaluation
from robustbench_sparse.execution.executor import (
    ENSEMBLE,
    Ensemble,
    Outcome,
    TrainTask,
    Workspace,
    correct_flags,
    perturbed_set,
    score,
)
from robustbench_sparse.runtime import REGIME_ENV, TASK_THREADS, UserError, eval_mode, regime_block
from robustbench_sparse.zoo.build import build_model
from robustbench_sparse.zoo.checkpoints import model_from_bytes
from robustbench_sparse.zoo.spec import ModelSpec

Recipe = tuple[ModelSpec, bytes]  # a model as it travels: its spec and its checkpoint's bytes


def _import_ray(address: str | None = None) -> Any:
    if address and "ray" not in sys.modules and address.rpartition(":")[0].strip("[]") in _LOOPBACK:
        # A head on this machine may listen on loopback only (`ray start --node-ip-address=127.0.0.1`):
        # keep Ray from swapping 127.0.0.1 for the machine's address (read when ray is imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        raise UserError("--executor ray needs the `ray` package (pip install 'ray==2.60.0')") from None
    return ray


class WorkerMismatch(RuntimeError):
    """A Ray worker computes with other libraries, code or regime than the driver."""


def _same_environment(expected: str) -> None:
    """A worker must compute with the driver's libraries and code, or its numbers would be stored
    under keys that do not describe them."""
    from robustbench_sparse.evaluation.cells import environment, environment_id

    if environment_id() != expected:
        raise WorkerMismatch(f"a Ray worker runs other versions or code than the driver ({environment()}); "
                             "install the same robustbench-sparse, torch, torchattacks and foolbox on every node")


def node_environment() -> dict[str, str]:
    """What a number depends on (`cells.environment`), as a worker of this node sees it."""
    from robustbench_sparse.evaluation.cells import environment

    return environment()


# --- joining a cluster: checked before Ray is, each failure one line -----------------------------

DOCS = "docs/scaling.md#cluster"
CONNECT_TIMEOUT_S = 5.0  # TCP connect to the head's GCS port
GCS_TIMEOUT_MS = 4000  # Ray's own handshake with the GCS, once something listens
CHECK_TIMEOUT_S = 180.0  # one check task per node (its worker process imports torch)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address!r} is not HOST:PORT: give the head's address and the port of "
                        f"`ray start --head --port=PORT` ({DOCS})")
    return host, int(port)


def _token_source(address: str) -> str | None:
    """Where Ray will read this machine's token from (its order: RAY_AUTH_TOKEN, the file at
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), or None when there is none. A RAY_AUTH_TOKEN_PATH
    that cannot be read is refused here (Ray aborts the process on it)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        try:
            readable = bool(Path(path).read_text().strip())
        except OSError:
            readable = False
        if not readable:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} is not a readable, non-empty file: copy the token of the "
                            f"Ray cluster at {address} there (`ray get-auth-token` on the head prints it) or unset "
                            f"it ({DOCS})")
        return path
    default = Path.home() / ".ray" / "auth_token"
    try:
        return str(default) if default.read_text().strip() else None
    except OSError:
        return None


def _enable_token_auth() -> None:
    """Token mode for this process from now on, as `ray start` sets it for its own (Ray reads
    RAY_AUTH_MODE into its config, and its token loader caches)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ client logs each failed handshake to file descriptor 2: send it nowhere while
    probing (the failure becomes one line of ours)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _probe(address: str) -> list[Any]:
    """The cluster's alive nodes (GcsNodeInfo), asked of its GCS without starting a Ray driver.
    Token mode is turned on here when the cluster asks for a token and this machine has one (Ray
    does so itself only for a cluster it finds without an address)."""
    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError

    host, port = _split_address(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise UserError(f"nothing answers at {address} ({why}): start the head there with "
                        f"`ray start --head --port={port}`, or give the address it printed ({DOCS})") from None

    def nodes() -> list[Any]:
        with _quiet_stderr():
            client = InnerGcsClient.standalone(f"{host}:{port}", None, GCS_TIMEOUT_MS)
            info = client.get_all_node_info(timeout=GCS_TIMEOUT_MS / 1000)
        return [n for n in info.values() if n.state == 0]  # GcsNodeInfo.ALIVE

    explicit = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    source = None if explicit == "disabled" else _token_source(address)
    try:
        try:
            return nodes()
        except AuthenticationError:
            if explicit or source is None:
                raise
            _enable_token_auth()  # the cluster asks for a token and this machine has one
            return nodes()
    except AuthenticationError:
        if source is None:
            raise UserError(f"the Ray cluster at {address} asks for its token and this machine has none: copy "
                            "the head's ~/.ray/auth_token to ~/.ray/auth_token here, or set RAY_AUTH_TOKEN to it "
                            f"(`ray get-auth-token` on the head prints it) ({DOCS})") from None
        raise UserError(f"the Ray cluster at {address} refuses this machine's token (from {source}): use the "
                        f"head's (`ray get-auth-token` on the head prints it) ({DOCS})") from None
    except Exception as err:  # Ray's RpcError and kin: not a Ray GCS, or not answering in time
        raise UserError(f"no Ray cluster answers at {address} (something listens there, but: {err}): give the "
                        f"address and port `ray start --head` printed ({DOCS})") from None


def _connect(ray: Any, address: str, runtime_env: dict[str, Any]) -> None:
    """ray.init on the cluster at `address`, once `_probe` has found it and its token."""
    host, port = _split_address(address)
    alive = _probe(address)
    kwargs: dict[str, Any] = {}
    if host in _LOOPBACK:
        # The head is on this machine: the driver joins the head's node, at the address the head
        # registered (loopback for a head on loopback only, else the machine's own).
        heads = [n.node_manager_address for n in alive if n.is_head_node] or [n.node_manager_address for n in alive]
        node_ip = heads[0] if heads else "127.0.0.1"
        if node_ip in _LOOPBACK:
            from ray._private import ray_constants

            if ray_constants.ENABLE_RAY_CLUSTER:  # Ray would swap 127.0.0.1 for the machine's address
                raise UserError(f"the Ray cluster at {address} listens on loopback only, and ray was imported "
                                "before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: set it before importing ray")
        else:
            address = f"{node_ip}:{port}"  # the head's GCS listens there too
        kwargs["_node_ip_address"] = node_ip
    ray.init(address=address, log_to_driver=False, configure_logging=False, runtime_env=runtime_env, **kwargs)


def _check_nodes(ray: Any, address: str, runtime_env: dict[str, Any]) -> None:
    """One small task on every node with a CPU: each must compute with this machine's libraries,
    code and regime (`_same_environment` guards every task too, for nodes that join later)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from robustbench_sparse.evaluation.cells import environment

    here = environment()
    check = ray.remote(node_environment)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= TASK_THREADS]
    refs = {check.options(num_cpus=TASK_THREADS, max_retries=0, runtime_env=runtime_env,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote():
            n["NodeManagerAddress"] for n in nodes}
    try:
        seen = ray.get(list(refs), timeout=CHECK_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise UserError(f"the Ray cluster at {address} did not run a check task on each node within "
                        f"{CHECK_TIMEOUT_S:.0f} s: see `ray status` on the head ({DOCS})") from None
    except ray.exceptions.RayError as err:
        raise UserError(f"a check task failed on the Ray cluster at {address} ({type(err).__name__}): install "
                        f"the same robustbench-sparse, torch, torchattacks and foolbox on every node ({DOCS})") from None
    for node_ip, there in zip(refs.values(), seen, strict=True):
        if there != here:
            diff = ", ".join(f"{k} {there.get(k)} there, {here.get(k)} here" for k in sorted(set(here) | set(there))
                             if there.get(k) != here.get(k))
            raise UserError(f"the Ray cluster at {address} has a node ({node_ip}) that computes with other versions "
                            f"or code than this machine ({diff}): install the same robustbench-sparse, torch, "
                            f"torchattacks and foolbox on every node, with the same RBS_CPU_REGIME ({DOCS})")


def _model(info: DatasetInfo, ensemble: bool, recipes: tuple[Recipe, ...], device: str) -> nn.Module:
    models = [model_from_bytes(spec, info, data, device) for spec, data in recipes]
    return Ensemble(models).eval() if ensemble else models[0]


# --- the tasks (plain functions; RayExecutor wraps them with ray.remote) ------------------------

def craft_task(env: str, info: DatasetInfo, evaluation: Evaluation, strength: float, x: torch.Tensor,
               y: torch.Tensor, device: str, eval_seed: int, batch_size: int, start: int, stop: int,
               previous: torch.Tensor | None, ensemble: bool, *source: Recipe) -> tuple[torch.Tensor, float]:
    """Images start..stop of the perturbed set (a whole number of batches); `previous`: the same
    images of the set a pruned sweep starts from (Ray hands over the chunk once it is crafted)."""
    _same_environment(env)
    started = time.perf_counter()
    with regime_block():
        model = _model(info, ensemble, source, device)
        with eval_mode(model):
            inputs = perturbed_set(model, evaluation, strength, x[start:stop], y[start:stop], info,
                                   torch.device(device), eval_seed, batch_size, offset=start, previous=previous)
    return inputs, time.perf_counter() - started


def score_task(env: str, info: DatasetInfo, y: torch.Tensor, device: str, batch_size: int,
               target: Recipe, *chunks: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The target's per-image correctness on the set (given as its chunks, in order)."""
    _same_environment(env)
    started = time.perf_counter()
    inputs = torch.cat(chunks)
    with regime_block():
        model = _model(info, False, (target,), device)
        with eval_mode(model):
            flags = score(model, inputs, y, torch.device(device), batch_size)
    return flags, time.perf_counter() - started


def measure_task(env: str, info: DatasetInfo, evaluation: Evaluation, strength: float, x: torch.Tensor,
                 y: torch.Tensor, device: str, eval_seed: int, batch_size: int,
                 target: Recipe) -> tuple[torch.Tensor, float]:
    _same_environment(env)
    started = time.perf_counter()
    with regime_block():
        model = _model(info, False, (target,), device)
        with eval_mode(model):
            flags = correct_flags(model, evaluation, strength, x, y, info, torch.device(device), eval_seed,
                                  batch_size)
    return flags, time.perf_counter() - started


def train_task(env: str, spec: ModelSpec, data: Dataset, seed: int, device: str) -> tuple[dict[str, Any], float]:
    from robustbench_sparse.training.train import train_model

    _same_environment(env)
    started = time.perf_counter()
    with regime_block():
        model = train_model(spec, data, seed, torch.device(device))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, time.perf_counter() - started


@dataclass
class _Running:
    """A job whose tasks are in flight."""

    job: Job
    flags: list[torch.Tensor | None]
    seconds: list[float]
    pending: int = 0
    craft_seconds: float = 0.0
    chunks: list[Any] = field(default_factory=list)  # object refs of the set's parts, in order


class RayExecutor:
    """Jobs and training as Ray tasks. With `address`, joins a running cluster (`ray start --head`);
    otherwise starts a private Ray on this machine with `workers` CPUs (default: all) for the run
    and shuts it down afterwards."""

    def __init__(self, address: str | None = None, workers: int | None = None,
                 gpus: float | None = None, max_retries: int = 3) -> None:
        ray = _import_ray(address)
        self.ray = ray
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        if address and workers:
            raise UserError("--workers sizes a local Ray; a cluster's size is set where it was started "
                            "(`ray start --num-cpus N`); give one of --address and --workers")
        self.gpus = gpus
        self.max_retries = max_retries
        self._started = False
        # Workers compute in the driver's CPU regime: its variables set before they import torch.
        runtime_env = {"env_vars": {k: os.environ[k] for k in (*REGIME_ENV, "RBS_CPU_REGIME") if k in os.environ}}
        self.address = address
        if not ray.is_initialized():
            try:
                if address:
                    _connect(ray, address, runtime_env)
                else:
                    ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                             configure_logging=False, _node_ip_address="127.0.0.1", runtime_env=runtime_env)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise UserError(f"cannot start or join Ray{f' at {address}' if address else ''}: {err}") from None
            self._started = True
            if address:
                try:
                    _check_nodes(ray, address, runtime_env)
                except UserError:
                    self.close()
                    raise
        cpus = ray.cluster_resources().get("CPU", 1)
        self.slots = max(1, int(cpus // TASK_THREADS))
        self._tasks = {f.__name__: ray.remote(f) for f in (craft_task, score_task, measure_task, train_task)}

    def _get(self, ref: Any) -> Any:
        """A task's result; a worker that computes with other versions is the user's to fix (a
        node that joined after the check at the start)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as err:
            if isinstance(getattr(err, "cause", None), WorkerMismatch):
                where = f"the Ray cluster at {self.address}" if self.address else "Ray"
                raise UserError(f"{where}: {err.cause}") from None
            raise

    def _options(self, device: torch.device) -> dict[str, Any]:
        gpus = (self.gpus if self.gpus is not None else 0.5) if device.type == "cuda" else 0
        return {"num_cpus": TASK_THREADS, "num_gpus": gpus, "max_retries": self.max_retries}

    def map(self, jobs: Iterable[Job], ws: Workspace) -> Iterator[Outcome]:
        ray, opts, device = self.ray, self._options(ws.device), str(ws.device)
        craft = self._tasks["craft_task"].options(num_returns=2, **opts)
        score_, measure = (self._tasks[n].options(**opts) for n in ("score_task", "measure_task"))
        x_ref, y_ref = ray.put(ws.x), ray.put(ws.y)
        env = environment_id()
        recipes: dict[tuple[str, int], Any] = {}

        def recipe(name: str, seed: int) -> Any:
            if (name, seed) not in recipes:
                recipes[(name, seed)] = ray.put(ws.checkpoint(name, seed))
            return recipes[(name, seed)]

        waiting: dict[Any, tuple[_Running | None, str, int]] = {}
        # set key -> its chunks' refs, for sets crafted in this run and not yet in the cache: a
        # pruned sweep's next set is submitted at once, its chunks waiting on these (Ray resolves them).
        sets: dict[str, list[Any]] = {}
        crafting: dict[str, int] = {}  # set key -> craft tasks not yet finished
        dependency: dict[Any, str] = {}  # seconds ref of a craft task -> the set key it crafts

        def chunks_of(cell: Cell, sources: list[Any]) -> tuple[list[Any], list[Any]]:
            """The set's chunk refs (from this run, the cache, or new craft tasks) and the seconds
            refs of the craft tasks submitted for it now."""
            key = cell.set_key
            if key in sets:  # crafted as a pruned sweep's step: its unclaimed craft tasks are this job's
                return sets[key], [t for t, k in dependency.items() if k == key and waiting.get(t, (1,))[0] is None]
            cached = ws.cache.load(key)
            if cached is not None:
                return [ray.put(cached[s : s + cell.batch_size]) for s in range(0, len(cached), cell.batch_size)], []
            starts = range(0, len(ws.x), cell.batch_size)
            previous = chunks_of(cell.previous, sources)[0] if cell.previous is not None else [None] * len(starts)
            chunks, timers = [], []
            for start, before in zip(starts, previous, strict=True):
                # One craft task per batch: the set is crafted in parallel, bit for bit as a whole.
                chunk, seconds = craft.remote(env, ws.info, cell.evaluation, cell.strength, x_ref, y_ref, device,
                                              cell.eval_seed, cell.batch_size, start,
                                              start + cell.batch_size, before, cell.crafted_on[0] == ENSEMBLE,
                                              *sources)
                chunks.append(chunk)
                timers.append(seconds)
                dependency[seconds] = key
            sets[key], crafting[key] = chunks, len(chunks)
            for seconds in timers:
                waiting[seconds] = (None, "craft", 0)  # the job whose set it is claims it in `submit`
            return chunks, timers

        def submit(job: Job) -> None:
            first = job.cells[0]
            evaluation, strength = first.evaluation, first.strength
            run = _Running(job, [None] * len(job.cells), [0.0] * len(job.cells))
            common = (evaluation, strength, x_ref, y_ref, device, first.eval_seed, first.batch_size)
            if kind_of(evaluation.kind).metric != ACCURACY:  # one cell: a measurement of its model
                waiting[measure.remote(env, ws.info, *common, recipe(first.model, first.seed))] = (run, "score", 0)
                run.pending = 1
                return
            source = first.crafted_on[0]
            members = ws.ensemble if source == ENSEMBLE else (source,)
            sources = [recipe(m, first.seed) for m in members]
            if job.crafts:
                run.chunks, timers = chunks_of(first, sources)
            else:  # noise, or eps = 0: drawn afresh, never cached
                run.chunks, timers = [], []
                for start in range(0, len(ws.x), first.batch_size):
                    chunk, seconds = craft.remote(env, ws.info, *common, start, start + first.batch_size, None,
                                                  source == ENSEMBLE, *sources)
                    run.chunks.append(chunk)
                    timers.append(seconds)
            for seconds in timers:
                waiting[seconds] = (run, "craft", 0)
                run.pending += 1
            for i, cell in enumerate(job.cells):
                ref = score_.remote(env, ws.info, y_ref, device, cell.batch_size,
                                    recipe(cell.model, cell.seed), *run.chunks)
                waiting[ref] = (run, "score", i)
                run.pending += 1

        pending_jobs = iter(jobs)
        running, exhausted = 0, False
        while True:
            while not exhausted and running < 2 * self.slots:  # keep every worker busy, lease little ahead
                job = next(pending_jobs, None)
                if job is None:
                    exhausted = True
                else:
                    submit(job)
                    running += 1
            if not waiting:
                return
            (ref,), _ = ray.wait(list(waiting), num_returns=1)
            run, role, i = waiting.pop(ref)
            value = self._get(ref)  # a task that failed after its retries raises here
            key = dependency.pop(ref, None)
            if key is not None:
                crafting[key] -= 1
                if crafting[key] == 0:  # the driver is the only writer of the cache
                    ws.cache.save(key, torch.cat(ray.get(sets[key])))
                    del crafting[key], sets[key]  # later users read it from the cache
            if run is None:
                continue
            run.pending -= 1
            if role == "craft":
                run.craft_seconds += value
            else:
                run.flags[i], run.seconds[i] = value
            if run.pending == 0:
                running -= 1
                seconds = tuple(s + (run.craft_seconds if c.crafted_on[0] == c.model else 0.0)
                                for s, c in zip(run.seconds, run.job.cells, strict=True))
                yield Outcome(run.job, tuple(run.flags), seconds)  # type: ignore[arg-type]

    def train(self, tasks: list[TrainTask], data: Dataset, device: torch.device) -> Iterator[
            tuple[ModelSpec, int, nn.Module, float]]:
        ray = self.ray
        task = self._tasks["train_task"].options(**self._options(device))
        data_ref = ray.put(data)
        env = environment_id()
        refs = {task.remote(env, spec, data_ref, seed, str(device)): (spec, seed) for spec, seed in tasks}
        while refs:
            (ref,), _ = ray.wait(list(refs), num_returns=1)
            spec, seed = refs.pop(ref)
            state, seconds = self._get(ref)
            model = build_model(spec, data.info)
            model.load_state_dict(state)
            yield spec, seed, model.to(device), seconds

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False
