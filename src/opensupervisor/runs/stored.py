"""Stored responses: retrieve, cancel, delete and list input items, as their owner (or an admin)."""

from __future__ import annotations

from typing import Any

from opensupervisor.errors import InvalidRequest, NotFound
from opensupervisor.identity import Principal
from opensupervisor.runs.background import BackgroundRuns
from opensupervisor.runs.durable import DurableEngine
from opensupervisor.store import Store
from opensupervisor.store.approvals import IssuedApprovals
from opensupervisor.wire.items import Item
from opensupervisor.wire.response import Response


class StoredResponses:
    def __init__(self, store: Store, background: BackgroundRuns, engine: DurableEngine,
                 approvals: IssuedApprovals) -> None:
        self.store = store
        self.background = background
        self.engine = engine
        self.approvals = approvals

    async def get(self, response_id: str, principal: Principal) -> Response:
        response = await self.store.get(response_id, owner(principal))
        if response is None:
            raise not_found(response_id)
        return response

    async def cancel(self, response_id: str, principal: Principal) -> Response:
        stored = await self.store.meta(response_id, owner(principal))
        if stored is None:
            raise not_found(response_id)
        if not stored.response["background"]:
            raise InvalidRequest("Cannot cancel a synchronous response.", param="response_id")
        live = self.background.live.get(response_id)
        if live is not None and live.task is not None:
            self.background.cancel(live)
            await self.background.wait(live)
        elif (was := await self.store.cancel(response_id, owner(principal))) is not None:
            # A queued run leaves the queue. A running one is not cancelled in DBOS: its process
            # sees the cancel at its next heartbeat or write and ends the run itself, recording it;
            # a workflow cancelled under it would make DBOS log the run's own end as an error.
            if was == "queued":
                await self.engine.cancel(response_id)
        else:
            _refuse_cancel(await self.get(response_id, principal))
        response = await self.get(response_id, principal)
        if response["status"] != "cancelled":
            _refuse_cancel(response)  # it finished before the cancel reached it
        return response

    async def delete(self, response_id: str, principal: Principal) -> dict[str, Any]:
        stored = await self.store.meta(response_id, owner(principal))
        if stored is not None and self.background.running(stored):
            raise InvalidRequest("Cannot delete an in-flight response.", param="response_id")
        if not await self.store.delete(response_id, owner(principal)):
            raise not_found(response_id)
        await self.approvals.forget(response_id)  # its unanswered approval requests go with it
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(self, response_id: str, principal: Principal, *, limit: int, order: str,
                          after: str | None) -> dict[str, Any]:
        found = await self.store.input_items(response_id, owner(principal))
        if found is None:
            raise not_found(response_id)
        data = found if order == "asc" else list(reversed(found))
        if after is not None:
            ids = [i.get("id") for i in data]
            if after not in ids:
                raise InvalidRequest(f"Item with id '{after}' is not an input item of this response.",
                                     param="after", code="invalid_value")
            data = data[ids.index(after) + 1:]
        return listing(data[:limit], has_more=len(data) > limit)


def listing(items: list[Item], *, has_more: bool) -> dict[str, Any]:
    """A page of items as OpenAI's list routes answer."""
    return {"object": "list", "data": items, "first_id": items[0].get("id") if items else None,
            "last_id": items[-1].get("id") if items else None, "has_more": has_more}


def _refuse_cancel(response: Response) -> None:
    """OpenAI's answers to cancelling a response that is not running (a cancelled one is fine)."""
    status = response["status"]
    if status in ("completed", "failed"):
        raise InvalidRequest(f"Cannot cancel a {status} response.", param="response_id")
    if status != "cancelled":
        raise InvalidRequest("Cannot cancel a response in terminal state.", param="response_id")


def owner(principal: Principal) -> str | None:
    """Admins see every response; everyone else only their own."""
    return None if principal.is_admin else principal.id


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")
