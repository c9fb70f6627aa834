"""Module and function sizes: exit 1, naming each, when a module of the package is over
``MAX_MODULE_LINES`` lines or a function over ``MAX_FUNCTION_LINES`` (a size past these is a sign
that two things share one place).

Usage: ``python scripts/check_sizes.py [PACKAGE_DIR]`` (default ``src/opensupervisor``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def oversized(root: Path) -> list[str]:
    """Each module and function of ``root`` over its limit, as ``path[:line] what (n lines)``."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{path}: module of {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path}:{node.lineno}: function {node.name} of {length} lines "
                                 f"(at most {MAX_FUNCTION_LINES})")
    return found


def main(argv: list[str]) -> int:
    found = oversized(Path(argv[0]) if argv else Path("src/opensupervisor"))
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
