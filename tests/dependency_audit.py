"""Which distributions a source tree imports, against what its pyproject.toml declares.

Every import, at top level or inside a function, must be the standard library, the
project's own code, or a distribution declared for the part of the tree it is in (the
library: ``[project] dependencies``; tests: those and the ``dev`` extra; benchmarks:
those and ``bench``). An import inside ``try`` whose ``except ImportError`` raises an
error naming the extra that installs it is *guarded*: optional, and allowed when that
extra declares it. Used by tests/test_dependencies.py on this repository, its example
plugins and the plugin the scaffold writes.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CORE = "dependencies"  # the name the audit gives [project] dependencies beside the extras
SKIPPED_DIRS = {"__pycache__", "build", "dist", "site-packages"}


@dataclass(frozen=True)
class Import:
    """One import statement (or ``importlib.import_module("...")`` call) in a file."""

    file: Path
    line: int
    module: str  # the top-level name: "torch" for ``from torch.nn import Linear``
    guard_text: str | None  # the strings of the ImportError handler around it; None if unguarded


@dataclass(frozen=True)
class Guarded:
    """An optional import that passed the audit, for the listing."""

    file: str
    module: str
    extra: str


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``Open_Clip.torch`` -> ``open-clip-torch``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """``"torch-geometric>=2.6; python_version>'3'"`` -> ``"torch-geometric"``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a distribution name from requirement {requirement!r}")
    return normalize(match.group(1))


def declared_groups(pyproject: Path) -> dict[str, set[str]]:
    """``{"dependencies": {...}, "<extra>": {...}}``: normalized names per requirement group."""
    project = tomllib.loads(pyproject.read_text())["project"]
    groups = {CORE: {requirement_name(r) for r in project.get("dependencies", [])}}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        groups[extra] = {requirement_name(r) for r in requirements}
    return groups


@cache
def _installed_distributions() -> dict[str, tuple[str, ...]]:
    return {top: tuple(normalize(d) for d in dists) for top, dists in importlib.metadata.packages_distributions().items()}


def distributions_of(module: str) -> tuple[str, ...]:
    """The distributions that install top-level module ``module``; a module that no
    installed distribution provides is taken to share its distribution's name."""
    return _installed_distributions().get(module) or (normalize(module),)


def _caught_names(handler: ast.ExceptHandler) -> set[str]:
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in types if t is not None}


def _import_guard(node: ast.Try) -> str | None:
    """The strings an ``except ImportError`` of ``node`` raises with, if it raises."""
    for handler in node.handlers:
        if _caught_names(handler) & {"ImportError", "ModuleNotFoundError"}:
            raises = [n for stmt in handler.body for n in ast.walk(stmt) if isinstance(n, ast.Raise)]
            if raises:
                return " ".join(n.value for r in raises for n in ast.walk(r)
                                if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, file: Path) -> None:
        self.file = file
        self.guards: list[str | None] = []
        self.found: list[Import] = []

    def _add(self, name: str, line: int) -> None:
        guard = next((g for g in reversed(self.guards) if g is not None), None)
        self.found.append(Import(self.file, line, name.split(".")[0], guard))

    def visit_Try(self, node: ast.Try) -> None:
        self.guards.append(_import_guard(node))
        for stmt in node.body:
            self.visit(stmt)
        self.guards.pop()
        for stmt in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in {"import_module", "__import__"} and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
            self._add(node.args[0].value, node.lineno)
        self.generic_visit(node)


def imports_of(file: Path) -> list[Import]:
    """Every absolute import in ``file``, nested ones included."""
    collector = _Collector(file)
    collector.visit(ast.parse(file.read_text(), filename=str(file)))
    return collector.found


def python_files(root: Path, *, skip: tuple[Path, ...] = ()) -> list[Path]:
    """The ``.py`` files under ``root``, leaving out caches, build output, hidden
    folders and the trees in ``skip`` (nested projects with a pyproject of their own)."""
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts[:-1]
        if any(p in SKIPPED_DIRS or p.startswith(".") or p.endswith(".egg-info") for p in parts):
            continue
        if any(path.is_relative_to(s) for s in skip):
            continue
        files.append(path)
    return files


def local_modules(files: list[Path], root: Path) -> set[str]:
    """The names the project's own code can be imported by: each module's file name
    and each package on the way to it (benchmarks/common.py gives "benchmarks", "common")."""
    names = set()
    for path in files:
        names.add(path.stem)
        names.update(path.relative_to(root).parts[:-1])
    return names


def audit(root: Path, groups_for: dict[str, tuple[str, ...]], *, default: tuple[str, ...] = (CORE,),
          skip: tuple[Path, ...] = (), label: str = "pyproject.toml") -> tuple[list[str], list[Guarded]]:
    """Check every import under project ``root`` against its pyproject.toml.

    ``groups_for`` maps a top-level folder (``"tests"``) to the requirement groups its
    files may import from; other folders get ``default``. Returns the problems, one
    line each naming the file, the module and the group it belongs in, and the
    guarded optional imports found. ``label`` names the pyproject.toml in messages.
    """
    declared = declared_groups(root / "pyproject.toml")
    files = python_files(root, skip=skip)
    local = local_modules(files, root)
    problems, guarded = [], []
    for file in files:
        relative = file.relative_to(root)
        allowed = groups_for.get(relative.parts[0], default)
        home = allowed[-1]  # where a missing import of this part belongs
        for imp in imports_of(file):
            if imp.module in sys.stdlib_module_names or imp.module in local:
                continue
            dists = distributions_of(imp.module)
            if any(d in declared.get(g, set()) for g in allowed for d in dists):
                continue
            where = f"{relative}:{imp.line} imports {imp.module} (distribution {dists[0]})"
            extras = sorted(g for g, names in declared.items() if g != CORE and set(dists) & names)
            if imp.guard_text is not None and extras:
                named = [e for e in extras if re.search(rf"\b{re.escape(e)}\b", imp.guard_text)]
                if named:
                    guarded.append(Guarded(str(relative), imp.module, named[0]))
                else:
                    problems.append(f"{where}, guarded, but its ImportError message does not name the extra "
                                    f"that installs it ({' or '.join(repr(e) for e in extras)})")
                continue
            fix = "[project] dependencies" if home == CORE else f"[project.optional-dependencies] {home}"
            found = f", which only the extra {' / '.join(extras)} declares" if extras else ", which pyproject.toml does not declare"
            problems.append(f"{where}{found}: add it to {fix} of {label}"
                            + (" or guard it with an ImportError that names the extra" if extras else ""))
    return problems, guarded
