"""Approvals across responses: each request recorded as issued before anyone sees it, each answer
recorded as used when the request carrying it is accepted (``store.approvals``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from opensupervisor.core import approval
from opensupervisor.core.events import Event
from opensupervisor.core.loop import Run
from opensupervisor.store.approvals import IssuedApprovals


def asks(run: Run) -> bool:
    """Whether the run may issue approval requests (only then are its events watched for them)."""
    return run.signer is not None and any(t.approval for t in run.toolbox.offered())


async def issuing(run: Run, ledger: IssuedApprovals, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """Pass ``events`` through, recording each approval request as issued before it is shown: a
    client that answers the moment it sees the request finds it recorded."""
    async for event in events:
        if event.type == "response.output_item.added" and event.data["item"]["type"] == "mcp_approval_request":
            await ledger.issue(event.data["item"]["id"], run.ctx.principal.id, run.ctx.response_id)
        yield event


async def use(run: Run, ledger: IssuedApprovals) -> None:
    """Record the run's answers as used by its response, all or none; a 400 naming the first input
    item refused (already used by another response, or not answerable)."""
    if not run.answers:
        return
    by_id = {a.request_id: a for a in run.answers}
    refused = await ledger.use(list(by_id), run.ctx.principal.id, run.ctx.response_id)
    if refused:
        first = min((by_id[rid] for rid in refused), key=lambda a: a.index)
        raise approval.refusal(first, refused[first.request_id])
