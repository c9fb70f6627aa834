"""``app``: an application endpoint as a tool, declared as one of two kinds (``protocol``):

- ``responses``: an agent speaking the Responses protocol (a sub-agent). The question goes to the
  app's ``POST {url}/responses`` and the app's answer text becomes the tool output.
- ``mcp``: an MCP server (the "custom MCP servers on Apps"), at ``{url}/mcp``: its tools join the
  run exactly as a ``uc_connection``'s do (same client).

Either kind follows the app's ``require_approval`` policy, as connections do (default
``background``: in background runs each call waits for the user's approval).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from opensupervisor import outbound
from opensupervisor.core.arguments import text_property
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import ConfigError, ToolError
from opensupervisor.tools.connections import ApprovalPolicy, asking, connection_tools
from opensupervisor.tools.http_bounds import REDIRECTS, ResponseTooLarge, read_bounded
from opensupervisor.tools.mcp_client import McpServer
from opensupervisor.tools.registry import ToolRegistry, config_description, config_name, prefixed_tool_name
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, section_entry

if TYPE_CHECKING:
    import aiohttp

QUESTION_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["question"],
                   "properties": {"question": text_property("What to ask the app")}}


class AppEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str  # responses: the Responses base URL (http://host:port/v1); mcp: the app's base URL
    protocol: Literal["responses", "mcp"] = "responses"
    model: str = "default"  # the `model` the app is sent
    api_key_env: str | None = None
    instructions: str | None = None
    description: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    require_approval: ApprovalPolicy = "background"


def tool_name(app: str) -> str:
    return prefixed_tool_name("app_", app)


class Apps:
    def __init__(self, workspace: Workspace, self_url: str = "") -> None:
        self.apps: dict[str, AppEntry] = {}
        self.mcp: dict[str, McpServer] = {}
        self._keys: dict[str, str] = {}
        for name, raw in workspace.apps.items():
            entry = section_entry(AppEntry, f"apps.{name}", raw)
            if entry.url.startswith("/"):  # an app this server serves (the demo's)
                entry = entry.model_copy(update={"url": self_url + entry.url})
            entry = entry.model_copy(update={"url": _parsed(name, entry.url)})
            if entry.api_key_env:
                key = os.environ.get(entry.api_key_env, "")
                if not key:
                    raise ConfigError(f"apps.{name}: environment variable {entry.api_key_env} is not set",
                                      param="api_key_env")
                self._keys[name] = key
            if entry.protocol == "mcp":
                headers = {"Authorization": f"Bearer {self._keys[name]}"} if name in self._keys else {}
                self.mcp[name] = McpServer(name, f"{entry.url.rstrip('/')}/mcp", headers=headers,
                                           timeout_s=entry.timeout_s, allowed_tools=None)
            self.apps[name] = entry
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, on the loop that uses it
            import aiohttp  # loaded by the first call of an app that is not an MCP server

            self._session = aiohttp.ClientSession()
        return self._session

    def factory(self, spec: ToolSpec, workspace: Workspace) -> Toolset:
        name = config_name(spec, self.apps, "App")
        if name in self.mcp:
            return connection_tools(self.mcp[name], spec.param, self.apps[name].require_approval)
        return asking(AppTool(self, name, config_description(spec)), self.apps[name].require_approval)

    async def ask(self, name: str, question: str) -> str:
        """The app's answer text; a failure of any kind is a ``ToolError`` (never the app's key)."""
        import aiohttp

        entry = self.apps[name]
        body: dict[str, Any] = {"model": entry.model, "input": question, "stream": False}
        if entry.instructions:
            body["instructions"] = entry.instructions
        headers = {"Content-Type": "application/json"}
        if name in self._keys:
            headers["Authorization"] = f"Bearer {self._keys[name]}"
        try:
            async with asyncio.timeout(entry.timeout_s), self.session().post(
                    f"{entry.url.rstrip('/')}/responses", data=orjson.dumps(body), headers=headers,
                    allow_redirects=False) as resp:
                if resp.status in REDIRECTS:  # never followed: it would lead to a URL nobody configured
                    raise ToolError(f"the app '{name}' answered with a redirect (HTTP {resp.status}), which is "
                                    "not followed")
                raw = await read_bounded(resp)
        except TimeoutError as exc:
            raise ToolError(f"the app '{name}' did not answer within {entry.timeout_s:g} seconds") from exc
        except aiohttp.ClientError as exc:
            raise ToolError(f"the app '{name}' is unreachable ({type(exc).__name__})") from exc
        except ResponseTooLarge as exc:
            raise ToolError(f"the app '{name}' answered too much: {exc}") from exc
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ToolError(f"the app '{name}' answered HTTP {resp.status} with a body that is not JSON") from exc
        if resp.status != 200 or not isinstance(answer, dict):
            message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
            raise ToolError(f"the app '{name}' answered HTTP {resp.status}: {message or 'an error'}")
        if answer.get("status") != "completed":
            error = answer.get("error") or {}
            raise ToolError(f"the app '{name}' ended its answer {answer.get('status')}: "
                            f"{error.get('message', 'no reason given')}")
        return _output_text(answer)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class AppTool(Toolset):
    def __init__(self, apps: Apps, name: str, description: str | None) -> None:
        self.apps = apps
        self.name = name
        self.description = description or apps.apps[name].description or f"Asks the {name} app"

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        return [ToolDef(tool_name(self.name), self.description, QUESTION_SCHEMA, server_label=self.name)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return await self.apps.ask(self.name, str(arguments["question"]))


def _parsed(name: str, url: str) -> str:
    """The app's URL as parsed; one with credentials, a backslash or another ambiguity is refused."""
    if url.startswith("/"):  # this server's own path, in a process that serves none (the CLI): never called
        return url
    try:
        return outbound.parse_url(url).geturl()
    except outbound.UrlRefused as exc:  # never the URL itself: it may hold credentials
        raise ConfigError(f"apps.{name}.url: the URL is refused: {exc}", param="url", code="url_not_allowed") from exc


def _output_text(response: dict[str, Any]) -> str:
    texts = [part.get("text", "") for item in response.get("output", []) if item.get("type") == "message"
             for part in item.get("content", []) if part.get("type") == "output_text"]
    return "".join(texts) or "(the app answered with no text)"


def register(registry: ToolRegistry, workspace: Workspace, self_url: str = "") -> Apps:
    """Add the ``app`` kind; returns the apps (the caller closes them)."""
    apps = Apps(workspace, self_url)
    registry.register("app", apps.factory)
    # The Supervisor API's older dialect, {"type": "agent_endpoint", "agent_endpoint": {"name",
    # "description", "endpoint_name"}}: an agent serving endpoint, which an app here stands for.
    registry.register("agent_endpoint", apps.factory)
    return apps
