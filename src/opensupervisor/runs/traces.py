"""The trace of each run: started with it, ended by its terminal event, written or returned.

The loop knows nothing of it: the run's event stream passes through ``events``, which ends the
root span at the terminal event and, for ``databricks_options.return_trace``, adds
``databricks_output.trace`` to that event's response (so the stored, streamed and returned
responses all carry it). Spans for ``trace_destination`` go to the trace store, off the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.core.loop import Run
from opensupervisor.identity import Principal
from opensupervisor.runs.assemble import Prepared
from opensupervisor.tracing.mlflow_format import trace_dict
from opensupervisor.tracing.spans import DEFAULT_PREFIX, Destination, RunTrace, Tracing
from opensupervisor.tracing.tables import TraceStore
from opensupervisor.vault import redact_tool
from opensupervisor.wire.request import CreateResponseRequest
from opensupervisor.wire.response import Response


class RunTraces:
    def __init__(self, tracing: Tracing, store: TraceStore | None) -> None:
        self.tracing = tracing
        self.store = store

    async def admit(self, principal: Principal, body: CreateResponseRequest) -> Destination | None:
        """Where the run's ``trace_destination`` is for ``principal`` (refused with a 400 when it
        may not have it); None without one."""
        dest = body.trace_destination
        if dest is None:
            return None
        if self.store is None:  # nothing is written: no table to scope
            return Destination(dest.catalog_name, dest.schema_name, dest.table_prefix or DEFAULT_PREFIX)
        return await self.store.destinations.admit(principal, dest.catalog_name, dest.schema_name,
                                                   dest.table_prefix)

    def start(self, prepared: Prepared) -> None:
        run, plan = prepared.run, prepared.plan
        options = plan.request.body.databricks_options
        keep = options is not None and options.return_trace
        prepared.spans.trace = self.tracing.start("opensupervisor.response", inputs=_inputs(run),
                                                  traceparent=plan.traceparent, destination=plan.destination,
                                                  keep=keep)

    async def events(self, prepared: Prepared, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            run_trace = prepared.spans.trace
            if run_trace is not None and event.type in TERMINAL_EVENTS:
                prepared.spans.trace = None
                event = self._finish(prepared.run, run_trace, event)
            yield event

    def _finish(self, run: Run, run_trace: RunTrace, event: Event) -> Event:
        response = event.data["response"]
        status = response["status"]
        error = None if status == "completed" else ((response.get("error") or {}).get("message") or status)
        run_trace.finish(outputs=final_text(response), error=error)
        self._store(run_trace)
        options = run.ctx.request.body.databricks_options
        if options is None or not options.return_trace:
            return event
        output = {"trace": trace_dict(run_trace)}
        run.emitter.response["databricks_output"] = output
        return Event.final({**event.data, "response": {**response, "databricks_output": output}})

    def abandon(self, prepared: Prepared) -> None:
        """A run that ended without its terminal event passing here (cancelled, abandoned)."""
        run_trace = prepared.spans.trace
        if run_trace is not None:
            prepared.spans.trace = None
            run_trace.finish(outputs=None, error=f"the response ended {prepared.response['status']}")
            self._store(run_trace)

    def _store(self, run_trace: RunTrace) -> None:
        if run_trace.destination is not None and self.store is not None:
            self.store.submit(run_trace)


def _inputs(run: Run) -> dict[str, Any]:
    request = run.ctx.request
    return {"model": request.body.model, "instructions": request.body.instructions, "input": request.input_items,
            "tools": [t.config if t.type == "function" else redact_tool(t.raw) for t in request.tools]}


def final_text(response: Response) -> str:
    return "".join(part.get("text", "") for item in response.get("output", []) if item.get("type") == "message"
                   for part in item.get("content", []) if part.get("type") == "output_text")
