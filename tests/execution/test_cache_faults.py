"""A damaged adversarial-set cache entry is moved aside and crafted again, with a logged warning:
no traceback, nothing on stdout, nothing deleted, other entries untouched."""

import io
import logging
import zipfile
from pathlib import Path

import pytest
import torch

from robustbench_sparse.execution.cache import ArtifactStore

SET = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) / 32


def _saved_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def _flip_in_tensor_data(data: bytes) -> bytes:
    """One bit flipped inside the tensor's storage: torch.load alone would load the wrong set."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    header = member.header_offset  # the local header's lengths: its extra field holds torch's alignment padding
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little") + int.from_bytes(
        data[header + 28 : header + 30], "little")
    damaged = bytearray(data)
    damaged[start + 5] ^= 0x01
    return bytes(damaged)


def _non_tensor() -> bytes:
    return _saved_bytes({"not": torch.zeros(1)})  # type: ignore[arg-type]


DAMAGE = {
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "text": lambda good: b"not a tensor\n",
    "random bytes": lambda good: bytes(range(256)) * 8,
    "flipped bit": _flip_in_tensor_data,
    "not a tensor": lambda good: _non_tensor(),
}


@pytest.fixture()
def cache(tmp_path: Path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "adversarial")
    store.save("other", SET * 2)
    store.save("this", SET)
    return store


def test_good_entries_keep_their_exact_bytes_and_load_quietly(cache, caplog):
    assert cache.path("this").read_bytes() == _saved_bytes(SET)
    with caplog.at_level(logging.WARNING):
        adv, crafted = cache.get("this", lambda: pytest.fail("a good entry was crafted again"))
    assert torch.equal(adv, SET) and not crafted
    assert not caplog.records and not list(cache.folder.rglob("*.damaged*"))


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_entry_is_moved_aside_and_crafted_again(cache, damage, caplog, capsys):
    path = cache.path("this")
    damaged = DAMAGE[damage](path.read_bytes())
    path.write_bytes(damaged)
    other = cache.path("other").read_bytes()
    with caplog.at_level(logging.WARNING, logger="robustbench_sparse.execution.cache"):
        adv, crafted = cache.get("this", lambda: SET + 1)
    assert crafted and torch.equal(adv, SET + 1)
    aside = path.with_name(path.name + ".damaged")
    assert aside.read_bytes() == damaged
    assert path.read_bytes() == _saved_bytes(SET + 1)
    assert cache.path("other").read_bytes() == other and torch.equal(cache.load("other"), SET * 2)
    (warning,) = caplog.records
    assert str(path) in warning.getMessage() and "moved aside" in warning.getMessage()
    assert capsys.readouterr().out == ""


def test_a_second_damage_keeps_the_first_damaged_copy(cache):
    path = cache.path("this")
    for n, garbage in enumerate((b"first damage", b"second damage")):
        path.write_bytes(garbage)
        assert cache.load("this") is None
        assert not path.exists()
        assert path.with_name(path.name + (".damaged" if n == 0 else ".damaged2")).read_bytes() == garbage
    assert path.with_name(path.name + ".damaged").read_bytes() == b"first damage"
