"""What a running instance holds is released on the way out: all of it, in the reverse of the order it
was built in, and when building fails halfway, exactly the part that had been built."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opensupervisor import runtime
from opensupervisor.errors import ConfigError
from opensupervisor.identity.limits import RateLimiter
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs.durable import ENGINE
from opensupervisor.runs.maintenance import Maintenance
from opensupervisor.runs.service import ResponseService
from opensupervisor.runtime import running
from opensupervisor.settings import Settings
from opensupervisor.store import Store
from opensupervisor.store.usage import Usage
from opensupervisor.tools.apps import Apps
from opensupervisor.tools.genie import GenieSpaces
from opensupervisor.tools.knowledge_assistant import KnowledgeAssistants
from opensupervisor.tools.uc_functions import FunctionCatalog
from opensupervisor.tracing.spans import Tracing
from opensupervisor.tracing.tables import TraceStore
from opensupervisor.workspace import Workspace, load_workspace
from tests import toolkinds
from tests.conftest import SYSTEM_DB, TOKEN, WORKSPACE

# Every release the test workspace's instance makes (it has no Databricks workspace, inference
# tables or Redis), by the class whose method makes it.
RELEASES: list[tuple[type, str]] = [
    (Store, "close"), (ModelCatalog, "aclose"), (GenieSpaces, "aclose"), (KnowledgeAssistants, "aclose"),
    (FunctionCatalog, "aclose"), (Apps, "aclose"), (Usage, "aclose"), (RateLimiter, "aclose"),
    (Tracing, "shutdown"), (TraceStore, "aclose"), (ResponseService, "aclose"), (Maintenance, "stop"),
]
# Everything after the engine lets go of the service: the reverse of the order it was built in.
AFTER_ENGINE = ["TraceStore.aclose", "Tracing.shutdown", "RateLimiter.aclose", "Usage.aclose"]
TOOLS_AND_STORE = ["Apps.aclose", "FunctionCatalog.aclose", "KnowledgeAssistants.aclose", "GenieSpaces.aclose",
                   "ModelCatalog.aclose", "Store.close"]


def _recorded(calls: list[str], label: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` as it is, noting in ``calls`` that it was called."""
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def released(*args: Any, **kwargs: Any) -> Any:
            calls.append(label)
            return await method(*args, **kwargs)

        return released

    @functools.wraps(method)
    def released_now(*args: Any, **kwargs: Any) -> Any:
        calls.append(label)
        return method(*args, **kwargs)

    return released_now


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The releases made during the test, in order; the watcher's end counts as one."""
    calls: list[str] = []
    for cls, name in RELEASES:
        monkeypatch.setattr(cls, name, _recorded(calls, f"{cls.__name__}.{name}", getattr(cls, name)))
    monkeypatch.setattr(ENGINE, "detach", _recorded(calls, "ENGINE.detach", ENGINE.detach))
    watch = runtime._watch_registered

    async def watched(*args: Any) -> None:
        try:
            await watch(*args)
        finally:
            calls.append("watcher ended")

    monkeypatch.setattr(runtime, "_watch_registered", watched)
    return calls


def _settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path}/state.db", config=str(WORKSPACE), admin_token=TOKEN,
                    system_database_url=SYSTEM_DB, data_dir=tmp_path)


def _pending(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks of this loop started since ``before`` and not finished."""
    return {t for t in asyncio.all_tasks() if t not in before and not t.done()}


async def _start(settings: Settings, ws: Workspace) -> None:
    async with running(settings, ws, toolkinds.register):
        raise AssertionError("the instance should not have started")


def test_a_normal_exit_releases_everything_in_the_reverse_of_the_order_it_was_built(
        tmp_path: Path, released: list[str]) -> None:
    async def scenario() -> None:
        before = asyncio.all_tasks()
        async with running(_settings(tmp_path), load_workspace(WORKSPACE), toolkinds.register,
                           admin_token=TOKEN) as rt:
            await asyncio.sleep(0.1)  # the background tasks get going, as in any instance that serves
            assert rt.service in ENGINE.runners
            assert rt.admin_token == TOKEN
            assert any(t.get_coro().__name__ == "watched" for t in _pending(before))
            assert released == []
        assert rt.service not in ENGINE.runners
        assert _pending(before) == set(), "no task outlives the instance"

    asyncio.run(scenario())
    # Background tasks end first; housekeeping and the service stop before the engine lets go of the
    # service; the store, which the others write to while they close, goes last.
    assert released == ["watcher ended", "Maintenance.stop", "ResponseService.aclose", "ENGINE.detach",
                        *AFTER_ENGINE, *TOOLS_AND_STORE]


def test_a_workspace_whose_plugin_cannot_load_releases_the_tools_built_before_it(
        tmp_path: Path, released: list[str]) -> None:
    ws = load_workspace(WORKSPACE).model_copy(update={"plugins": ["tests.no_such_plugin"]})
    attached = list(ENGINE.runners)
    with pytest.raises(ConfigError, match="no_such_plugin"):
        asyncio.run(_start(_settings(tmp_path), ws))
    # Plugins load last among the tools: what came before them is released, nothing after them was built.
    assert released == TOOLS_AND_STORE
    assert ENGINE.runners == attached


def test_a_failure_after_joining_the_engine_detaches_the_service_and_releases_the_rest(
        tmp_path: Path, released: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    async def unreachable(self: Maintenance) -> None:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(Maintenance, "start", unreachable)
    attached = list(ENGINE.runners)
    with pytest.raises(ConnectionError, match="went away"):
        asyncio.run(_start(_settings(tmp_path), load_workspace(WORKSPACE)))
    # Housekeeping never started, so it is not stopped, and no background task was started.
    assert released == ["ResponseService.aclose", "ENGINE.detach", *AFTER_ENGINE, *TOOLS_AND_STORE]
    assert ENGINE.runners == attached
