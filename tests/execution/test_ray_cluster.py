"""The Ray executor on a cluster started the way docs/scaling.md starts one: `ray start --head` as a
subprocess (Ray's defaults: token authentication on, the token in ~/.ray/auth_token), joined by
`rbs ... --executor ray --address` as a subprocess. The head listens on loopback only (checked:
the test refuses to run otherwise), lives in its own temp dir and HOME under the test's tmp dir, and
is stopped by killing its own processes (not `ray stop`, which stops every Ray on the machine)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from robustbench_sparse.runtime import Paths
from robustbench_sparse.zoo.checkpoints import read_manifest
from tests.conftest import make_home

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a real Ray cluster, CLI subprocesses

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray") if (BIN / "ray").exists() else shutil.which("ray") or "ray"
RBS = str(BIN / "rbs") if (BIN / "rbs").exists() else shutil.which("rbs") or "rbs"
MODEL = "kwinner"  # the quick suite on one sparse model: its BPDA and gradient checks run too
TRAINED = "dense-cnn1"  # the zoo's smallest network, trained through the cluster
RUN_TIMEOUT_S = 600


@dataclass
class Head:
    address: str
    home: Path  # the head machine's HOME: ~/.ray/auth_token is there
    pgid: int  # `ray start` ran in a session of its own: its daemons share this process group


def _env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any RAY_* setting (a developer's RAY_ADDRESS or token must not
    leak in), HOME set to `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RBS_NO_PROGRESS="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes(pgid: int) -> set[int]:
    """The live processes of the head: its process group and their descendants (zombies left out)."""
    parent, group = {}, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        if int(fields[2]) == pgid:
            group.add(pid)
    found, grew = set(group), True
    while grew:
        children = {p for p, pp in parent.items() if pp in found} - found
        found |= children
        grew = bool(children)
    return found


def _address(hex_address: str) -> str:
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # /proc/net: 32-bit words, little endian
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return f"{ip}:{int(port_hex, 16)}"


def _listeners(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, address) of every listening TCP socket and bound UDP socket of `pids`."""
    owner = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for proto, bound in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        table = Path(f"/proc/net/{proto}")
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            fields = line.split()
            if fields[3] == bound and fields[9] in owner:
                out.append((owner[fields[9]], _address(fields[1])))
    return out


def _off_loopback(head: Head) -> list[tuple[int, str]]:
    return [(pid, a) for pid, a in _listeners(_processes(head.pgid))
            if not ipaddress.ip_address(a.rpartition(":")[0].strip("[]")).is_loopback]


def _stop(head: Head) -> None:
    """SIGTERM, then SIGKILL, to this head's processes only."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        pids = _processes(head.pgid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while _processes(head.pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _processes(head.pgid):
            return
    raise AssertionError(f"the Ray head's processes {sorted(_processes(head.pgid))} survived SIGKILL")


def _start_head(root: Path, num_cpus: int, **extra: str) -> Head:
    """`ray get-auth-token --generate` then `ray start --head`, as docs/scaling.md says, with the
    address pinned to loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from swapping
    127.0.0.1 for the machine's address)."""
    home, temp = root / "home", root / "ray"  # short paths: Ray's socket paths must fit 107 bytes
    home.mkdir(parents=True)
    env = _env(home, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    made = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0 and (home / ".ray" / "auth_token").is_file(), made.stderr
    port = _free_port()
    log = root / "ray-start.log"
    with log.open("w") as out:
        proc = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                                 "--include-dashboard=false", f"--num-cpus={num_cpus}", f"--temp-dir={temp}",
                                 "--disable-usage-stats"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    head = Head(f"127.0.0.1:{port}", home, proc.pid)
    try:
        assert proc.wait(timeout=180) == 0, log.read_text()
        assert "Token authentication is enabled" in log.read_text(), log.read_text()
        wrong = _off_loopback(head)
        if wrong:  # never leave a Ray reachable from outside this machine: fail, do not skip
            pytest.fail(f"the test's Ray head listens beyond loopback: {wrong}; stopped it")
    except BaseException:
        _stop(head)
        raise
    return head


def _rbs(*args: str, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RBS, *args], env=_env(home, **extra), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def _records(paths: Paths) -> dict[str, dict]:
    """Every stored record, without what depends on when and how fast it ran."""
    with sqlite3.connect(paths.reports("mnist5k") / "results.sqlite") as db:
        rows = db.execute("SELECT key, record FROM results").fetchall()
    return {k: {f: v for f, v in json.loads(r).items() if f not in ("seconds", "date")} for k, r in rows}


def _one_line_error(done: subprocess.CompletedProcess[str], address: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and address in lines[0], done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    started = _start_head(tmp_path_factory.mktemp("head"), num_cpus=2)
    yield started
    _stop(started)


@pytest.fixture(scope="module")
def homes(trained_home, tmp_path_factory):
    """Two homes with the trained tiny zoo: one for the local executor, one for the cluster."""
    root = tmp_path_factory.mktemp("homes")
    made = {}
    for name in ("local", "cluster"):
        made[name] = make_home(root / name)
        shutil.copytree(trained_home.checkpoints("mnist5k"), made[name].checkpoints("mnist5k"))
    return made


def test_evaluate_through_a_started_cluster_gives_the_local_records(head, homes):
    args = ["evaluate", "--device", "cpu", "--suite", "quick", "--models", MODEL]
    local = _rbs(*args, "--home", str(homes["local"].home), home=head.home)
    assert local.returncode == 0, local.stderr
    started = time.monotonic()
    joined = _rbs(*args, "--home", str(homes["cluster"].home), "--executor", "ray", "--address", head.address,
                  home=head.home)  # the driver on the head machine: the token is in ~/.ray/auth_token
    assert joined.returncode == 0, joined.stderr
    assert time.monotonic() - started < RUN_TIMEOUT_S
    assert "InvalidAuthToken" not in joined.stderr and "gcs_client" not in joined.stderr, joined.stderr
    records, reference = _records(homes["cluster"]), _records(homes["local"])
    assert len(reference) > 20 and records == reference  # the same cells, flags, counts and accuracies
    assert not _off_loopback(head)  # its worker processes too


def test_training_through_a_started_cluster_gives_the_local_checkpoint(head, tmp_path):
    """The driver here is a machine other than the head: no ~/.ray/auth_token, the token copied to a
    file named by RAY_AUTH_TOKEN_PATH."""
    elsewhere, token = tmp_path / "elsewhere", tmp_path / "token"
    elsewhere.mkdir()
    token.write_text((head.home / ".ray" / "auth_token").read_text())
    hashes = {}
    for name, extra in (("local", []), ("cluster", ["--executor", "ray", "--address", head.address])):
        paths = make_home(tmp_path / name)
        done = _rbs("train", "--home", str(paths.home), "--device", "cpu", "--models", TRAINED, *extra,
                    home=elsewhere, RAY_AUTH_TOKEN_PATH=str(token))
        assert done.returncode == 0, done.stderr
        hashes[name] = read_manifest(paths, "mnist5k", TRAINED, 0).sha256
    assert hashes["local"] == hashes["cluster"]


def test_a_wrong_address_a_missing_and_a_wrong_token_are_one_line_each(head, homes, tmp_path):
    args = ["evaluate", "--home", str(homes["cluster"].home), "--device", "cpu", "--suite", "quick",
            "--models", MODEL, "--executor", "ray", "--address"]
    nowhere = f"127.0.0.1:{_free_port()}"
    line = _one_line_error(_rbs(*args, nowhere, home=head.home), nowhere)
    assert "nothing answers" in line
    (tmp_path / "elsewhere").mkdir()  # a machine without the token
    line = _one_line_error(_rbs(*args, head.address, home=tmp_path / "elsewhere"), head.address)
    assert "asks for its token and this machine has none" in line and "~/.ray/auth_token" in line
    line = _one_line_error(_rbs(*args, head.address, home=head.home, RAY_AUTH_TOKEN="0" * 64), head.address)
    assert "refuses this machine's token (from RAY_AUTH_TOKEN)" in line


def test_a_cluster_computing_in_another_regime_is_refused_in_one_line(homes, tmp_path_factory):
    """A node whose workers compute with other versions or regime than the driver: here the head's
    workers ask for the native CPU regime (one machine cannot hold two torch versions)."""
    other = _start_head(tmp_path_factory.mktemp("native"), num_cpus=1, RBS_CPU_REGIME="native")
    try:
        done = _rbs("evaluate", "--home", str(homes["cluster"].home), "--device", "cpu", "--suite", "quick",
                    "--models", MODEL, "--executor", "ray", "--address", other.address, home=other.home)
        line = _one_line_error(done, other.address)
        assert "computes with other versions or code than this machine" in line and "regime native there" in line
    finally:
        _stop(other)
