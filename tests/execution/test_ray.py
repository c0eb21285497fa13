"""The Ray executor on a real Ray: a private one on this machine, and a two-node cluster simulated
with Ray's own `ray.cluster_utils.Cluster` (loopback addresses only)."""

import os

# Ray treats 127.0.0.1 as "this machine" and swaps in the address other machines would use; the
# simulated cluster lives on loopback only, so keep loopback (read when ray is imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import shutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from robustbench_sparse.cli import app  # noqa: E402
from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.execution.local import LocalExecutor  # noqa: E402
from robustbench_sparse.execution.zoo_training import train_zoo  # noqa: E402
from robustbench_sparse.results import harness  # noqa: E402
from robustbench_sparse.results.store import ResultStore  # noqa: E402
from robustbench_sparse.results.transfer import run_transfer  # noqa: E402
from robustbench_sparse.zoo.checkpoints import read_manifest  # noqa: E402
from robustbench_sparse.zoo.spec import load_zoo, select_models  # noqa: E402
from tests.conftest import make_home  # noqa: E402

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # real Ray clusters
CPU = torch.device("cpu")

SUITE = """
test_size = 80
batch_size = 40
[[evaluations]]
kind = "pixel"
eta = [0.0, 0.3]
[[evaluations]]
kind = "fgsm"
eps = [0.2]
[[evaluations]]
kind = "pgd"
eps = [0.1, 0.3]
steps = 8
[[evaluations]]
kind = "gradients"
[transfer]
evaluations = ["pgd"]
strengths = [0.3]
ensemble = ["dense", "dropout"]
"""


@pytest.fixture(scope="module")
def ray_home(trained_home, tmp_path_factory):
    paths = make_home(tmp_path_factory.mktemp("ray") / "home")
    shutil.copytree(trained_home.checkpoints("mnist5k"), paths.checkpoints("mnist5k"))
    (paths.suites / "ray.toml").write_text(SUITE)
    return paths


@pytest.fixture(scope="module")
def local_ray():
    """One private Ray (2 CPUs) for the module: starting Ray costs seconds."""
    from robustbench_sparse.execution.ray_executor import RayExecutor

    executor = RayExecutor(workers=2)
    yield executor
    executor.close()
    assert not ray.is_initialized()


def _records(plan, store, executor):
    cache = ArtifactStore(store.path.parent / f"{store.path.stem}-cache")
    white = harness.run(plan, store, cache, executor)
    moved = run_transfer(plan, store, executor, cache)
    frame = pd.concat([white, moved]).drop_duplicates("key").set_index("key")
    return frame[["model", "source", "evaluation", "strength", "correct", "flags"]].sort_index()


def test_ray_gives_the_local_executors_records_bit_for_bit(ray_home, local_ray, tmp_path):
    plan = harness.plan("mnist5k", "ray", device="cpu", home=ray_home.home)
    local = _records(plan, ResultStore(tmp_path / "local.sqlite"), LocalExecutor(workers=1))
    remote = _records(plan, ResultStore(tmp_path / "ray.sqlite"), local_ray)
    # + transfer (6 sources x 5 targets; its sets are the full attack's, so the diagonal is its own cell)
    assert len(local) == len(remote) == len(plan.cells()) + 6 * 5
    pd.testing.assert_frame_equal(local, remote)
    assert set(remote["evaluation"]) == {"clean", "pixel", "fgsm", "pgd", "gradients"}


def test_training_through_ray_gives_the_same_checkpoints(local_ray, tmp_path, small_mnist):
    homes = [make_home(tmp_path / name) for name in ("local", "ray")]
    for paths, executor in zip(homes, (LocalExecutor(workers=1), local_ray), strict=True):
        specs = select_models(load_zoo(paths.zoo_spec), "mnist5k", ["dense", "kwinner-boost"])
        outcomes = train_zoo(paths, specs, "mnist5k", lambda: small_mnist, [0, 1], CPU, executor=executor)
        assert [o.action for o in outcomes] == ["trained"] * 4
    for name in ("dense", "kwinner-boost"):
        for seed in (0, 1):
            hashes = {read_manifest(p, "mnist5k", name, seed).sha256 for p in homes}
            assert len(hashes) == 1, (name, seed)


def test_cli_runs_on_a_private_ray_and_refuses_ray_options_without_it(ray_home, local_ray):
    runner = CliRunner()
    args = ["--home", str(ray_home.home), "--device", "cpu", "--suite", "ray", "--models", "dense"]
    done = runner.invoke(app, ["evaluate", *args, "--executor", "ray"])  # joins the Ray already running
    assert done.exit_code == 0, done.output
    wrong = runner.invoke(app, ["evaluate", *args, "--address", "127.0.0.1:6390"])
    assert wrong.exit_code == 2 and "--address is for --executor ray" in wrong.output


def test_a_two_node_cluster_survives_losing_a_node(ray_home, local_ray, tmp_path):
    """A worker node removed mid-run: Ray reruns its tasks on the other node, and the records are
    those of an undisturbed run."""
    from ray.cluster_utils import Cluster

    from robustbench_sparse.execution.ray_executor import RayExecutor

    plan = harness.plan("mnist5k", "ray", device="cpu", home=ray_home.home)
    reference = _records(plan, ResultStore(tmp_path / "reference.sqlite"), local_ray)
    local_ray.close()  # one Ray per driver: leave the private one, join the cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    try:
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        executor = RayExecutor(address=cluster.address)
        store = ResultStore(tmp_path / "cluster.sqlite")
        removed = threading.Event()

        def remove_worker_mid_run() -> None:
            deadline = time.time() + 300
            while store.count() < 4 and time.time() < deadline:
                time.sleep(0.05)
            cluster.remove_node(worker)
            removed.set()

        killer = threading.Thread(target=remove_worker_mid_run, daemon=True)
        killer.start()
        records = _records(plan, store, executor)
        killer.join(timeout=60)
        executor.close()
        assert removed.is_set()
        assert store.count() == len(reference)
        pd.testing.assert_frame_equal(records, reference)
    finally:
        ray.shutdown()
        cluster.shutdown()
