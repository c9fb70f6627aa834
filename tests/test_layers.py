"""scripts/check_layers.py on small packages made for each test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "check_layers.py"


@pytest.fixture(scope="module")
def layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up by name while the class is made.
    sys.modules["check_layers"] = module
    spec.loader.exec_module(module)
    return module


def make_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in {"__init__.py": "", "wire/__init__.py": "", "core/__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def found(layers: ModuleType, package: Path) -> list[str]:
    return [str(v) for v in layers.check(package)]


def test_a_clean_tree_passes(layers: ModuleType, tmp_path: Path) -> None:
    package = make_package(tmp_path, {
        "errors.py": "class Oops(Exception): ...\n",
        "wire/items.py": "from pkg.errors import Oops\nfrom . import ids\n",
        "wire/ids.py": "import os\n",
        "core/loop.py": "from pkg.wire.items import Oops\nfrom pkg import errors\n",
        "runs/__init__.py": "",
        "runs/service.py": "from pkg.core import loop\nfrom ..wire import items\n",
    })
    assert found(layers, package) == []
    result = subprocess.run([sys.executable, str(SCRIPT), str(package)], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (0, "")


def test_an_upward_import_is_reported_wherever_it_is(layers: ModuleType, tmp_path: Path) -> None:
    package = make_package(tmp_path, {
        "cli_extra.py": "",
        "tracing/__init__.py": "",
        "tracing/spans.py": "",
        "core/context.py": "from typing import TYPE_CHECKING\n"
                           "if TYPE_CHECKING:\n    from pkg.tracing.spans import Span\n",
        "core/turn.py": "def later() -> None:\n    import pkg.cli_extra\n",
        "wire/items.py": "from ..core import turn\n",
    })
    assert found(layers, package) == [
        "pkg.core.context:3 imports pkg.tracing.spans (core may not import tracing)",
        "pkg.core.turn:2 imports pkg.cli_extra (core may not import cli_extra)",
        "pkg.wire.items:1 imports pkg.core.turn (wire may not import core)",
    ]
    result = subprocess.run([sys.executable, str(SCRIPT), str(package)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "pkg.core.context:3 imports pkg.tracing.spans (core may not import tracing)"


def test_parts_that_import_each_other_are_reported(layers: ModuleType, tmp_path: Path) -> None:
    package = make_package(tmp_path, {
        "workspace.py": "from pkg.demo import token\n",
        "demo/__init__.py": "",
        "demo/token.py": "from typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from pkg.workspace import Workspace\n",
        "store/__init__.py": "from pkg.runs import a\n",
        "runs/__init__.py": "",
        "runs/a.py": "from pkg.server import b\n",
        "server/__init__.py": "",
        "server/b.py": "from pkg.store import x\n",
    })
    assert found(layers, package) == [
        "pkg.demo.token:3 imports pkg.workspace (cycle: demo -> workspace -> demo)",
        "pkg.runs.a:1 imports pkg.server.b (cycle: runs -> server -> store -> runs)",
        "pkg.server.b:1 imports pkg.store (cycle: server -> store -> runs -> server)",
        "pkg.store:1 imports pkg.runs.a (cycle: store -> runs -> server -> store)",
        "pkg.workspace:1 imports pkg.demo.token (cycle: workspace -> demo -> workspace)",
    ]


def test_sizes_name_each_module_and_function_over_its_limit(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("check_sizes", SCRIPT.parent / "check_sizes.py")
    assert spec is not None and spec.loader is not None
    sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizes)
    long_body = "".join(f"    x{i} = {i}\n" for i in range(sizes.MAX_FUNCTION_LINES))
    package = make_package(tmp_path, {
        "core/ok.py": "def short() -> None:\n    pass\n",
        "core/long.py": f"async def long() -> None:\n{long_body}",
        "wire/big.py": "x = 1\n" * (sizes.MAX_MODULE_LINES + 1),
    })
    found = sizes.oversized(package)
    assert len(found) == 2
    assert any("long.py:1: function long of 61 lines" in f for f in found)
    assert any("big.py: module of 451 lines" in f for f in found)
    assert sizes.main([str(make_package(tmp_path / "clean", {"core/ok.py": "x = 1\n"}))]) == 0
