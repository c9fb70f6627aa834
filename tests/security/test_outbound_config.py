"""The workspace file is the operator's, but its URLs are parsed all the same: a URL with credentials,
a backslash or another ambiguity is a configuration error naming the key, never repeating the URL.
What a server builds from the file at start (connections, apps, models, the Databricks workspace)
is built here as it is there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opensupervisor.errors import ConfigError
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.tools import databricks
from opensupervisor.tools.apps import Apps
from opensupervisor.tools.connections import Connections
from opensupervisor.tools.registry import ToolRegistry
from opensupervisor.workspace import Workspace, parse_workspace

SECRET = "hunter2-config"
BAD_URLS = [f"http://user:{SECRET}@127.0.0.1:9100/mcp", f"https://{SECRET}@mcp.example.com/mcp",
            f"HTTP://u:{SECRET}@host/mcp", f"http://127.0.0.1:9100\\\\@{SECRET}.example.com/mcp",
            f"http://127.0.0.1:9100/mcp {SECRET}", f"http://%31%32%37.0.0.1/{SECRET}",
            f"http://\u24dbocalhost/{SECRET}", f"ftp://127.0.0.1/{SECRET}", f"http://host/a/../{SECRET}"]
SECTIONS: dict[str, tuple[str, Callable[[Workspace], object]]] = {
    "connections.c.url": ('[connections.c]\nurl = "{url}"\n', lambda ws: Connections(ws)),
    "connections.c.oauth.token_url": ('[connections.c]\nurl = "http://127.0.0.1:9100/mcp"\n'
                                      'oauth = {{ token_url = "{url}", client_id = "c",'
                                      ' client_secret_env = "HOME" }}\n',
                                      lambda ws: Connections(ws)),
    "apps.a.url": ('[apps.a]\nurl = "{url}"\n', lambda ws: Apps(ws)),
    "apps.m.url": ('[apps.m]\nurl = "{url}"\nprotocol = "mcp"\n', lambda ws: Apps(ws)),
    "base_url": ('[models.m]\nprovider = "openai-chat"\nbase_url = "{url}"\nupstream_model = "x"\n',
                 lambda ws: ModelCatalog(ws)),
    "base_url ": ('[models.m]\nprovider = "openai-responses"\nbase_url = "{url}"\nupstream_model = "x"\n',
                  lambda ws: ModelCatalog(ws)),
    "base_url  ": ('[models.m]\nprovider = "anthropic"\nbase_url = "{url}"\nupstream_model = "x"\n'
                   'api_key_env = "HOME"\n', lambda ws: ModelCatalog(ws)),
    "databricks.host": ('[databricks]\nhost = "{url}"\ntoken_env = "HOME"\n',
                        lambda ws: databricks.register(ToolRegistry(ws), ws, None, b"k" * 32)),
}


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("key", list(SECTIONS))
def test_a_workspace_url_with_credentials_or_ambiguities_is_refused(tmp_path: Path, key: str, url: str) -> None:
    template, start = SECTIONS[key]
    workspace = parse_workspace(template.format(url=url.replace("\\", "\\\\")), source="w", base_dir=tmp_path)
    assert isinstance(workspace, Workspace)
    with pytest.raises(ConfigError) as info:
        start(workspace)
    assert key.strip() in str(info.value) and "refused" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("headers", ['{ Host = "x" }', '{ "Transfer-Encoding" = "chunked" }',
                                     '{ "X-Note" = "a\\r\\nInjected: 1" }'])
def test_a_workspace_connections_headers_are_checked(tmp_path: Path, headers: str) -> None:
    workspace = parse_workspace(f'[connections.c]\nurl = "http://127.0.0.1:9100/mcp"\nheaders = {headers}\n',
                                source="w", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"connections\.c\.headers"):
        Connections(workspace)


@pytest.mark.parametrize("pattern", ["127.0.0.1/mcp", "http://a*b.example.com/mcp", "http://u@host/mcp",
                                     "gopher://host/mcp", "http://host:port/mcp"])
def test_a_bad_outbound_pattern_is_a_configuration_error(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"outbound\.allowed_urls"):
        parse_workspace(f'[outbound]\nallowed_urls = ["{pattern}"]\n', source="w", base_dir=tmp_path)


def test_the_workspace_files_own_loopback_urls_stay_allowed(tmp_path: Path) -> None:
    """The operator's URLs are parsed, not matched: loopback is theirs to name."""
    workspace = parse_workspace('[connections.c]\nurl = "HTTP://127.0.0.1:9100/mcp"\n'
                                '[apps.a]\nurl = "http://[::1]:9200/v1"\n', source="w", base_dir=tmp_path)
    connections, apps = Connections(workspace), Apps(workspace)
    assert connections.servers["c"].url == "http://127.0.0.1:9100/mcp"
    assert apps.apps["a"].url == "http://[::1]:9200/v1"
