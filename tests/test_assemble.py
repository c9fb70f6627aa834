"""A run is built in one place: the wrappers of a new and of a resumed run, and the plan's stored form."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from opensupervisor.core.approval import ApprovalSigner
from opensupervisor.core.bounds import Bounded
from opensupervisor.core.contracts import Model, Toolset, WrapperModel, WrapperToolset
from opensupervisor.core.loop import LoopLimits
from opensupervisor.identity import Principal
from opensupervisor.identity.limits import Ticket
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs.assemble import Prepared, Resume, RunDeps, assemble
from opensupervisor.runs.checkpoints import Codec
from opensupervisor.runs.compaction import Compactor
from opensupervisor.runs.conversations import ConversationService
from opensupervisor.runs.durable import DurableCalls, DurableModel, RecordedListing
from opensupervisor.runs.plan import RunPlan, restored, stored_options
from opensupervisor.store import Store
from opensupervisor.store.conversations import Conversations
from opensupervisor.store.response_rows import RunRecord
from opensupervisor.tools.registry import ToolRegistry
from opensupervisor.tracing.spans import DEFAULT_PREFIX, Destination
from opensupervisor.tracing.wrappers import TracedModel, TracedToolset
from opensupervisor.vault import Vault
from opensupervisor.wire.request import parse_create_request
from opensupervisor.wire.response import new_response
from opensupervisor.workspace import load_workspace
from tests import toolkinds
from tests.conftest import MODEL, WORKSPACE

T = TypeVar("T")
RAW = {"model": MODEL, "input": "add 2 and 3", "background": True, "stream": True,
       "tools": [{"type": "test_calculator"}]}
ALICE = Principal(id="alice", name="alice@example.com", kind="user", groups=frozenset({"analysts", "hr"}))


@pytest.fixture
async def deps(tmp_path: Path) -> AsyncIterator[tuple[RunDeps, ToolRegistry, Vault]]:
    ws = load_workspace(WORKSPACE)
    store = Store(f"sqlite:///{tmp_path}/state.db")
    await store.migrate()
    catalog = ModelCatalog(ws)
    registry = ToolRegistry(ws)
    toolkinds.register(registry)
    try:
        conversations = ConversationService(store, Conversations(store, max_hold_s=60), Compactor(Vault.load(tmp_path)))
        deps = RunDeps(catalog, LoopLimits(), ApprovalSigner(b"k" * 32), store, conversations)
        yield deps, registry, Vault.load(tmp_path)
    finally:
        await catalog.aclose()
        await store.close()


def _plan(vault: Vault, raw: dict[str, Any] = RAW, **fields: Any) -> RunPlan:
    return RunPlan(response_id="resp_assemble", request=parse_create_request(raw),
                   sealed_request=vault.seal_request(raw), principal=ALICE,
                   input_items=[{"type": "message", "role": "user", "content": "add 2 and 3"}],
                   **fields)


async def _build(deps: tuple[RunDeps, ToolRegistry, Vault], resume: Resume | None) -> Prepared:
    run_deps, registry, vault = deps
    plan = _plan(vault)
    return await assemble(plan, run_deps, registry.bind(plan.request.tools), prior=_nothing,
                          response=new_response(plan.response_id, plan.request, model=MODEL), durable=resume)


def _chain(outer: Model | Toolset) -> list[type]:
    """The wrapper types from the outside in, ending with the wrapped object's own type."""
    kinds: list[type] = []
    current: Any = outer
    while isinstance(current, WrapperModel | WrapperToolset):
        kinds.append(type(current))
        current = current.inner
    return [*kinds, type(current)]


async def _nothing() -> list[Any]:
    return []


async def _steps(name: str, fn: Callable[[], Awaitable[T]], codec: Codec[T], *, effect: bool = False) -> T:
    return await fn()


@pytest.mark.anyio
async def test_a_new_run_is_traced_and_bounded(deps: tuple[RunDeps, ToolRegistry, Vault]) -> None:
    prepared = await _build(deps, None)
    assert _chain(prepared.run.model)[0] is TracedModel and DurableModel not in _chain(prepared.run.model)
    toolset = prepared.run.toolbox._entries["add"].toolset
    assert _chain(toolset) == [TracedToolset, Bounded, toolkinds.Calculator]
    assert prepared.recorder.hold is None and not prepared.recorder._created


@pytest.mark.anyio
async def test_a_resumed_run_checkpoints_outside_its_spans(deps: tuple[RunDeps, ToolRegistry, Vault]) -> None:
    prepared = await _build(deps, Resume(_steps, last_sequence=7))
    assert _chain(prepared.run.model)[:2] == [TracedModel, DurableModel]
    toolset = prepared.run.toolbox._entries["add"].toolset
    # The call's step records what its span, timeout and cap made; the listing's sits under all of them.
    assert _chain(toolset) == [DurableCalls, TracedToolset, Bounded, RecordedListing, toolkinds.Calculator]
    assert prepared.recorder.resume_after == 7 and prepared.recorder.hold is not None
    assert await prepared.run.toolbox.run(prepared.run.ctx, [("add", '{"a": 2, "b": 3}')]) == ["5"]


def test_a_plan_reads_back_as_it_was_stored(tmp_path: Path) -> None:
    vault = Vault.load(tmp_path)
    raw = dict(RAW, trace_destination={"catalog_name": "main", "schema_name": "traces"})
    plan = _plan(vault, raw, ticket=Ticket(["model:test-model:user:alice"], minute=3), echo=True,
                 traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                 destination=Destination("main", "traces", DEFAULT_PREFIX, None))
    record = RunRecord(response={"id": plan.response_id}, request=plan.sealed_request, owner=ALICE.id, stream=True,
                       options=dict(stored_options(plan)), input_items=plan.input_items)
    back = restored(record, vault)
    assert back.principal == ALICE and back.input_items == plan.input_items
    assert back.request.body == plan.request.body and back.sealed_request == plan.sealed_request
    assert back.echo and back.traceparent == plan.traceparent
    assert back.ticket is not None and back.ticket.buckets == ["model:test-model:user:alice"]
    # Its owner as admitted (None: shared), not the default for a run stored before owners were kept.
    assert back.destination == plan.destination
    assert back.executor is None  # only a foreground response names the process answering it
