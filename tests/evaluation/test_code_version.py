"""The code version that keys stored numbers: it survives refactoring, not a changed computation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustbench_sparse.evaluation import code_version as cv

SOURCE = '''"""A module."""
import math

EPS_FLOOR = 1e-6  # a constant that changes numbers


def step(x: float, alpha: float = 0.01) -> float:
    """One step."""
    return x + alpha * math.copysign(1.0, x)  # signed


class Attack:
    """An attack."""

    steps: int = 10

    def run(self, x: float) -> float:
        return step(x) + EPS_FLOOR
'''


def _key(*sources: str) -> str:
    return cv.code_digest(sources)


def test_comments_docstrings_annotations_and_imports_keep_the_key():
    edited = (SOURCE.replace('"""One step."""', '"""One signed step of size alpha, as in the paper."""')
              .replace("# signed", "# a comment reworded").replace("x: float, alpha: float", "x, alpha")
              .replace("import math\n", "import math  # noqa\nimport os\n"))
    assert edited != SOURCE
    assert _key(edited) == _key(SOURCE)


def test_moving_a_definition_between_covered_modules_keeps_the_key():
    head, tail = SOURCE.split("class Attack:")
    assert _key(head, "class Attack:" + tail) == _key(SOURCE)
    assert _key("class Attack:" + tail, head) == _key(SOURCE)


def test_a_changed_constant_operator_or_default_changes_the_key():
    for old, new in (("1e-6", "1e-5"), ("x + alpha", "x - alpha"), ("alpha: float = 0.01", "alpha: float = 0.02"),
                     ("steps: int = 10", "steps: int = 20")):
        assert _key(SOURCE.replace(old, new)) != _key(SOURCE), old


def test_every_module_that_makes_numbers_is_covered():
    covered = {p.relative_to(cv.PACKAGE).as_posix() for p in cv.number_modules()}
    for module in ("runtime.py", "zoo/spec.py", "zoo/build.py", "zoo/layers.py", "zoo/sparse.py",
                   "perturb/noise.py", "perturb/corruptions.py", "evaluation/kinds.py", "execution/executor.py"):
        assert module in covered, module
    assert any(m.startswith("perturb/attacks/") for m in covered)
    assert len(cv.code_version()) == 16


def test_the_real_attack_code_keeps_its_key_under_a_comment_and_changes_with_its_budget_tolerance():
    paths = [p for p in cv.number_modules() if "perturb/attacks/" in p.as_posix()]
    sources = {p: p.read_text(encoding="utf-8") for p in paths}
    (where,) = [p for p, s in sources.items() if "BOUND_TOLERANCE = 1e-6" in s]
    base = _key(*sources.values())
    commented = {**sources, where: sources[where].replace("BOUND_TOLERANCE = 1e-6", "BOUND_TOLERANCE = 1e-6  # why")}
    assert _key(*commented.values()) == base
    loosened = {**sources, where: sources[where].replace("BOUND_TOLERANCE = 1e-6", "BOUND_TOLERANCE = 1e-5")}
    assert _key(*loosened.values()) != base


_OTHER_PYTHON = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("cv", sys.argv[1])
cv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cv)
print(cv.code_digest([sys.argv[2]]), cv.code_version())
"""


def _other_pythons() -> list[str]:
    """One interpreter per other Python 3 minor version found here (on PATH or under pyenv)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(11, 16)]
    candidates += map(str, sorted(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob("versions/3.*/bin/python3")))
    found: dict[str, str] = {}
    for python in filter(None, candidates):
        ran = subprocess.run([python, "-c", "import sys; print(sys.version_info[1])"], capture_output=True, text=True)
        if ran.returncode == 0 and 11 <= int(ran.stdout) != sys.version_info.minor:
            found.setdefault(ran.stdout.strip(), python)
    return sorted(found.values())


def test_one_source_has_one_key_on_every_python():
    """ast.dump's text differs between Python versions (3.12 added type_params to functions): the
    key of our code may not, or a record made on 3.12 would never match one made on 3.11."""
    pythons = _other_pythons()
    if not pythons:
        pytest.skip("no other Python 3 minor version on this machine")
    ours = (cv.code_digest([SOURCE]), cv.code_version())
    for python in pythons:
        out = subprocess.run([python, "-c", _OTHER_PYTHON, str(Path(cv.__file__)), SOURCE], capture_output=True,
                             text=True, check=True).stdout.split()
        assert tuple(out) == ours, python
