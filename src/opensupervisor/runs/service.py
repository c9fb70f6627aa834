"""Responses as a service: create (JSON, stream, background), retrieve, cancel, delete, input items.

Every mode drains the one loop (``core.loop.run_loop``) through the recorder; only who reads the
events differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import Model
from opensupervisor.core.events import TERMINAL_EVENTS, Emitter, Event
from opensupervisor.core.loop import LoopLimits, Run, run_loop, settle
from opensupervisor.core.toolbox import ToolBox
from opensupervisor.core.truncation import ContextOverflow, fit
from opensupervisor.core.turn import copy_item
from opensupervisor.errors import InvalidRequest, NotFound, RunCancelled
from opensupervisor.identity import Principal
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs import metrics
from opensupervisor.runs.live import LiveRun
from opensupervisor.runs.recorder import Recorder
from opensupervisor.store import Store
from opensupervisor.tools.registry import ToolRegistry
from opensupervisor.wire.ids import new_id
from opensupervisor.wire.items import Item, check_call_pairs
from opensupervisor.wire.request import CreateResponseRequest, ParsedRequest
from opensupervisor.wire.response import TERMINAL_STATUSES, Response, new_response

log = logging.getLogger(__name__)
# How often a follower of a run in another process looks for new events in the log.
STORED_FOLLOW_INTERVAL_S = 0.05
# How long a follower waits for a terminal event once the log goes quiet, before checking the status.
STORED_FOLLOW_GRACE_S = 2.0
_ITEM_ID_KIND = {"message": "message", "function_call": "function_call",
                 "function_call_output": "function_call_output", "reasoning": "reasoning",
                 "mcp_approval_response": "mcp_approval_response"}


@dataclass(slots=True)
class Prepared:
    run: Run
    recorder: Recorder
    # The closing events written when the run was abandoned or cancelled midway.
    cancelled: list[Event] = field(default_factory=list)

    @property
    def response(self) -> Response:
        return self.run.emitter.response


class ResponseService:
    def __init__(self, store: Store, catalog: ModelCatalog, tools: ToolRegistry, limits: LoopLimits) -> None:
        self.store = store
        self.catalog = catalog
        self.tools = tools
        self.limits = limits
        self.live: dict[str, LiveRun] = {}

    # -- create ----------------------------------------------------------------------------------

    async def prepare(self, parsed: ParsedRequest, principal: Principal, raw: dict[str, Any], *,
                      echo_history: bool = False) -> Prepared:
        """Resolve everything a run needs; any client mistake is raised here, before the loop starts.

        ``echo_history``: start a background response's output with the history items of its input
        (assistant messages, function calls and outputs, in input order), as the Databricks
        Supervisor API does; published clients skip that many items before reading new ones.
        """
        body = parsed.body
        model = self.catalog.get(body.model)
        bound = self.tools.bind(parsed.tools)
        history = await self._prior_history(body.previous_response_id, principal)
        input_items = [await self._resolve(item, i, principal) for i, item in enumerate(parsed.input_items)]
        check_call_pairs(history + input_items, len(history))
        response_id = new_id("response")
        ctx = RunContext(response_id=response_id, principal=principal, request=parsed)
        toolbox = await ToolBox.build(ctx, bound, timeout_s=self.limits.tool_timeout_s)
        _check_context(model, body, history + input_items)
        response = new_response(response_id, parsed, model=body.model)
        run = Run(ctx=ctx, model=model, toolbox=toolbox, history=history + input_items,
                  emitter=Emitter(response), limits=self.limits)
        if echo_history and body.background:
            # The echo keeps each input item's id, which is how the stored history skips it.
            run.echo = [copy_item(item, status="completed") for item in input_items if _is_history(item)]
        recorder = Recorder(self.store if body.store else None, response_id=response_id, owner=principal.id,
                            request=raw, stream=body.stream, background=body.background, input_items=input_items)
        return Prepared(run, recorder)

    async def _prior_history(self, previous_id: str | None, principal: Principal) -> list[Item]:
        if previous_id is None:
            return []
        meta = await self.store.meta(previous_id, _owner(principal))
        if meta is None:
            raise InvalidRequest(f"Previous response with id '{previous_id}' not found.",
                                 param="previous_response_id", code="previous_response_not_found")
        if meta[0]["status"] not in TERMINAL_STATUSES:
            raise InvalidRequest(f"Previous response with id '{previous_id}' is still {meta[0]['status']}.",
                                 param="previous_response_id", code="previous_response_in_progress")
        return await self.store.history(previous_id, _owner(principal)) or []

    async def _resolve(self, item: Item, index: int, principal: Principal) -> Item:
        if item["type"] == "item_reference":
            found = await self.store.find_item(item["id"], _owner(principal))
            if found is None:
                raise InvalidRequest(f"Item with id '{item['id']}' not found.", param=f"input[{index}].id",
                                     code="item_not_found")
            return found
        if "id" not in item and item["type"] in _ITEM_ID_KIND:
            return {"id": new_id(_ITEM_ID_KIND[item["type"]]), **item}
        return item

    async def events(self, prepared: Prepared) -> AsyncGenerator[Event]:
        """The run's events, recorded as they pass. A run abandoned midway is recorded as cancelled."""
        recorder = prepared.recorder
        started = time.perf_counter()
        rewind_to: int | None = None
        try:
            async for event in recorder.record(run_loop(prepared.run)):
                yield event
        except RunCancelled as exc:
            log.info("response %s was cancelled while running", prepared.response["id"])
            rewind_to = exc.rewind_to
        finally:
            if not recorder.finished:
                with anyio.CancelScope(shield=True):
                    await self._record_cancel(prepared, rewind_to)
            body = prepared.run.ctx.request.body
            mode = "background" if body.background else "stream" if body.stream else "json"
            metrics.record_response(prepared.response, mode, time.perf_counter() - started)

    async def _record_cancel(self, prepared: Prepared, rewind_to: int | None) -> None:
        em = prepared.run.emitter
        prepared.recorder.guard = False
        if rewind_to is not None:
            em.seq = rewind_to  # that terminal event was neither written nor shown to anyone
        prepared.cancelled = [*settle(prepared.run, "the response was cancelled"), em.finish("cancelled")]
        for event in prepared.cancelled:
            await prepared.recorder.add(event)

    async def run_to_end(self, prepared: Prepared) -> Response:
        final: Response | None = None
        async for event in self.events(prepared):
            if event.type in TERMINAL_EVENTS:
                final = event.data["response"]
        assert final is not None
        return final

    async def start_background(self, prepared: Prepared) -> LiveRun:
        """Record the queued response, then run the rest in a task; followers read the live log."""
        live = LiveRun(prepared.response["id"])
        events = self.events(prepared)
        await live.publish(await anext(events))  # response.created, written before we answer
        self.live[live.response_id] = live
        metrics.BACKGROUND.inc()
        live.task = asyncio.create_task(self._drive(live, prepared, events))
        return live

    async def _drive(self, live: LiveRun, prepared: Prepared, events: AsyncGenerator[Event]) -> None:
        try:
            async for event in events:
                await live.publish(event)
        except asyncio.CancelledError:
            log.info("background response %s cancelled", live.response_id)
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()  # runs the generator's cleanup, which records a cancellation
                for event in prepared.cancelled:
                    await live.publish(event)
                await live.close()
            self.live.pop(live.response_id, None)
            metrics.BACKGROUND.dec()

    async def resume(self, response_id: str, principal: Principal, after: int) -> AsyncIterator[Event]:
        """Events of a background+stream response after ``after``, then live ones until it ends.

        A run going on in this process is followed in memory; one running elsewhere is followed
        through its stored event log.
        """
        meta = await self.store.meta(response_id, _owner(principal))
        if meta is None:
            raise _not_found(response_id)
        response, streamed = meta
        if not response["background"]:
            raise InvalidRequest(
                "This response cannot be streamed because it was not created with background=true.", param="stream")
        if not streamed:
            raise InvalidRequest(
                "This response cannot be streamed because it was not created with stream=true.", param="stream")
        live = self.live.get(response_id)
        if live is not None:
            last = live.events[-1].sequence_number
        else:
            stored = await self.store.events_after(response_id, -1)
            last = stored[-1].sequence_number if stored else -1
        if after > last and (live is None or live.done) and response["status"] in TERMINAL_STATUSES:
            raise InvalidRequest(f"starting_after={after} is past the end of the event log (last is {last}).",
                                 param="starting_after")
        return live.follow(after) if live is not None else self._follow_stored(response_id, after)

    async def _follow_stored(self, response_id: str, after: int) -> AsyncGenerator[Event]:
        """Poll the event log of a run in another process until its terminal event.

        Ends as well when the response is deleted, or is terminal in the store with no terminal event
        coming (a run its process never finished): a follower never hangs on a run nobody executes.
        """
        quiet_since = time.monotonic()
        while True:
            events = await self.store.events_after(response_id, after)
            for event in events:
                after = event.sequence_number
                yield event
                if event.type in TERMINAL_EVENTS:
                    return
            if events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > STORED_FOLLOW_GRACE_S:
                meta = await self.store.meta(response_id, None)
                if meta is None or meta[0]["status"] in TERMINAL_STATUSES:
                    return
                quiet_since = time.monotonic()
            await asyncio.sleep(STORED_FOLLOW_INTERVAL_S)

    # -- stored responses ------------------------------------------------------------------------

    async def get(self, response_id: str, principal: Principal) -> Response:
        response = await self.store.get(response_id, _owner(principal))
        if response is None:
            raise _not_found(response_id)
        return response

    async def cancel(self, response_id: str, principal: Principal) -> Response:
        meta = await self.store.meta(response_id, _owner(principal))
        if meta is None:
            raise _not_found(response_id)
        response = meta[0]
        if not response["background"]:
            raise InvalidRequest("Cannot cancel a synchronous response.", param="response_id")
        status = response["status"]
        if status in ("completed", "failed"):
            raise InvalidRequest(f"Cannot cancel a {status} response.", param="response_id")
        if status == "incomplete":
            raise InvalidRequest("Cannot cancel a response in terminal state.", param="response_id")
        live = self.live.get(response_id)
        if live is not None and live.task is not None:
            if not live.cancel_requested:  # one cancellation per run; later callers wait for the same end
                live.cancel_requested = True
                live.task.cancel()
            await asyncio.gather(asyncio.shield(live.task), return_exceptions=True)
        elif status != "cancelled":
            response["status"] = "cancelled"
            await self.store.set_status(response)
        return await self.get(response_id, principal)

    async def delete(self, response_id: str, principal: Principal) -> dict[str, Any]:
        if response_id in self.live:
            raise InvalidRequest("Cannot delete an in-flight response.", param="response_id")
        if not await self.store.delete(response_id, _owner(principal)):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(self, response_id: str, principal: Principal, *, limit: int, order: str,
                          after: str | None) -> dict[str, Any]:
        found = await self.store.input_items(response_id, _owner(principal))
        if found is None:
            raise _not_found(response_id)
        data = found if order == "asc" else list(reversed(found))
        if after is not None:
            ids = [i.get("id") for i in data]
            if after not in ids:
                raise InvalidRequest(f"Item with id '{after}' is not an input item of this response.",
                                     param="after", code="invalid_value")
            data = data[ids.index(after) + 1:]
        page = data[:limit]
        return {"object": "list", "data": page, "first_id": page[0].get("id") if page else None,
                "last_id": page[-1].get("id") if page else None, "has_more": len(data) > limit}

    async def aclose(self) -> None:
        for live in list(self.live.values()):
            if live.task is not None:
                live.task.cancel()
                await asyncio.gather(live.task, return_exceptions=True)


def _check_context(model: Model, body: CreateResponseRequest, items: list[Item]) -> None:
    """With ``truncation: disabled`` an input that cannot fit is the client's mistake: a 400 up front."""
    try:
        fit(body.instructions, items, model.context_window, auto=body.truncation == "auto",
            reserve=body.max_output_tokens or 0)
    except ContextOverflow as exc:
        raise InvalidRequest(str(exc), param="input", code="context_length_exceeded") from exc


def _is_history(item: Item) -> bool:
    kind = item["type"]
    return kind in ("function_call", "function_call_output") or (kind == "message" and item["role"] == "assistant")




def _owner(principal: Principal) -> str | None:
    """Admins see every response; everyone else only their own."""
    return None if principal.is_admin else principal.id


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")
