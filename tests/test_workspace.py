"""The workspace file, the CLI's handling of it, and the model contract's non-streaming fold."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opensupervisor.core.contracts import ModelRequest, ToolDef
from opensupervisor.errors import ConfigError
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.models.scripted import ScriptedModel, parse_script
from opensupervisor.workspace import load_workspace, parse_workspace

SUPERVISOR_MODELS = {
    "databricks-claude-sonnet-4-5", "databricks-claude-sonnet-4-6", "databricks-claude-sonnet-4",
    "databricks-claude-haiku-4-5", "databricks-claude-opus-4-1", "databricks-claude-opus-4-5",
    "databricks-claude-opus-4-6",
}


def test_demo_workspace_lists_the_supervisor_models() -> None:
    workspace = load_workspace(None)
    assert set(workspace.models) == SUPERVISOR_MODELS
    assert len(ModelCatalog(workspace).entries) == 7


@pytest.mark.parametrize(("text", "message"), [
    ("models = 3", "models"),
    ('[models.a]\nprovider = "scripted"\nprovdier = "x"', "models.a.provdier"),
    ('[models.a]\nprovider = "magic"', "models.a.provider"),
    ('[models.a]\nprovider = "scripted"\nfallbacks = ["b"]', "unknown model 'b'"),
    ("[limits]\nmax_turns = 0", "limits.max_turns"),
    ("[limits]\nwebsocket_max_s = 0", "limits.websocket_max_s"),
    ("[limits]\nwebsocket_max_s = 100000", "limits.websocket_max_s"),
    ("[limits]\nsse_keepalive_s = -1", "limits.sse_keepalive_s"),
    ('[limits]\nsse_keepalive_s = "soon"', "limits.sse_keepalive_s"),
    ("not toml = = =", "not valid TOML"),
])
def test_bad_workspace_files_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        parse_workspace(text, source="w.toml", base_dir=Path.cwd())


def test_bad_scripts_and_incomplete_providers_fail_at_start() -> None:
    with pytest.raises(ConfigError, match=r"models\.m\.script\[0\]\.turns\[0\]\.texts"):
        parse_script("m", [{"turns": [{"texts": "typo"}]}])
    workspace = parse_workspace('[models.e]\nprovider = "openai-responses"', source="w", base_dir=Path.cwd())
    with pytest.raises(ConfigError, match="base_url and upstream_model"):
        ModelCatalog(workspace)
    with pytest.raises(ConfigError, match="upstream_model"):
        ModelCatalog(parse_workspace('[models.a]\nprovider = "anthropic"\napi_key_env = "PATH"', source="w",
                                     base_dir=Path.cwd()))
    with pytest.raises(ConfigError, match="base_url"):
        ModelCatalog(parse_workspace('[models.c]\nprovider = "openai-chat"', source="w", base_dir=Path.cwd()))


def test_serve_refuses_a_broken_workspace_file(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[models.x]\nprovider = "scripted"\nwhoops = 1\n')
    done = subprocess.run([sys.executable, "-m", "opensupervisor", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode != 0
    assert "models.x.whoops" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "opensupervisor", "serve", "--config", "nope.toml"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert missing.returncode != 0 and "nope.toml" in missing.stderr
    bad_db = subprocess.run([sys.executable, "-m", "opensupervisor", "serve"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, check=False,
                            env={**os.environ, "OPENSUPERVISOR_DATABASE_URL": "mysql://x@y/z"})
    assert bad_db.returncode != 0 and "unsupported database 'mysql'" in bad_db.stderr


def test_cli_help() -> None:
    done = subprocess.run([sys.executable, "-m", "opensupervisor", "serve", "--help"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert "--workers" in done.stdout and "OPENSUPERVISOR_CONFIG" in done.stdout


def test_model_request_folds_the_stream() -> None:
    rules = parse_script("m", [{"when": "both", "turns": [
        {"text": "Calling now", "tool_calls": [{"name": "f", "arguments": {"x": 1}}]}]}])
    model = ScriptedModel("m", rules)
    request = ModelRequest(instructions=None, tools=[ToolDef("f", None, {"type": "object"})],
                           items=[{"type": "message", "role": "user",
                                   "content": [{"type": "input_text", "text": "do both"}]}])
    response = asyncio.run(model.request(request))
    assert response.text == "Calling now"
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("f", '{"x":1}')]
    assert response.finish_reason == "tool_calls" and response.usage is not None


def test_serve_never_prints_the_database_password(tmp_path: Path) -> None:
    from opensupervisor.cli import _without_password

    assert _without_password("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert "s3cret" not in _without_password("postgresql://app:s3cret@db/x")
