"""The agent loop. It yields Responses events; JSON, SSE and background runs all drain this one stream.

Each turn is a step that reports a tagged outcome (``core.turn``): ``Answered`` ends the run,
``CalledTools`` runs the hosted calls and goes round again (or ends with pending client calls),
``Truncated`` ends it ``incomplete``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

from opensupervisor.core.approval import Answer, ApprovalSigner, denial_text, model_view
from opensupervisor.core.arguments import DEFAULT_ARGUMENTS_CHARS
from opensupervisor.core.bounds import DEFAULT_OUTPUT_CHARS
from opensupervisor.core.citations import citations_for, sources_in
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import Compaction, Model, ModelRequest
from opensupervisor.core.events import Emitter, Event
from opensupervisor.core.toolbox import ToolBox
from opensupervisor.core.truncation import ContextOverflow, fit
from opensupervisor.core.turn import Answered, CalledTools, Truncated, TurnBuilder, copy_item
from opensupervisor.errors import ModelError
from opensupervisor.wire.items import Item
from opensupervisor.wire.request import AllowedToolsChoice, FunctionToolChoice

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoopLimits:
    max_turns: int = 16
    tool_timeout_s: float = 120.0
    max_tool_output_chars: int = DEFAULT_OUTPUT_CHARS
    # The response's cap on streamed text and arguments, and the model's cap on max_output_tokens
    # (sent when the request sets none).
    max_output_chars: int | None = None
    max_output_tokens: int | None = None
    max_tool_arguments_chars: int = DEFAULT_ARGUMENTS_CHARS
    # Hosted calls that run, in one model turn and in the whole response; past either the calls
    # left do not run and the response ends ``incomplete`` (reason ``max_tool_calls``).
    max_hosted_calls_per_turn: int = 32
    max_hosted_calls_per_response: int = 256


@dataclass(slots=True)
class Run:
    """Everything one run needs. ``history`` is what the model sees: prior context, input, new items."""

    ctx: RunContext
    model: Model
    toolbox: ToolBox
    history: list[Item]
    emitter: Emitter
    limits: LoopLimits = field(default_factory=LoopLimits)
    hosted_calls: int = 0
    # Set when a hosted call limit of the workspace stopped calls from running: the run ends there.
    limited: str | None = None
    # Items repeated at the start of ``output`` before the model runs (see ``runs.assemble``).
    echo: list[Item] = field(default_factory=list)
    # Signs approval requests; without it no call waits for approval.
    signer: ApprovalSigner | None = None
    # The user's answers to earlier approval requests, acted on before the model runs.
    answers: list[Answer] = field(default_factory=list)
    # Set once the events the loop yields from now on end the run without waiting on anything: a
    # recorder writes them with the terminal event, in one transaction.
    ending: bool = False
    # Set from a model call's last events until its turn's hosted calls have returned: a durable
    # run's first call claim, which comes at once, writes those events with it (``runs.checkpoints``).
    calling: bool = False
    # Compacts the history before a model call once it is past the request's threshold.
    compaction: Compaction | None = None


async def run_loop(run: Run) -> AsyncIterator[Event]:
    """Drive a run from ``response.created`` to its terminal event; model failures end it ``failed``."""
    em = run.emitter
    for event in opening(em):
        yield event
    for item in run.echo:
        yield em.item_added(item)
        yield em.item_done(item)
    try:
        async for event in _turns(run):
            yield event
    except ModelError as exc:
        for event in _fail(run, exc.code, exc.message):
            yield event
    except ContextOverflow as exc:
        for event in _fail(run, "context_length_exceeded", str(exc)):
            yield event
    except Exception:  # the loop's outer boundary: anything unexpected fails this response, not the server
        log.exception("run %s failed", run.ctx.response_id)
        for event in _fail(run, "server_error", "The server had an error while processing this response."):
            yield event


def opening(em: Emitter) -> list[Event]:
    """The first events of every run: ``response.created`` (the response as stored), then
    ``response.in_progress``. A durable run publishes them as soon as it is picked up."""
    created = em.lifecycle("response.created")
    em.set_status("in_progress")
    return [created, em.lifecycle("response.in_progress")]


def _fail(run: Run, code: str, message: str) -> list[Event]:
    return ending(run, "failed", code=code, message=message)


def ending(run: Run, status: Literal["failed", "incomplete", "cancelled"], *, code: str = "server_error",
           message: str = "", reason: str | None = None, why: str | None = None) -> list[Event]:
    """The last events of a run that stops before its answer: the output left continuable
    (``settle``, told ``why``), an ``error`` event when it failed, then the terminal event."""
    em = run.emitter
    run.ending = True
    if status == "failed":
        return [*settle(run, why or "the response failed"), em.error_event(code, message),
                em.finish("failed", error={"code": code, "message": message})]
    if status == "incomplete":
        return [*settle(run, why or f"the response ended early ({reason})"), em.finish("incomplete", reason=reason)]
    return [*settle(run, why or CANCELLED), em.finish("cancelled")]


CANCELLED = "the response was cancelled"


def not_run(why: str) -> str:
    """The output of a hosted call that never ran, and why."""
    return f"Error: this call did not run: {why}."


def settle(run: Run, why: str) -> list[Event]:
    """Leave the output continuable before a run ends early: items still streaming end
    ``incomplete``, and hosted calls that never ran get an error output (a continuation needs every
    call paired, and the client cannot answer a hosted call)."""
    em = run.emitter
    events = em.close_open_items()
    answered = {i["call_id"] for i in em.response["output"] if i["type"] == "function_call_output"}
    for item in list(em.response["output"]):
        if item["type"] == "function_call" and item["call_id"] not in answered and _is_hosted(run, item):
            done = em.call_output(item["call_id"], not_run(why))
            run.history.append(copy_item(done[-1].data["item"]))
            events += done
    return events


async def _turns(run: Run) -> AsyncIterator[Event]:
    em = run.emitter
    for event in _listings(run):
        yield event
    async for event in _answer_approvals(run):
        yield event
    turn = 0
    while True:
        if run.limited is not None:
            for event in ending(run, "incomplete", reason="max_tool_calls", why=run.limited):
                yield event
            return
        if turn >= run.limits.max_turns:
            for event in ending(run, "incomplete", reason="max_turns"):
                yield event
            return
        for event in await _compacted(run):
            yield event
        builder = TurnBuilder(em, run.history, served=run.model.name, tools=run.toolbox.lookup, signer=run.signer,
                              cite=lambda text: citations_for(text, sources_in(run.history)),
                              max_chars=run.limits.max_output_chars)
        async for event in _model_turn(run, _model_request(run, turn), builder):
            yield event
        turn += 1
        outcome = builder.outcome
        if isinstance(outcome, Truncated):
            for event in ending(run, "incomplete", reason=outcome.reason):
                yield event
            return
        if isinstance(outcome, Answered):
            yield em.finish("completed")
            return
        assert isinstance(outcome, CalledTools)
        async for event in _tool_step(run, outcome.calls):
            yield event
        if run.limited is None and any(c["type"] == "mcp_approval_request" or not _is_hosted(run, c)
                                       for c in outcome.calls):
            yield em.finish("completed")  # the client answers: its function calls, or the approvals
            return


async def _compacted(run: Run) -> list[Event]:
    """Compact the history when it is past its bound: the model reads the summary from now on, and
    the output shows the ``compaction`` item that stands for it."""
    done = None if run.compaction is None else await run.compaction(run.ctx.request.body.instructions, run.history)
    if done is None:
        return []
    run.history = done.history  # rebound: the run's context keeps the history it began with
    used = done.usage
    run.emitter.add_usage(used.input_tokens, used.output_tokens, used.cached_tokens, used.reasoning_tokens)
    return run.emitter.whole_item(done.item)


def _is_hosted(run: Run, call: Item) -> bool:
    tool = run.toolbox.lookup(call["name"])
    return tool is None or tool.hosted


def _listings(run: Run) -> list[Event]:
    """An ``mcp_list_tools`` item per ``mcp`` server the conversation has not listed yet."""
    listed = {i["server_label"] for i in run.history if i["type"] == "mcp_list_tools"}
    events: list[Event] = []
    for label, tools in run.toolbox.listings:
        if label in listed:
            continue
        entries = [{"name": t.name, "input_schema": t.parameters, "description": t.description,
                    "annotations": t.annotations} for t in tools]
        events += run.emitter.mcp_list_tools(label, entries)
        run.history.append(copy_item(events[-1].data["item"]))
    return events


async def _answer_approvals(run: Run) -> AsyncIterator[Event]:
    """Run the calls the user approved and tell the model about the ones they did not, in the
    order they were asked."""
    em = run.emitter
    calls: list[Item] = []
    denied: dict[str, str] = {}
    for answer in run.answers:
        request = answer.request
        tool = run.toolbox.lookup(request["name"])
        if tool is not None and tool.items == "mcp":
            if not answer.approve:
                continue  # no mcp_call: the model reads the denial off the history (``model_view``)
            call, events = em.start_mcp_call(request["server_label"], request["name"], request["arguments"],
                                             approval_request_id=request["id"])
            events.append(em.mcp_call_arguments_done(call))
        else:
            call = {"type": "function_call", "status": "completed", "call_id": request["id"],
                    "name": request["name"], "arguments": request["arguments"]}
            events = em.whole_item(call)
            run.history.append(copy_item(call))
        calls.append(call)
        if not answer.approve:
            denied[_key(call)] = denial_text(answer.reason)
        for e in events:
            yield e
    if calls:
        async for e in _tool_step(run, calls, given=denied):
            yield e


def _model_request(run: Run, turn: int) -> ModelRequest:
    body = run.ctx.request.body
    # Once either budget is spent the model is offered no hosted tools, so a model that reads its
    # tools answers instead of being cut off.
    budget = run.limits.max_hosted_calls_per_response
    if body.max_tool_calls is not None:
        budget = min(budget, body.max_tool_calls)
    tools = run.toolbox.offered(hosted=run.hosted_calls < budget)
    choice = _tool_choice(run, turn)
    if choice == "none":
        tools = []
    settings = dict(run.model.defaults)
    max_output_tokens = (body.max_output_tokens or settings.pop("max_output_tokens", None)
                         or run.limits.max_output_tokens)
    settings.pop("max_output_tokens", None)
    settings.update({k: getattr(body, k) for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty")
                     if getattr(body, k) is not None})
    items = fit(body.instructions, model_view(run.history), run.model.context_window, auto=body.truncation == "auto",
                reserve=max_output_tokens or 0)
    return ModelRequest(
        instructions=body.instructions,
        items=items,
        tools=tools,
        tool_choice=choice if tools else "none",
        text_format=run.emitter.response["text"]["format"],
        max_output_tokens=max_output_tokens,
        max_output_chars=None if run.limits.max_output_chars is None else
        run.limits.max_output_chars - run.emitter.output_chars,
        parallel_tool_calls=body.parallel_tool_calls,
        settings=settings,
        reasoning=run.emitter.response["reasoning"],
    )


def _tool_choice(run: Run, turn: int) -> str:
    """The request's choice binds the first turn only; after a tool result the model may answer."""
    choice: Any = run.ctx.request.body.tool_choice
    if choice == "none":
        return "none"
    if turn > 0:
        return "auto"
    if isinstance(choice, FunctionToolChoice):
        return choice.name
    if isinstance(choice, AllowedToolsChoice):
        return choice.mode
    return str(choice)


async def _model_turn(run: Run, request: ModelRequest, turn: TurnBuilder) -> AsyncIterator[Event]:
    """Stream one model call into output items; ``turn.outcome`` tells what happened."""
    # aclosing: a run that stops early (cancel, disconnect) releases the model's connection at once.
    async with aclosing(run.model.request_stream(request)) as stream:
        async for event in stream:
            for e in turn.on(event):
                yield e
            if turn.capped:
                break  # the output cap: closing the stream closes the upstream's connection
    closing = turn.end()
    if isinstance(turn.outcome, CalledTools):
        run.calling = True
    else:
        run.ending = True  # the answer, or the cut-off one, and then the terminal event
    for e in closing:
        yield e


async def _tool_step(run: Run, calls: list[Item], given: dict[str, str] | None = None) -> AsyncIterator[Event]:
    """Run the hosted calls of a turn concurrently and emit their outputs in call order.

    Client calls and approval requests stay pending (the caller ends the run); unknown or
    disallowed tools and calls past the request's ``max_tool_calls`` get an error output so the
    model can recover. Calls past the workspace's hosted call limits do not run and stay
    unanswered: ``run.limited`` says why, and the run ends. ``given`` holds outputs already decided
    (denied approvals).
    """
    body = run.ctx.request.body
    hosted: list[Item] = []
    outputs: dict[str, str] = dict(given or {})
    for call in calls:
        if call["type"] == "mcp_approval_request" or _key(call) in outputs:
            continue
        tool = run.toolbox.lookup(call["name"])
        if tool is None:
            outputs[_key(call)] = f"Error: there is no tool named '{call['name']}' available."
        elif not tool.hosted:
            continue
        elif body.max_tool_calls is not None and run.hosted_calls >= body.max_tool_calls:
            outputs[_key(call)] = f"Error: the tool call limit ({body.max_tool_calls}) was reached."
        elif (why := _over_limit(run, len(hosted))) is not None:
            run.limited = run.limited or why
        else:
            run.hosted_calls += 1
            hosted.append(call)
    try:
        results = await run.toolbox.run(run.ctx, [(c["name"], c["arguments"]) for c in hosted],
                                        parallel=body.parallel_tool_calls)
    finally:
        run.calling = False
    outputs.update({_key(c): r for c, r in zip(hosted, results, strict=True)})
    for call in calls:
        output = outputs.get(_key(call))
        if output is not None:
            for e in _output(run, call, output):
                yield e


def _over_limit(run: Run, this_turn: int) -> str | None:
    """Why one more hosted call may not run, by the workspace's limits (None: it may)."""
    limits = run.limits
    if this_turn >= limits.max_hosted_calls_per_turn:
        return f"the limit of {limits.max_hosted_calls_per_turn} hosted tool calls per turn was reached"
    if run.hosted_calls >= limits.max_hosted_calls_per_response:
        return f"the limit of {limits.max_hosted_calls_per_response} hosted tool calls per response was reached"
    return None


def _key(call: Item) -> str:
    return str(call["call_id"] if call["type"] == "function_call" else call["id"])


def _output(run: Run, call: Item, output: str) -> list[Event]:
    """A call's result: a ``function_call_output`` item, or the ``mcp_call`` itself completed."""
    if call["type"] == "mcp_call":
        failed = output.startswith("Error: ")
        events = run.emitter.finish_mcp_call(call, None if failed else output,
                                             output.removeprefix("Error: ") if failed else None)
        run.history.append(copy_item(call))
        return events
    events = run.emitter.call_output(call["call_id"], output)
    run.history.append(copy_item(events[-1].data["item"]))
    return events
