"""Building a run from its plan: the one place where a run's model, toolsets, loop state and
recorder are made, for a new response and for a stored one resumed inside its workflow alike.

Every cross-cutting concern wraps the two contracts, in this order (innermost first):

    model:   the catalog's (with its fallbacks) → one durable step per call → a span per call
    toolset: the tool kind's (with its approval policy) → its listing one durable step, when it may
             change → timeout, error text and output cap → a span per call → one durable step per call

A durable step records what the wrappers inside it did, so a resumed run neither calls the tool
again nor opens its span twice; the wrappers outside it run every time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from opensupervisor.core import approval
from opensupervisor.core.approval import ApprovalSigner
from opensupervisor.core.bounds import Bounded
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import Model, Toolset
from opensupervisor.core.events import Emitter, Event
from opensupervisor.core.loop import LoopLimits, Run
from opensupervisor.core.toolbox import BoundToolset, ToolBox
from opensupervisor.core.turn import copy_item
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs.checkpoints import Steps
from opensupervisor.runs.compaction import AutoCompaction, threshold
from opensupervisor.runs.conversations import ConversationService
from opensupervisor.runs.durable import CallFence, DurableCalls, DurableModel, RecordedListing
from opensupervisor.runs.live import LiveRun
from opensupervisor.runs.plan import RunPlan, stored_options
from opensupervisor.runs.recorder import Recorder
from opensupervisor.store import Store
from opensupervisor.tracing.wrappers import RunSpans, TracedModel, TracedToolset
from opensupervisor.wire.items import Item
from opensupervisor.wire.response import Response, ResponseObject


@dataclass(frozen=True, slots=True)
class RunDeps:
    """What every run is built from."""

    catalog: ModelCatalog
    limits: LoopLimits
    signer: ApprovalSigner
    store: Store
    conversations: ConversationService


@dataclass(frozen=True, slots=True)
class Resume:
    """A stored background run restored inside its workflow: its work goes through ``steps``, and
    the events up to ``last_sequence`` are in the log already."""

    steps: Steps
    last_sequence: int
    # Claims each hosted call before it runs (``DurableCalls``).
    fence: CallFence | None = None


@dataclass(slots=True)
class Prepared:
    """A run ready to be driven (``runs.drive``)."""

    plan: RunPlan
    run: Run
    recorder: Recorder
    spans: RunSpans
    # The ending recorded for a run abandoned midway, when it could no longer be yielded.
    closing: list[Event] = field(default_factory=list)
    # The live log of a background run, which also says why the run is being stopped.
    live: LiveRun | None = None

    @property
    def response(self) -> Response:
        return self.run.emitter.response


async def assemble(plan: RunPlan, deps: RunDeps, bound: list[BoundToolset], *,
                   prior: Callable[[], Awaitable[list[Item]]], response: ResponseObject | Response,
                   durable: Resume | None = None) -> Prepared:
    """The run of ``plan`` with the request's toolsets (``bound``) after the history of its earlier
    responses (``prior``, read once the tools are listed: a durable run's steps keep that order),
    starting from ``response`` (new, or a stored one as it was created)."""
    body = plan.request.body
    ctx = RunContext(response_id=plan.response_id, principal=plan.principal, request=plan.request)
    spans = RunSpans()
    steps = durable.steps if durable is not None else None
    served = deps.catalog.get(body.model)
    durable_model = DurableModel(served, steps) if steps is not None else None
    model = TracedModel(durable_model or served, spans)
    toolsets = [replace(b, toolset=_wrapped(b, deps.limits, spans, durable)) for b in bound]
    toolbox = await ToolBox.build(ctx, toolsets, max_arguments_chars=deps.limits.max_tool_arguments_chars)
    earlier = await prior()
    prior_param = "conversation" if body.conversation_id is not None else "previous_response_id"
    try:  # compaction items as the summaries they stand for (those of the input were checked already)
        items = ctx.history = deps.conversations.compactor.applied(earlier + plan.input_items, plan.principal.id,
                                                                  lambda _: prior_param)
    except BaseException:
        await ctx.close()
        raise
    signer = deps.signer.bound(plan.principal.id)
    conversation = body.conversation_id
    run = Run(ctx=ctx, model=model, toolbox=toolbox, history=items, emitter=Emitter(response),
              limits=_model_limits(served, deps.limits), signer=signer,
              answers=approval.answers(items, _input_start(items, plan.input_items), signer, toolbox.lookup),
              echo=_echo(plan.input_items) if plan.echo else [])
    recorder = Recorder(deps.store if body.store else None, response_id=plan.response_id, owner=plan.principal.id,
                        request=plan.sealed_request, stream=body.stream, background=body.background,
                        input_items=plan.input_items,
                        # A resumed run's row exists already: its options are not written again.
                        options=None if durable is not None else dict(stored_options(plan)),
                        created=durable is not None,
                        resume_after=durable.last_sequence if durable is not None else -1,
                        hold=durable_model.holding if durable_model is not None else None,
                        deferred=lambda: run.ending or (durable is not None and run.calling),
                        conversation=None if conversation is None else deps.conversations.link(
                            conversation, plan.response_id, plan.input_items, stored=body.store))
    limit = threshold(body, served)
    if limit is not None:
        compactor = deps.conversations.compactor
        writer = TracedModel(deps.catalog.get(compactor.model) if compactor.model else served, spans)
        run.compaction = AutoCompaction(compactor, writer, plan.principal.id, limit, steps)
    return Prepared(plan, run, recorder, spans)


def _input_start(items: list[Item], input_items: list[Item]) -> int:
    """Where the input starts in the history the model reads: after the prior items a compaction
    kept, which need not be all of them (nor the same number)."""
    given = {id(item) for item in input_items}
    return next((i for i, item in enumerate(items) if id(item) in given), len(items))


def _wrapped(bound: BoundToolset, limits: LoopLimits, spans: RunSpans, durable: Resume | None) -> Toolset:
    toolset = bound.toolset
    if durable is not None:
        toolset = RecordedListing(toolset, durable.steps, bound.type)
    toolset = Bounded(toolset, timeout_s=limits.tool_timeout_s, max_output_chars=limits.max_tool_output_chars)
    toolset = TracedToolset(toolset, spans, bound.type)
    if durable is not None:
        toolset = DurableCalls(toolset, durable.steps, durable.fence)
    return toolset


def _model_limits(model: Model, limits: LoopLimits) -> LoopLimits:
    """The loop's limits for a run of ``model``: its own output caps over the workspace's."""
    return replace(limits, max_output_chars=model.max_output_chars or limits.max_output_chars,
                   max_output_tokens=model.max_output_tokens)


def _echo(input_items: list[Item]) -> list[Item]:
    """The history items of an input, as a Databricks-path background response repeats them (published
    clients skip that many items before reading new ones). Each keeps its input id, which is how the
    stored history tells them apart from new output."""
    return [copy_item(item, status="completed") for item in input_items if _is_history(item)]


def _is_history(item: Item) -> bool:
    kind = item["type"]
    return kind in ("function_call", "function_call_output") or (kind == "message" and item["role"] == "assistant")
