"""Responses as a service: create (JSON, stream, background), retrieve, cancel, delete, input items.

Every mode drains the one loop (``core.loop.run_loop``) through the recorder; only who reads the
events differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import anyio

from opensupervisor import metrics
from opensupervisor.core import approval
from opensupervisor.core.approval import ApprovalSigner
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import Model
from opensupervisor.core.events import TERMINAL_EVENTS, Emitter, Event
from opensupervisor.core.loop import LoopLimits, Run, opening, run_loop, settle
from opensupervisor.core.toolbox import ToolBox
from opensupervisor.core.truncation import ContextOverflow, fit
from opensupervisor.core.turn import copy_item
from opensupervisor.errors import APIError, InvalidRequest, NotFound, QueueFull, RunCancelled
from opensupervisor.identity import ADMIN, Principal
from opensupervisor.identity.grants import Access
from opensupervisor.identity.limits import Ticket
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs import approvals
from opensupervisor.runs.accounting import RATE_BUCKETS, Accounting
from opensupervisor.runs.background import BackgroundRuns
from opensupervisor.runs.durable import DurableEngine, DurableModel, dbos_steps
from opensupervisor.runs.gate import Gate
from opensupervisor.runs.live import LiveRun
from opensupervisor.runs.recorder import Recorder
from opensupervisor.runs.traces import DESTINATION as TRACE_DESTINATION
from opensupervisor.runs.traces import RunTraces
from opensupervisor.store import Store
from opensupervisor.store.approvals import DEFAULT_LIFETIME_S, IssuedApprovals
from opensupervisor.store.executors import EXECUTOR_OPTION
from opensupervisor.store.store import RunRecord
from opensupervisor.tools.registry import ToolRegistry
from opensupervisor.tracing.spans import DEFAULT_PREFIX, Destination, Tracing
from opensupervisor.tracing.tables import TraceStore
from opensupervisor.tracing.wrappers import TracedModel
from opensupervisor.vault import Vault
from opensupervisor.wire.ids import PREFIXES as ID_PREFIXES
from opensupervisor.wire.ids import new_id
from opensupervisor.wire.items import Item, check_call_pairs
from opensupervisor.wire.request import CreateResponseRequest, ParsedRequest, parse_create_request
from opensupervisor.wire.response import TERMINAL_STATUSES, Response, new_response

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackgroundLimits:
    """How background runs are bounded (the workspace file's ``[background]``)."""

    max_queued: int = 1000
    max_run_time_s: float = 1800.0
    # Runs at once in this process; 0 = this process only accepts runs, workers run them.
    worker_concurrency: int = 16


@dataclass(slots=True)
class Prepared:
    run: Run
    recorder: Recorder
    # The ending recorded for a run abandoned midway, when it could no longer be yielded.
    closing: list[Event] = field(default_factory=list)
    # The live log of a background run, which also says why the run is being stopped.
    live: LiveRun | None = None
    # The client's W3C trace context: the run's spans join its trace.
    traceparent: str | None = None

    @property
    def response(self) -> Response:
        return self.run.emitter.response


class ResponseService:
    def __init__(self, store: Store, catalog: ModelCatalog, tools: ToolRegistry, limits: LoopLimits,
                 engine: DurableEngine, signer: ApprovalSigner, vault: Vault,
                 background_limits: BackgroundLimits | None = None, *, tracing: Tracing | None = None,
                 trace_store: TraceStore | None = None, access: Access | None = None,
                 accounting: Accounting | None = None, space_model: Callable[[str], str | None] | None = None,
                 approval_lifetime_s: float = DEFAULT_LIFETIME_S) -> None:
        self.store = store
        self.signer = signer
        self.approvals = IssuedApprovals(store, approval_lifetime_s)
        self.vault = vault
        self.traces = RunTraces(tracing or Tracing(), trace_store)
        self.access = access or Access({})
        self.accounting = accounting or Accounting()
        self.gate = Gate(self.access, self.accounting, *([space_model] if space_model is not None else []))
        self.catalog = catalog
        self.tools = tools
        self.limits = limits
        self.engine = engine
        self.background_limits = background_limits or BackgroundLimits()
        self.background = BackgroundRuns(store, engine.state)

    # -- create ----------------------------------------------------------------------------------

    async def prepare(self, parsed: ParsedRequest, principal: Principal, raw: dict[str, Any], *,
                      echo_history: bool = False, traceparent: str | None = None) -> Prepared:
        """Resolve everything a run needs; any client mistake is raised here, before the loop starts.

        ``echo_history``: start a background response's output with the history items of its input
        (assistant messages, function calls and outputs, in input order), as the Databricks
        Supervisor API does; published clients skip that many items before reading new ones.
        """
        body = parsed.body
        catalog_model = self.catalog.get(body.model)
        _check_output_tokens(catalog_model, body)
        self.gate.check(principal, body.model, parsed.tools)
        bound = self.tools.bind(parsed.tools)
        history = await self._prior_history(body.previous_response_id, principal)
        input_items = [await self._resolve(item, i, principal) for i, item in enumerate(parsed.input_items)]
        items = history + input_items
        check_call_pairs(items, len(history))
        destination = await self.traces.admit(principal, body)
        # A request refused from here on gives its call back (admission releases it).
        async with self.accounting.admission(principal, body.model) as ticket:
            response_id = new_id("response")
            ctx = RunContext(response_id=response_id, principal=principal, request=parsed, history=items)
            if destination is not None:
                ctx.state[TRACE_DESTINATION] = destination
            if ticket is not None:
                ctx.state[RATE_BUCKETS] = ticket
            model = TracedModel(catalog_model, ctx)
            toolbox = await ToolBox.build(ctx, bound, timeout_s=self.limits.tool_timeout_s,
                                          max_output_chars=self.limits.max_tool_output_chars,
                                          max_arguments_chars=self.limits.max_tool_arguments_chars)
            _check_context(model, body, items)
            response = new_response(response_id, parsed, model=body.model)
            signer = self.signer.bound(principal.id)
            run = Run(ctx=ctx, model=model, toolbox=toolbox, history=items,
                      emitter=Emitter(response), limits=_model_limits(catalog_model, self.limits), signer=signer,
                      answers=approval.answers(items, len(history), signer, toolbox.lookup))
            if echo_history and body.background:
                run.echo = _echo(input_items)
            recorder = Recorder(self.store if body.store else None, response_id=response_id, owner=principal.id,
                                request=self.vault.seal_request(raw), stream=body.stream,
                                background=body.background, input_items=input_items,
                                options=self._options(run, traceparent))
            await approvals.use(run, self.approvals)  # last: a request refused before this uses none
            return Prepared(run, recorder, traceparent=traceparent)

    def _options(self, run: Run, traceparent: str | None) -> dict[str, Any]:
        options = _options(run, traceparent)
        if not run.ctx.request.body.background:  # which process answers it, should that one die
            options[EXECUTOR_OPTION] = self.engine.executor_id
        return options

    async def _prior_history(self, previous_id: str | None, principal: Principal) -> list[Item]:
        if previous_id is None:
            return []
        stored = await self.store.meta(previous_id, _owner(principal))
        if stored is None:
            raise InvalidRequest(f"Previous response with id '{previous_id}' not found.",
                                 param="previous_response_id", code="previous_response_not_found")
        if stored.response["status"] not in TERMINAL_STATUSES:
            raise InvalidRequest(f"Previous response with id '{previous_id}' is still {stored.response['status']}.",
                                 param="previous_response_id", code="previous_response_in_progress")
        return await self.store.history(previous_id, _owner(principal)) or []

    async def _resolve(self, item: Item, index: int, principal: Principal) -> Item:
        if item["type"] == "item_reference":
            found = await self.store.find_item(item["id"], _owner(principal))
            if found is None:
                raise InvalidRequest(f"Item with id '{item['id']}' not found.", param=f"input[{index}].id",
                                     code="item_not_found")
            return found
        if "id" not in item and item["type"] in ID_PREFIXES:  # ids let input_items paginate and items be referenced
            return {"id": new_id(item["type"]), **item}
        return item

    async def events(self, prepared: Prepared) -> AsyncGenerator[Event]:
        """The run's events, recorded as they pass.

        A run that ends early is recorded as such: ``cancelled`` when it was cancelled (here or in
        another process) or abandoned by its reader, ``failed`` when recording it failed.
        """
        recorder = prepared.recorder
        started, began = time.perf_counter(), time.time()
        run = prepared.run
        run.ctx.trace = self.traces.start(run, prepared.traceparent)
        stream = self.traces.events(run, run_loop(run))
        if approvals.asks(run):
            stream = approvals.issuing(run, self.approvals, stream)
        try:
            async for event in recorder.record(stream):
                yield event
        except RunCancelled as exc:
            log.info("response %s was cancelled while running", prepared.response["id"])
            for event in await self._record_end(prepared, "cancelled", exc.rewind_to):
                yield event
        except Exception:  # the loop never raises; this is the store failing under the recorder
            log.exception("recording response %s failed", prepared.response["id"])
            if not recorder.finished:
                for event in await self._record_end(prepared, "failed"):
                    yield event
        finally:
            with anyio.CancelScope(shield=True):
                await prepared.run.ctx.close()
            self.traces.abandon(prepared.run)
            live = prepared.live
            if not recorder.finished and not (live is not None and live.shutting_down):
                reason = live.stop_reason if live is not None else None
                with anyio.CancelScope(shield=True):
                    prepared.closing = await self._record_end(prepared, "incomplete" if reason else "cancelled",
                                                              reason=reason)
            body = prepared.run.ctx.request.body
            mode = "background" if body.background else "stream" if body.stream else "json"
            seconds = time.perf_counter() - started
            metrics.record_response(prepared.response, mode, seconds)
            if not (live is not None and live.shutting_down):  # else the process that resumes it records it
                self.accounting.finished(prepared.run, recorder.request, mode, began, seconds)

    async def _record_end(self, prepared: Prepared, status: str, rewind_to: int | None = None, *,
                          reason: str | None = None) -> list[Event]:
        """Close the output and write the ending of a run that stops early."""
        run = prepared.run
        em = run.emitter
        prepared.recorder.guard = False
        if rewind_to is not None:
            em.seq = rewind_to  # that terminal event was neither written nor shown to anyone
        if status == "failed":
            message = "The server could not record this response."
            ending = [*settle(run, "the response failed"), em.error_event("server_error", message),
                      em.finish("failed", error={"code": "server_error", "message": message})]
        elif status == "incomplete":
            ending = [*settle(run, f"the response ended early ({reason})"), em.finish("incomplete", reason=reason)]
        else:
            ending = [*settle(run, "the response was cancelled"), em.finish("cancelled")]
        prepared.recorder.finished = True  # there is an ending now, even if writing it fails below
        try:
            for event in ending:
                await prepared.recorder.add(event)
        except Exception:  # nothing more can be done for this response; the server goes on
            log.exception("could not record how response %s ended", em.response["id"])
        return ending

    async def run_to_end(self, prepared: Prepared) -> Response:
        final: Response | None = None
        async for event in self.events(prepared):
            if event.type in TERMINAL_EVENTS:
                final = event.data["response"]
        assert final is not None
        return final

    async def start_background(self, prepared: Prepared) -> tuple[Response, AsyncGenerator[Event]]:
        """Record the response as queued and start its durable run: here when this process has room
        (no queue wait, and its creator streams it token by token), else on the queue for any worker.

        Returns the queued response and a follower of the run's events.
        """
        limits = self.background_limits
        if await self.store.count_queued() >= limits.max_queued:
            await self.accounting.release(prepared.run)
            await self.approvals.release(prepared.response["id"])  # it never ran: its answers stand
            raise QueueFull(f"Too many background responses are queued ({limits.max_queued}); retry later.")
        response_id = prepared.response["id"]
        here = len(self.background.live) < limits.worker_concurrency
        # The run's first events, replayed by its workflow. A run that starts here is in progress
        # from the moment it is stored; a queued one when a worker picks it up.
        first = opening(prepared.run.emitter) if here else [prepared.run.emitter.lifecycle("response.created")]
        await prepared.recorder.open(first)
        if here:
            self.background.adopt(response_id)
        try:
            await self.engine.start(response_id, here=here)
        except Exception:
            self.background.live.pop(response_id, None)
            raise
        return first[0].data["response"], self.background.follow(response_id, -1)

    async def run_durable(self, response_id: str) -> bool:
        """Run (or resume) a stored background response to its end; the body of its workflow.

        False when the response is not in this app's store.
        """
        record = await self.store.load_run(response_id)
        if record is None:
            return False
        if record.response["status"] not in ("queued", "in_progress"):
            return True  # it ended (or was cancelled while queued); nothing left to do
        if record.last_sequence < 1:
            if not await self._pick_up(record):
                return True  # cancelled or deleted just now
            record = record._replace(last_sequence=1)
        try:
            prepared = await self._restore(record)
        except APIError as exc:  # the workspace changed under it: a model or tool it names is gone
            await self.store.fail([response_id], f"The response could not be resumed: {exc.message}")
            return True
        live = prepared.live = self.background.adopt(response_id)
        remaining = record.response["created_at"] + self.background_limits.max_run_time_s - time.time()
        timer = asyncio.get_running_loop().call_later(max(remaining, 0), self._expire, live)
        try:
            await self.background.drive(live, self.events(prepared), prepared.recorder, lambda: prepared.closing)
        finally:
            timer.cancel()
        return True

    async def _pick_up(self, record: RunRecord) -> bool:
        """Record ``in_progress`` before restoring the run: pollers see the pickup at once. The run
        replays the same event (same response, same sequence number) and skips writing it."""
        in_progress = opening(Emitter(_as_created(record.response)))[1]
        return await self.store.append(record.response["id"], output={}, new_events=[in_progress],
                                       response=in_progress.data["response"], guard=True)

    def _expire(self, live: LiveRun) -> None:
        if not live.done:
            live.stop_reason = "max_run_time"
            self.background.cancel(live)

    async def _restore(self, record: RunRecord) -> Prepared:
        """Rebuild a stored response's run inside its workflow. What may differ from the first time
        (the history of an earlier response, each tool listing, each model and tool call) is a step."""
        parsed = parse_create_request(self.vault.open_request(record.request))
        body = parsed.body
        response_id = record.response["id"]
        principal = _restored_principal(record.owner, record.options)
        ctx = RunContext(response_id=response_id, principal=principal, request=parsed)
        _restore_destination(ctx, record.options)
        if record.options.get(RATE_BUCKETS):
            ctx.state[RATE_BUCKETS] = Ticket(list(record.options[RATE_BUCKETS]), minute=0)
        catalog_model = self.catalog.get(body.model)
        durable = DurableModel(catalog_model, dbos_steps)
        model = TracedModel(durable, ctx)
        toolbox = await ToolBox.build(ctx, self.tools.bind(parsed.tools), timeout_s=self.limits.tool_timeout_s,
                                      steps=dbos_steps, max_output_chars=self.limits.max_tool_output_chars,
                                      max_arguments_chars=self.limits.max_tool_arguments_chars)

        async def history() -> list[Item]:
            return await self._prior_history(body.previous_response_id, principal)

        prior = await dbos_steps("history", history) if body.previous_response_id else []
        items = prior + record.input_items
        ctx.history = items
        signer = self.signer.bound(principal.id)
        # The request that created the response recorded its answers as used by it. Not again here:
        # a run resumed late could find them past their lifetime, and be refused its own approval.
        run = Run(ctx=ctx, model=model, toolbox=toolbox, history=items,
                  emitter=Emitter(_as_created(record.response)), limits=_model_limits(catalog_model, self.limits),
                  signer=signer,
                  answers=approval.answers(items, len(prior), signer, toolbox.lookup))
        if record.options.get("echo_history"):
            run.echo = _echo(record.input_items)
        recorder = Recorder(self.store, response_id=response_id, owner=record.owner, request=record.request,
                            stream=record.stream, background=True, input_items=record.input_items, created=True,
                            resume_after=record.last_sequence, hold=durable.holding)
        return Prepared(run, recorder, traceparent=record.options.get("traceparent"))

    async def resume(self, response_id: str, principal: Principal, after: int) -> AsyncGenerator[Event]:
        """Events of a background+stream response after ``after``, then live ones until it ends."""
        stored = await self.store.meta(response_id, _owner(principal))
        if stored is None:
            raise _not_found(response_id)
        response = stored.response
        if not response["background"]:
            raise InvalidRequest(
                "This response cannot be streamed because it was not created with background=true.", param="stream")
        if not stored.stream:
            raise InvalidRequest(
                "This response cannot be streamed because it was not created with stream=true.", param="stream")
        live = self.background.live.get(response_id)
        if live is not None:
            last = live.last_sequence
        else:
            last = await self.store.last_sequence(response_id)
        if after > last and (live is None or live.done) and response["status"] in TERMINAL_STATUSES:
            raise InvalidRequest(f"starting_after={after} is past the end of the event log (last is {last}).",
                                 param="starting_after")
        return self.background.follow(response_id, after)

    # -- stored responses ------------------------------------------------------------------------

    async def get(self, response_id: str, principal: Principal) -> Response:
        response = await self.store.get(response_id, _owner(principal))
        if response is None:
            raise _not_found(response_id)
        return response

    async def cancel(self, response_id: str, principal: Principal) -> Response:
        stored = await self.store.meta(response_id, _owner(principal))
        if stored is None:
            raise _not_found(response_id)
        if not stored.response["background"]:
            raise InvalidRequest("Cannot cancel a synchronous response.", param="response_id")
        live = self.background.live.get(response_id)
        if live is not None and live.task is not None:
            self.background.cancel(live)
            await self.background.wait(live)
        elif await self.store.cancel(response_id, _owner(principal)):
            await self.engine.cancel(response_id)  # a queued run never starts; a running one stops
        else:
            _refuse_cancel(await self.get(response_id, principal))
        response = await self.get(response_id, principal)
        if response["status"] != "cancelled":
            _refuse_cancel(response)  # it finished before the cancel reached it
        return response

    async def delete(self, response_id: str, principal: Principal) -> dict[str, Any]:
        stored = await self.store.meta(response_id, _owner(principal))
        if stored is not None and self.background.running(stored):
            raise InvalidRequest("Cannot delete an in-flight response.", param="response_id")
        if not await self.store.delete(response_id, _owner(principal)):
            raise _not_found(response_id)
        await self.approvals.forget(response_id)  # its unanswered approval requests go with it
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
        await self.background.aclose()


def _check_context(model: Model, body: CreateResponseRequest, items: list[Item]) -> None:
    """With ``truncation: disabled`` an input that cannot fit is the client's mistake: a 400 up front."""
    try:
        fit(body.instructions, items, model.context_window, auto=body.truncation == "auto",
            reserve=body.max_output_tokens or 0)
    except ContextOverflow as exc:
        raise InvalidRequest(str(exc), param="input", code="context_length_exceeded") from exc


def _check_output_tokens(model: Model, body: CreateResponseRequest) -> None:
    cap, asked = model.max_output_tokens, body.max_output_tokens
    if cap is not None and asked is not None and asked > cap:
        raise InvalidRequest(f"max_output_tokens ({asked}) is above the most model '{body.model}' allows ({cap}).",
                             param="max_output_tokens", code="invalid_value")


def _model_limits(model: Model, limits: LoopLimits) -> LoopLimits:
    """The loop's limits for a run of ``model``: its own output caps over the workspace's."""
    return replace(limits, max_output_chars=model.max_output_chars or limits.max_output_chars,
                   max_output_tokens=model.max_output_tokens)


def _as_created(response: Response) -> Response:
    """A stored background response as it was created (only its status moved since, until it ends):
    what its run replays from, so that the replayed events equal the ones already recorded."""
    return dict(response, status="queued", output=[])


def _echo(input_items: list[Item]) -> list[Item]:
    """The history items of an input, as a Databricks-path background response repeats them. Each
    keeps its input id, which is how the stored history tells them apart from new output."""
    return [copy_item(item, status="completed") for item in input_items if _is_history(item)]


def _options(run: Run, traceparent: str | None) -> dict[str, Any]:
    """What a stored run needs to be restored as it was started: who asked, in which groups (tools run
    as the caller), the rate-limit buckets its tokens count in, its echoed history, its trace."""
    principal = run.ctx.principal
    options: dict[str, Any] = {"principal": {"name": principal.name, "kind": principal.kind,
                                             "groups": sorted(principal.groups)}}
    if run.echo:
        options["echo_history"] = True
    if traceparent:
        options["traceparent"] = traceparent
    if run.ctx.state.get(RATE_BUCKETS):
        options[RATE_BUCKETS] = run.ctx.state[RATE_BUCKETS].buckets
    destination = run.ctx.state.get(TRACE_DESTINATION)
    if isinstance(destination, Destination):
        options["trace_owner"] = destination.owner
    return options


def _restore_destination(ctx: RunContext, options: dict[str, Any]) -> None:
    """The destination as it was admitted (a run stored before owners were kept: its owner's)."""
    dest = ctx.request.body.trace_destination
    if dest is None:
        return
    principal = ctx.principal
    owner = options.get("trace_owner", None if principal.is_admin else principal.id)
    ctx.state[TRACE_DESTINATION] = Destination(dest.catalog_name, dest.schema_name,
                                               dest.table_prefix or DEFAULT_PREFIX, owner)


def _restored_principal(owner: str, options: dict[str, Any]) -> Principal:
    if owner == ADMIN.id:
        return ADMIN
    saved = options.get("principal") or {}
    kind: Literal["user", "service_principal"] = \
        "service_principal" if saved.get("kind") == "service_principal" else "user"
    return Principal(id=owner, name=saved.get("name", owner), kind=kind, groups=frozenset(saved.get("groups", ())))


def _is_history(item: Item) -> bool:
    kind = item["type"]
    return kind in ("function_call", "function_call_output") or (kind == "message" and item["role"] == "assistant")




def _refuse_cancel(response: Response) -> None:
    """OpenAI's answers to cancelling a response that is not running (a cancelled one is fine)."""
    status = response["status"]
    if status in ("completed", "failed"):
        raise InvalidRequest(f"Cannot cancel a {status} response.", param="response_id")
    if status != "cancelled":
        raise InvalidRequest("Cannot cancel a response in terminal state.", param="response_id")


def _owner(principal: Principal) -> str | None:
    """Admins see every response; everyone else only their own."""
    return None if principal.is_admin else principal.id


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")
