"""Driving a run: its events through tracing, approvals and the recorder, and what happens when
it ends, whoever reads it (a JSON answer, an SSE stream, a background workflow)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator

import anyio

from opensupervisor import metrics
from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.core.loop import ending, run_loop
from opensupervisor.errors import RunCancelled, RunSuperseded, StoreUnavailable
from opensupervisor.runs import approvals
from opensupervisor.runs.accounting import Accounting
from opensupervisor.runs.assemble import Prepared
from opensupervisor.runs.conversations import ConversationLink
from opensupervisor.runs.traces import RunTraces
from opensupervisor.store.approvals import IssuedApprovals
from opensupervisor.wire.response import Response

log = logging.getLogger(__name__)


class Driver:
    def __init__(self, traces: RunTraces, ledger: IssuedApprovals, accounting: Accounting) -> None:
        self.traces = traces
        self.ledger = ledger
        self.accounting = accounting

    async def events(self, prepared: Prepared) -> AsyncGenerator[Event]:
        """The run's events, recorded as they pass.

        A run that ends early is recorded as such: ``cancelled`` when it was cancelled (here or in
        another process) or abandoned by its reader, ``failed`` when recording it failed. A run that
        another process took over records nothing more and raises ``RunSuperseded``.
        """
        recorder, run = prepared.recorder, prepared.run
        started, began = time.perf_counter(), time.time()
        self.traces.start(prepared)
        stream = self.traces.events(prepared, run_loop(run))
        if approvals.asks(run):
            stream = approvals.issuing(run, self.ledger, stream)
        try:
            try:
                async for event in recorder.record(stream):
                    yield event
            except RunCancelled as exc:
                log.info("response %s was cancelled while running", prepared.response["id"])
                for event in await self.record_end(prepared, "cancelled", exc.rewind_to):
                    yield event
            except Exception as exc:  # the loop never raises; this is the store failing under the recorder
                if isinstance(exc, StoreUnavailable) and not recorder.live:
                    raise  # a JSON answer, not sent yet and not stored: the client is told to retry
                log.exception("recording response %s failed", prepared.response["id"])
                if not recorder.finished:
                    for event in await self.record_end(prepared, "failed"):
                        yield event
        except RunSuperseded:
            # Taken for dead, and the run went to another process, which records it from here on.
            log.warning("response %s is run by another process now; stopping this copy without recording more",
                        prepared.response["id"])
            if prepared.live is not None:
                prepared.live.shutting_down = True
            raise
        finally:
            await self._after(prepared, started, began)

    async def _after(self, prepared: Prepared, started: float, began: float) -> None:
        """Release the run, end what it left open, and count it (unless another process resumes it)."""
        run, recorder, live = prepared.run, prepared.recorder, prepared.live
        with anyio.CancelScope(shield=True):
            await run.ctx.close()
        self.traces.abandon(prepared)
        handed_over = live is not None and live.shutting_down  # the process that resumes it records it
        if not recorder.finished and not handed_over:
            reason = live.stop_reason if live is not None else None
            with anyio.CancelScope(shield=True):
                prepared.closing = await self.record_end(prepared, "incomplete" if reason else "cancelled",
                                                         reason=reason)
        if recorder.conversation is not None and not handed_over:
            with anyio.CancelScope(shield=True):
                await _let_go(recorder.conversation)
        body = run.ctx.request.body
        mode = "background" if body.background else "stream" if body.stream else "json"
        seconds = time.perf_counter() - started
        metrics.record_response(prepared.response, mode, seconds)
        if not handed_over:
            self.accounting.finished(prepared, mode, began, seconds)

    async def record_end(self, prepared: Prepared, status: str, rewind_to: int | None = None, *,
                         reason: str | None = None) -> list[Event]:
        """Close the output and write the ending of a run that stops early."""
        run = prepared.run
        prepared.recorder.guard = False
        if rewind_to is not None:
            run.emitter.seq = rewind_to  # that terminal event was neither written nor shown to anyone
        if status == "failed":
            events = ending(run, "failed", code="server_error", message="The server could not record this response.")
        elif status == "incomplete":
            events = ending(run, "incomplete", reason=reason)
        else:
            events = ending(run, "cancelled")
        prepared.recorder.finished = True  # there is an ending now, even if writing it fails below
        try:
            for event in events:
                await prepared.recorder.add(event)
        except Exception:  # nothing more can be done for this response; the server goes on
            log.exception("could not record how response %s ended", run.emitter.response["id"])
        return events

    async def run_to_end(self, prepared: Prepared) -> Response:
        final: Response | None = None
        async for event in self.events(prepared):
            if event.type in TERMINAL_EVENTS:
                final = event.data["response"]
        assert final is not None
        return final


async def _let_go(link: ConversationLink) -> None:
    """End a run's hold of its conversation, when its ending did not (the next response would wait
    for the hold to be taken for void)."""
    try:
        await link.release()
    except Exception:
        log.exception("could not end response %s's hold of conversation %s", link.response_id, link.conversation_id)
