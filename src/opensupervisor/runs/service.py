"""Responses as a service: create (JSON, stream, background), retrieve, cancel, delete, input items.

Every mode drains the one loop (``core.loop.run_loop``) through the recorder; only who reads the
events differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from opensupervisor.core.contracts import Model
from opensupervisor.core.events import TERMINAL_EVENTS, Emitter, Event
from opensupervisor.core.loop import opening
from opensupervisor.core.toolbox import BoundToolset
from opensupervisor.core.truncation import ContextOverflow, fit
from opensupervisor.errors import APIError, InvalidRequest, ModelError, RunSuperseded, UpstreamUnavailable
from opensupervisor.identity import Principal
from opensupervisor.runs import approvals
from opensupervisor.runs.assemble import Prepared, Resume, RunDeps, assemble
from opensupervisor.runs.background import BackgroundRuns
from opensupervisor.runs.checkpoints import ITEMS, StoredSteps
from opensupervisor.runs.compaction import compacted, compaction_object, threshold
from opensupervisor.runs.drive import Driver
from opensupervisor.runs.durable import DurableEngine
from opensupervisor.runs.gate import Gate
from opensupervisor.runs.idempotency import Idempotency
from opensupervisor.runs.live import LiveRun
from opensupervisor.runs.plan import RunPlan, restored
from opensupervisor.runs.stored import StoredResponses, not_found, owner
from opensupervisor.runs.traces import RunTraces
from opensupervisor.store.approvals import IssuedApprovals
from opensupervisor.store.idempotency import IdempotencyKeys
from opensupervisor.store.ownership import Ownership
from opensupervisor.store.response_rows import RunRecord
from opensupervisor.tools.registry import ToolRegistry
from opensupervisor.vault import Vault
from opensupervisor.wire.ids import new_id
from opensupervisor.wire.items import Item, check_call_pairs
from opensupervisor.wire.request import CompactRequest, CreateResponseRequest, ParsedRequest
from opensupervisor.wire.response import TERMINAL_STATUSES, Response, new_response

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackgroundLimits:
    """How background runs are bounded (the workspace file's ``[background]``)."""

    max_queued: int = 1000
    max_run_time_s: float = 1800.0
    # Runs at once in this process; 0 = this process only accepts runs, workers run them.
    worker_concurrency: int = 16
    # How long an Idempotency-Key answers with the response it made.
    idempotency_keys_ttl_s: float = 86400.0


class ResponseService:
    def __init__(self, deps: RunDeps, tools: ToolRegistry, engine: DurableEngine, vault: Vault, *, gate: Gate,
                 traces: RunTraces, approvals: IssuedApprovals,
                 background_limits: BackgroundLimits | None = None) -> None:
        self.deps = deps
        self.store = deps.store
        self.conversations = deps.conversations
        self.tools = tools
        self.engine = engine
        self.vault = vault
        self.gate = gate
        self.accounting = gate.accounting
        self.traces = traces
        self.approvals = approvals
        self.background_limits = background_limits or BackgroundLimits()
        self.background = BackgroundRuns(deps.store, engine.state)
        self.driver = Driver(traces, approvals, gate.accounting)
        self.stored = StoredResponses(deps.store, self.background, engine, approvals)
        self.idempotency = Idempotency(IdempotencyKeys(deps.store, self.background_limits.idempotency_keys_ttl_s),
                                       engine, self.stored, self.background)
        self.ownership = Ownership(deps.store, engine.executor_id)
        # Runs taken from the queue whose workflows have not begun: read with the take.
        self._taken: dict[str, RunRecord] = {}

    # -- create ----------------------------------------------------------------------------------

    async def prepare(self, parsed: ParsedRequest, principal: Principal, raw: dict[str, Any], *,
                      echo_history: bool = False, traceparent: str | None = None,
                      history: list[Item] | None = None) -> Prepared:
        """Resolve everything a run needs; any client mistake is raised here, before the loop starts.

        ``echo_history``: start a background response's output with the history items of its input,
        as the Databricks Supervisor API does (``runs.assemble``). ``history``: what
        ``previous_response_id`` stands for, when the caller holds it (a WebSocket's latest response);
        else it is read from the store.
        """
        body = parsed.body
        served = self.deps.catalog.get(body.model)
        _check_output_tokens(served, body)
        threshold(body, served)  # refused now, before any tool is listed
        self.gate.check(principal, body.model, parsed.tools)
        bound = self.tools.bind(parsed.tools)
        response_id, conversation = new_id("response"), body.conversation_id
        if conversation is None:
            prior = history if history is not None else await self._prior_history(body.previous_response_id, principal)
            return await self._prepared(response_id, parsed, principal, raw, bound, prior, echo_history, traceparent)
        # Held from here until the response ends (its ending appends to it), or is refused below.
        prior = await self.conversations.hold(conversation, principal, response_id,
                                              None if body.background else self.engine.executor_id)
        try:
            return await self._prepared(response_id, parsed, principal, raw, bound, prior, echo_history, traceparent)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.conversations.conversations.release(conversation, response_id)
            raise

    async def _prepared(self, response_id: str, parsed: ParsedRequest, principal: Principal, raw: dict[str, Any],
                        bound: list[BoundToolset], prior: list[Item], echo_history: bool,
                        traceparent: str | None) -> Prepared:
        body = parsed.body
        input_items = await self._resolved_input(parsed.input_items, principal)
        try:
            check_call_pairs(prior + input_items, len(prior))
        except InvalidRequest as exc:
            if body.conversation_id is not None and exc.param == "previous_response_id":
                exc.param = "conversation"  # the prior items are the conversation's
            raise
        destination = await self.traces.admit(principal, body)
        # A request refused from here on gives its call back (admission releases it).
        async with self.accounting.admission(principal, body.model) as ticket:
            plan = RunPlan(response_id=response_id, request=parsed, sealed_request=self.vault.seal_request(raw),
                           principal=principal, input_items=input_items, ticket=ticket,
                           echo=echo_history and body.background, traceparent=traceparent, destination=destination,
                           # which process answers it, should that one die
                           executor=None if body.background else self.engine.executor_id)
            prepared = await assemble(plan, self.deps, bound, prior=lambda: _given(prior),
                                      response=new_response(plan.response_id, parsed, model=body.model))
            try:
                _check_context(prepared.run.model, body, prepared.run.history)
                await approvals.use(prepared.run, self.approvals)  # last: a request refused before this uses none
            except BaseException:  # refused after its tools were listed: what listing them opened closes now
                with anyio.CancelScope(shield=True):
                    await prepared.run.ctx.close()
                raise
            return prepared

    async def _prior_history(self, previous_id: str | None, principal: Principal) -> list[Item]:
        if previous_id is None:
            return []
        stored = await self.store.meta(previous_id, owner(principal))
        if stored is None:
            raise InvalidRequest(f"Previous response with id '{previous_id}' not found.",
                                 param="previous_response_id", code="previous_response_not_found")
        if stored.response["status"] not in TERMINAL_STATUSES:
            raise InvalidRequest(f"Previous response with id '{previous_id}' is still {stored.response['status']}.",
                                 param="previous_response_id", code="previous_response_in_progress")
        return await self.store.history(previous_id, owner(principal)) or []

    async def _resolved_input(self, items: list[Item], principal: Principal) -> list[Item]:
        return [await self.conversations.resolve(item, f"input[{i}]", principal, conversation=False)
                for i, item in enumerate(items)]

    async def compact(self, body: CompactRequest, items: list[Item], principal: Principal) -> dict[str, Any]:
        """``POST /v1/responses/compact``: the history (a stored chain, then ``input``) summarized."""
        self.deps.catalog.get(body.model)
        self.gate.check(principal, body.model, [])
        compactor = self.conversations.compactor
        prior = await self._prior_history(body.previous_response_id, principal)
        given = await self._resolved_input(items, principal)
        history = compactor.applied(prior + given, principal.id, _param_at(len(prior)))
        if not history:
            raise InvalidRequest("There is nothing to compact: send 'input', 'previous_response_id' or both.",
                                 param="input", code="missing_required_parameter")
        name = compactor.model or body.model
        try:
            async with self.gate.direct(principal, name, "compaction") as use:
                summary, used = await compactor.summarize(self.deps.catalog.get(name), body.instructions, history)
                use.input_tokens, use.output_tokens, use.model_calls = used.input_tokens, used.output_tokens, 1
        except ModelError as exc:
            raise UpstreamUnavailable(f"The model writing the summary failed: {exc}", param="model",
                                      code="model_error") from exc
        return compaction_object(compacted(history, compactor.seal(principal.id, summary)), used)

    def events(self, prepared: Prepared) -> AsyncGenerator[Event]:
        return self.driver.events(prepared)

    async def run_to_end(self, prepared: Prepared) -> Response:
        return await self.driver.run_to_end(prepared)

    # -- background ------------------------------------------------------------------------------

    async def start_background(self, prepared: Prepared) -> tuple[Response, AsyncGenerator[Event]]:
        """Record the response as queued and start its durable run: here when this process has room
        (no queue wait, and its creator streams it token by token), else on the queue for any worker.

        Returns the queued response and a follower of the run's events.
        """
        limits = self.background_limits
        response_id = prepared.response["id"]
        here = len(self.background.live) < limits.worker_concurrency
        # The run's first events, replayed by its workflow. A run that starts here is in progress
        # from the moment it is stored; a queued one when a worker picks it up, and only a queued
        # one waits in (and is bounded by) the queue.
        first = opening(prepared.run.emitter) if here else [prepared.run.emitter.lifecycle("response.created")]
        try:
            await prepared.recorder.open(first, max_queued=None if here else limits.max_queued,
                                         pool=self.engine.pool, taken_by=self.engine.executor_id if here else None)
        except BaseException:  # not stored (a full queue, the store down): it never ran
            await self.discard(prepared)
            raise
        if here:
            await self.start_taken(response_id)
        else:
            self.background.wake()  # this process takes it when it has room
        return first[0].data["response"], self.background.follow(response_id, -1)

    async def discard(self, prepared: Prepared) -> None:
        """Let go of a prepared response that will never run: its call is given back, its approval
        answers stand, its tools' sessions close and its conversation is free."""
        with anyio.CancelScope(shield=True):
            await self.accounting.release(prepared.plan.ticket)
            await self.approvals.release(prepared.response["id"])
            if prepared.recorder.conversation is not None:
                await prepared.recorder.conversation.release()
            await prepared.run.ctx.close()

    def room(self) -> int:
        """How many more background runs this process takes now."""
        return self.background_limits.worker_concurrency - len(self.background.live)

    async def start_taken(self, response_id: str) -> None:
        """Start the workflow of a background run this process took (created here, or from the queue)."""
        self.background.adopt(response_id)
        try:
            started = await self.engine.start(response_id)
        except Exception:
            self.background.live.pop(response_id, None)
            self._taken.pop(response_id, None)
            raise
        if not started:  # its workflow runs elsewhere (it was handed back and taken again meanwhile)
            self._taken.pop(response_id, None)
            await self.background.release(response_id)

    async def start_queued(self, record: RunRecord) -> None:
        """Start a run taken from the queue; its workflow runs from the record the take read."""
        self._taken[record.response["id"]] = record
        await self.start_taken(record.response["id"])

    async def run_durable(self, response_id: str) -> bool:
        """Run (or resume) a stored background response to its end; the body of its workflow.

        False when the response is not in this app's store. A run another process took over
        meanwhile (this one was taken for dead) stops without recording anything, and its workflow
        execution ends unfinished, as at shutdown: the new owner finishes it.
        """
        record = self._taken.pop(response_id, None) or await self.store.load_run(response_id)
        if record is None:
            return False
        try:
            await self._run_record(record)
        finally:
            await self.background.release(response_id)  # when it never got as far as running
        return True

    async def _run_record(self, record: RunRecord) -> None:
        response_id = record.response["id"]
        if record.response["status"] == "cancelled":
            await self.ownership.end_cancelled(response_id)  # when it was cancelled before it ever ran
            return
        if record.response["status"] not in ("queued", "in_progress"):
            return  # it ended; nothing left to do
        # A run starting for the first time (still queued: the pickup and its event are written
        # together) records its pickup with the claim: pollers see it leave "queued" at once. The run
        # replays that event (same response, same sequence number) and skips writing it.
        first = record.response["status"] == "queued"
        picked_up = opening(Emitter(_as_created(record.response)))[1] if first else None
        claim = await self.ownership.claim(response_id, picked_up=picked_up)
        if claim is None:
            return  # it ended just now (or was cancelled or deleted while queued)
        try:
            await self._run_owned(record, claim.last_sequence,
                                  StoredSteps(self.ownership, response_id, claim.epoch, claim.steps))
        except RunSuperseded:
            log.warning("background response %s was taken over by another process; this one lets it go",
                        response_id)
            raise asyncio.CancelledError from None  # like a shutdown: DBOS records nothing of this execution

    async def _run_owned(self, record: RunRecord, last_sequence: int, steps: StoredSteps) -> None:
        """Run a claimed run whose log ends at ``last_sequence``, through its recorded ``steps``."""
        response_id = record.response["id"]
        try:
            prepared = await self._restore(record, last_sequence, steps)
        except APIError as exc:  # the workspace changed under it: a model or tool it names is gone
            await self.store.fail([response_id], f"The response could not be resumed: {exc.message}")
            return
        prepared.recorder.epoch = steps.epoch
        prepared.recorder.unwritten = steps.unwritten
        steps.pending = prepared.recorder.taken
        live = prepared.live = self.background.adopt(response_id)
        remaining = record.response["created_at"] + self.background_limits.max_run_time_s - time.time()
        timer = asyncio.get_running_loop().call_later(max(remaining, 0), self._expire, live)
        try:
            await self.background.drive(live, self.events(prepared), prepared.recorder, lambda: prepared.closing)
        finally:
            timer.cancel()

    def _expire(self, live: LiveRun) -> None:
        if not live.done:
            live.stop_reason = "max_run_time"
            self.background.cancel(live)

    async def _restore(self, record: RunRecord, last_sequence: int, steps: StoredSteps) -> Prepared:
        """Rebuild a stored response's run inside its workflow. What may differ from the first time
        (the history of an earlier response, each tool listing, each model and tool call) is a step.

        The request that created the response recorded its approval answers as used by it. Not
        again here: a run resumed late could find them past their lifetime, and be refused its own
        approval."""
        plan = restored(record, self.vault)
        bound = self.tools.bind(plan.request.tools)
        previous, conversation = plan.previous_response_id, plan.request.body.conversation_id

        async def history() -> list[Item]:
            if conversation is not None:  # as it was when the run began: the step keeps it
                return await self.conversations.history(conversation, plan.principal)
            return await self._prior_history(previous, plan.principal)

        async def prior() -> list[Item]:
            return await steps("history", history, ITEMS) if previous or conversation else []

        return await assemble(plan, self.deps, bound, prior=prior, response=_as_created(record.response),
                              durable=Resume(steps, last_sequence, fence=steps.claim))

    async def resume(self, response_id: str, principal: Principal, after: int) -> AsyncGenerator[Event]:
        """Events of a background+stream response after ``after``, then live ones until it ends."""
        stored = await self.store.meta(response_id, owner(principal))
        if stored is None:
            raise not_found(response_id)
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
        ended = (live is None or live.done) and response["status"] in TERMINAL_STATUSES
        if after > last and ended:
            raise InvalidRequest(f"starting_after={after} is past the end of the event log (last is {last}).",
                                 param="starting_after")
        if after == last and ended and await self._ends_log(response_id, last):
            return _no_events()  # the client has the whole log; nothing to wait for
        return self.background.follow(response_id, after)

    async def _ends_log(self, response_id: str, sequence: int) -> bool:
        """Whether event ``sequence`` is the log's terminal event (a response cancelled while running
        elsewhere is ``cancelled`` before its run has written its last events)."""
        return any(event.type in TERMINAL_EVENTS for event in await self.store.events_after(response_id, sequence - 1))

    async def aclose(self) -> None:
        await self.background.aclose()


def _check_context(model: Model, body: CreateResponseRequest, items: list[Item]) -> None:
    """With ``truncation: disabled`` an input that cannot fit is the client's mistake: a 400 up front
    (unless the run compacts it first)."""
    if body.context_management:
        return
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


def _param_at(input_start: int) -> Callable[[int], str]:
    return lambda position: (f"input[{position - input_start}].encrypted_content" if position >= input_start
                             else "previous_response_id")


async def _no_events() -> AsyncGenerator[Event]:
    return
    yield


async def _given(items: list[Item]) -> list[Item]:
    return items


def _as_created(response: Response) -> Response:
    """A stored background response as it was created (only its status moved since, until it ends):
    what its run replays from, so that the replayed events equal the ones already recorded."""
    return dict(response, status="queued", output=[])
