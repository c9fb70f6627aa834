"""The program a sandbox subprocess runs: read a call per line on stdin, answer a line on stdout.

A call is ``{"file": <path>, "function": <name>, "arguments": {...}}``; the answer is
``{"ok": <result as text>}`` or ``{"error": <what went wrong>}``. Modules are loaded once per
process. Started by ``tools.sandbox`` with ``python -I`` (no user site, no environment), resource
limits and an empty environment; it imports nothing of the server.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
from types import ModuleType
from typing import Any

_modules: dict[str, ModuleType] = {}


def _load(path: str) -> ModuleType:
    module = _modules.get(path)
    if module is None:
        spec = importlib.util.spec_from_file_location(f"uc_function_{len(_modules)}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[path] = module
    return module


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def main() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # a function's prints must not corrupt the answers
    for line in sys.stdin:
        try:
            call = json.loads(line)
            function = getattr(_load(call["file"]), call["function"])
            answer = {"ok": _text(function(**call["arguments"]))}
        except Exception as exc:  # the function's failure is the answer, the worker goes on
            frames = traceback.extract_tb(exc.__traceback__)
            where = f" (line {frames[-1].lineno})" if frames else ""
            answer = {"error": f"{type(exc).__name__}: {exc}{where}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
