"""The version of our own code that a number depends on, as a hash that survives refactoring.

A record's key includes a hash of the modules that draw, craft and score (`NUMBER_CODE`). It is
taken over each module's syntax tree, not its bytes: comments, docstrings, type annotations and
import statements are left out, and top-level definitions are hashed as a set (sorted by name), so
moving a function between covered modules, reordering them or rewording a docstring keeps every
stored number, while any change to what the code computes (a constant, an operator, a branch)
invalidates them. See docs/reports.md#what-keys-a-number.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent

# Package-relative globs of every module whose code changes a number: seeds and eval mode, the
# models' layers and builders, noise, corruptions and attacks, the evaluation kinds, and the tasks
# that craft and score.
NUMBER_CODE = (
    "runtime.py",
    "zoo/layers.py",
    "zoo/sparse.py",
    "zoo/spec.py",
    "zoo/build.py",
    "perturb/**/*.py",
    "evaluation/kinds.py",
    "execution/executor.py",
)


class _Normalise(ast.NodeTransformer):
    """Drops what cannot change a result: docstrings, annotations, imports."""

    def _strip_docstring(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        self.generic_visit(node)
        return self._strip_docstring(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.generic_visit(node)
        return self._strip_docstring(node)

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.annotation = None
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        # A dataclass field keeps its name and default; the annotation itself computes nothing.
        node.annotation = ast.Constant(None)
        return node

    def visit_Import(self, node: ast.Import) -> None:
        return None

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        return None


# Fields that later Pythons added to nodes this code already had (3.12: PEP 695's type parameters
# on functions and classes); empty in code that does not use them. `_dump` leaves them out and asks
# 3.13+ to print empty fields as 3.11 and 3.12 do, so one source has one key on every Python:
# ast.dump's text is version-specific (a plain dump gave three keys for one tree on 3.11-3.13).
_LATER_FIELDS = ("type_params",)
_DUMP_OPTIONS = {"show_empty": True} if sys.version_info >= (3, 13) else {}


def _dump(node: ast.AST) -> str:
    for part in ast.walk(node):
        for field in _LATER_FIELDS:
            if not getattr(part, field, None) and field in part._fields:
                delattr(part, field)
    return ast.dump(node, annotate_fields=False, **_DUMP_OPTIONS)


def _definitions(source: str) -> list[tuple[str, str]]:
    """(name, normalised dump) of each top-level statement of a module."""
    tree = _Normalise().visit(ast.parse(source))
    tree = _Normalise()._strip_docstring(tree)
    out = []
    for node in tree.body:
        if isinstance(node, ast.Pass):
            continue
        name = getattr(node, "name", None)
        if name is None:
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            name = ",".join(ast.unparse(t) for t in targets if t is not None)
        out.append((name, _dump(node)))
    return out


def code_digest(sources: Iterable[str]) -> str:
    """SHA-256 of the normalised definitions of the given module sources, as a set."""
    definitions = sorted(d for source in sources for d in _definitions(source))
    digest = hashlib.sha256()
    for name, dump in definitions:
        digest.update(f"{name}\0{dump}\0".encode())
    return digest.hexdigest()


def number_modules(root: Path = PACKAGE) -> list[Path]:
    """The files `NUMBER_CODE` covers, sorted."""
    return sorted({p for pattern in NUMBER_CODE for p in root.glob(pattern)})


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The first 16 hex digits of `code_digest` over the number-making modules."""
    return code_digest(p.read_text(encoding="utf-8") for p in number_modules())[:16]
