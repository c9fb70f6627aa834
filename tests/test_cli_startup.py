"""The command line starts quickly: its entry point imports none of the heavy parts a command may
need (the store, durable execution, models, rich output) until a command runs; and a worker (or a
server) loads an optional part (the Databricks SDK and routes, the MCP SDK, llama.cpp, DuckDB, the
SQL parser, the knowledge index and its embedders, span exporters) only where a run uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ProcessWorker

HEAVY = ("sqlalchemy", "alembic", "dbos", "llama_cpp", "rich", "pydantic", "opensupervisor.store.store",
         "opensupervisor.runtime", "opensupervisor.server.app", "opensupervisor.workspace", "cryptography")
# What a worker must not load before a run needs it: none of these is on the way to running a
# queued run whose tools and model are not among them.
OPTIONAL = ("databricks", "mcp", "llama_cpp", "duckdb", "mlflow", "sqlglot", "numpy", "scipy", "bm25s",
            "onnxruntime", "aiohttp", "tabulate", "google.protobuf", "opentelemetry.exporter",
            "opensupervisor.tools.databricks", "opensupervisor.tools.sql_engines", "opensupervisor.tools.sql_guard",
            "opensupervisor.knowledge.search", "opensupervisor.knowledge.index", "opensupervisor.knowledge.embeddings",
            "opensupervisor.models.http_upstream")
MINIMAL = '[models.m]\nprovider = "scripted"\n\n[[models.m.script]]\nturns = [{ text = "done" }]\n'
# Every optional tool kind and model declared, none of them used: declaring one loads none of its parts.
DECLARED = MINIMAL + """
[models.local]
provider = "embedded"
model_path = "weights.gguf"

[connections.search]
url = "http://127.0.0.1:9/mcp"

[apps.desk]
url = "http://127.0.0.1:9/desk"
protocol = "mcp"

[apps.chat]
url = "http://127.0.0.1:9/chat"

[knowledge_assistants.docs]
sources = ["docs"]
"""
# A worker's start-up, to where it is ready: what ``opensupervisor worker`` runs (its modules are
# printed there, before it stops).
WORKER = """
import asyncio
import opensupervisor.cli
from opensupervisor.runtime import running
from opensupervisor.settings import Settings
from opensupervisor.workspace import load_workspace

async def ready() -> None:
    settings = Settings.from_env()
    async with running(settings, load_workspace(settings.config)):
        print(json.dumps(sorted(sys.modules)), flush=True)

asyncio.run(ready())
"""


def _loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after ``code``, or where ``code`` first prints them."""
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
                         env=env)
    return set(json.loads(next(line for line in out.stdout.splitlines() if line.startswith("["))))


def _among(loaded: set[str], names: tuple[str, ...]) -> set[str]:
    return {m for m in loaded if any(m == n or m.startswith(n + ".") for n in names)}


def _worker_env(tmp_path: Path, workspace: str) -> dict[str, str]:
    config = tmp_path / "workspace.toml"
    config.write_text(workspace, encoding="utf-8")
    # No span destination: with one, the exporter is rightly loaded.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENSUPERVISOR_", "OTEL_", "MLFLOW_", "DATABRICKS_"))}
    env.update(OPENSUPERVISOR_CONFIG=str(config), OPENSUPERVISOR_DATA_DIR=str(tmp_path / "data"),
               OPENSUPERVISOR_DATABASE_URL=f"sqlite:///{tmp_path}/state.db")
    return env


def test_importing_the_command_line_loads_nothing_heavy() -> None:
    loaded = _loaded_after("import opensupervisor.cli")
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}


def test_help_loads_nothing_heavy_and_lists_every_command() -> None:
    code = ("from click.testing import CliRunner\nfrom opensupervisor.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "assert all(c in r.output for c in ('serve', 'worker', 'users', 'tokens', 'usage', 'grants', "
            "'rate-limits', 'functions', 'connections', 'ingest'))")
    loaded = _loaded_after(code)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}


def test_the_worker_entry_path_imports_no_optional_part() -> None:
    loaded = _loaded_after("import opensupervisor.cli\nimport opensupervisor.runtime")
    assert _among(loaded, OPTIONAL) == set()


def test_a_ready_worker_has_loaded_no_optional_part(tmp_path: Path) -> None:
    loaded = _loaded_after(WORKER, _worker_env(tmp_path, MINIMAL))
    assert "dbos" in loaded  # it did start: durable execution is up
    assert _among(loaded, OPTIONAL) == set()


def test_declaring_optional_tools_and_models_loads_none_of_their_parts(tmp_path: Path) -> None:
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")  # checked to exist at start, read at the first request
    (tmp_path / "docs").mkdir()
    loaded = _loaded_after(WORKER, _worker_env(tmp_path, DECLARED))
    assert "opensupervisor.models.embedded" in loaded and "opensupervisor.tools.mcp_client" in loaded
    assert _among(loaded, OPTIONAL) == set()


def test_a_worker_says_when_it_takes_runs(tmp_path: Path) -> None:
    """``opensupervisor worker`` prints its ready line once it can take runs, and stops on SIGTERM."""
    config = tmp_path / "workspace.toml"
    config.write_text('name = "ready"\n\n[models.m]\nprovider = "scripted"\n')
    with ProcessWorker(tmp_path, config=config, database_url=f"sqlite:///{tmp_path}/state.db") as worker:
        worker.wait_ready()
        assert "Worker ready: taking background runs" in worker.log_path.read_text()
