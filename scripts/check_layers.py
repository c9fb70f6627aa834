"""The package's import layers (design §3): exit 1, naming each offending import, when a low layer
imports a higher one or two parts of the package import each other.

A part is a subpackage (``core``) or a root module (``errors``). Every import counts, including
those under ``if TYPE_CHECKING:`` and inside functions: each still ties the parts together.

Usage: ``python scripts/check_layers.py [PACKAGE_DIR]`` (default ``src/opensupervisor``).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

# What the protocol and the loop must not know of: I/O, persistence, serving, configuration.
_ABOVE_CORE = ("runs", "server", "store", "tracing", "tools", "models", "admin", "cli*", "runtime", "workspace",
               "demo", "knowledge")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": _ABOVE_CORE,
    "wire": (*_ABOVE_CORE, "core", "identity"),
}


@dataclass(frozen=True)
class Import:
    module: str
    line: int
    target: str

    @property
    def parts(self) -> tuple[str | None, str | None]:
        return _part(self.module), _part(self.target)


@dataclass(frozen=True)
class Violation:
    imp: Import
    reason: str

    def __str__(self) -> str:
        return f"{self.imp.module}:{self.imp.line} imports {self.imp.target} ({self.reason})"


def _part(module: str) -> str | None:
    """``pkg.core.events`` -> ``core``; the package's own ``__init__`` belongs to no part."""
    names = module.split(".")
    return names[1] if len(names) > 1 else None


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        names = [root.name, *path.relative_to(root).with_suffix("").parts]
        if names[-1] == "__init__":
            names.pop()
        found[".".join(names)] = path
    return found


def _targets(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".")[: None if is_package else -1]
        anchor = ".".join(package[: len(package) - node.level + 1])
        base = f"{anchor}.{base}" if base else anchor
    # ``from pkg import errors`` imports the module pkg.errors; ``from pkg.wire.items import Item`` a name.
    return list(dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names))


def imports(root: Path) -> list[Import]:
    """Every import of a module of the package by one of its modules, by module and line."""
    known = _modules(root)
    found = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, module, is_package, known):
                if target.split(".")[0] == root.name:
                    found.append(Import(module, getattr(node, "lineno", 0), target))
    return sorted(found, key=lambda i: (i.module, i.line, i.target))


def _upward(found: list[Import]) -> list[Violation]:
    out = []
    for imp in found:
        source, target = imp.parts
        banned = FORBIDDEN.get(source or "", ())
        if target is not None and any(fnmatch(target, pattern) for pattern in banned):
            out.append(Violation(imp, f"{source} may not import {target}"))
    return out


def _path(edges: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """The shortest chain of parts from ``start`` to ``goal``, if any."""
    paths = {start: [start]}
    queue = [start]
    for here in queue:
        for nxt in sorted(edges.get(here, ())):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                queue.append(nxt)
    return paths.get(goal)


def _cycles(found: list[Import]) -> list[Violation]:
    """Each import from one part to another that the other reaches back (directly or through others)."""
    by_edge: dict[tuple[str, str], list[Import]] = {}
    edges: dict[str, set[str]] = {}
    for imp in found:
        source, target = imp.parts
        if source is not None and target is not None and source != target:
            by_edge.setdefault((source, target), []).append(imp)
            edges.setdefault(source, set()).add(target)
    out = []
    for (source, target), imps in by_edge.items():
        back = _path(edges, target, source)
        if back is not None:
            out += [Violation(imp, "cycle: " + " -> ".join([source, *back])) for imp in imps]
    return out


def check(root: Path) -> list[Violation]:
    """The layer violations of the package in directory ``root``."""
    found = imports(root)
    return _upward(found) + _cycles(found)


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "src/opensupervisor")
    violations = check(root)
    for violation in violations:
        print(violation)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
