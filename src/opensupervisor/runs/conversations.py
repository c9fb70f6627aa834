"""Conversations as a service: the ``/v1/conversations`` operations, and what a response run in one
(``conversation`` on create) does with it: hold it while it runs, read its items before its input,
and append its input and output when it ends (``ConversationLink``, written by the recorder in the
transaction of the response's ending).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import Connection

from opensupervisor.errors import InvalidRequest, NotFound
from opensupervisor.identity import Principal
from opensupervisor.runs.compaction import Compactor
from opensupervisor.runs.stored import listing, owner
from opensupervisor.store import Store
from opensupervisor.store.conversations import Conversations
from opensupervisor.wire.ids import PREFIXES, new_id
from opensupervisor.wire.items import Item

# The endings whose input and output a conversation takes (a failed or cancelled response adds nothing).
APPENDED = frozenset({"completed", "incomplete"})


class ConversationService:
    def __init__(self, store: Store, conversations: Conversations, compactor: Compactor) -> None:
        self.store = store
        self.conversations = conversations
        self.compactor = compactor

    async def create(self, principal: Principal, metadata: dict[str, str], items: list[Item]) -> dict[str, Any]:
        resolved = [await self.resolve(item, f"items[{i}]", principal) for i, item in enumerate(items)]
        return await self.conversations.create(new_id("conversation"), principal.id, metadata, resolved)

    async def get(self, conversation_id: str, principal: Principal) -> dict[str, Any]:
        found = await self.conversations.get(conversation_id, owner(principal))
        if found is None:
            raise not_found(conversation_id)
        return found

    async def update(self, conversation_id: str, principal: Principal, metadata: dict[str, str]) -> dict[str, Any]:
        found = await self.conversations.update(conversation_id, owner(principal), metadata)
        if found is None:
            raise not_found(conversation_id)
        return found

    async def delete(self, conversation_id: str, principal: Principal) -> dict[str, Any]:
        if not await self.conversations.delete(conversation_id, owner(principal)):
            raise not_found(conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def add_items(self, conversation_id: str, principal: Principal, items: list[Item]) -> dict[str, Any]:
        resolved = [await self.resolve(item, f"items[{i}]", principal) for i, item in enumerate(items)]
        added = await self.conversations.add(conversation_id, owner(principal), resolved)
        if added is None:
            raise not_found(conversation_id)
        return listing(added, has_more=False)

    async def list_items(self, conversation_id: str, principal: Principal, *, limit: int, order: str,
                         after: str | None) -> dict[str, Any]:
        page = await self.conversations.page(conversation_id, owner(principal), limit=limit,
                                             ascending=order == "asc", after=after)
        if page is None:
            raise not_found(conversation_id)
        if page == "unknown_after":
            raise InvalidRequest(f"Item with id '{after}' is not in conversation '{conversation_id}'.", param="after",
                                 code="invalid_value")
        return listing(page.items, has_more=page.has_more)

    async def item(self, conversation_id: str, principal: Principal, item_id: str) -> Item:
        found = await self.conversations.item(conversation_id, owner(principal), item_id)
        if found == "missing":
            raise not_found(conversation_id)
        if found is None:
            raise item_not_found(item_id)
        return found

    async def delete_item(self, conversation_id: str, principal: Principal, item_id: str) -> dict[str, Any]:
        found = await self.conversations.delete_item(conversation_id, owner(principal), item_id)
        if found is None:
            raise not_found(conversation_id)
        if found is False:
            raise item_not_found(item_id)
        return found

    async def resolve(self, item: Item, param: str, principal: Principal, *, conversation: bool = True) -> Item:
        """An input item as it is kept: a reference replaced by the item it names, with an id (and, in
        a conversation, a status: ``kept``)."""
        if item["type"] == "item_reference":
            found = await self.store.find_item(item["id"], owner(principal))
            if found is None:
                raise InvalidRequest(f"Item with id '{item['id']}' not found.", param=f"{param}.id",
                                     code="item_not_found")
            return found
        if item["type"] == "compaction":
            # Refused now, not when a response reads it.
            self.compactor.opened(item, principal.id, f"{param}.encrypted_content")
        if conversation:
            return kept(item)
        return item if "id" in item or item["type"] not in PREFIXES else {"id": new_id(item["type"]), **item}

    # -- a response in a conversation ------------------------------------------------------------

    async def hold(self, conversation_id: str, principal: Principal, response_id: str,
                   executor: str | None) -> list[Item]:
        """Hold the conversation for a new response; its items, which come before the response's input.
        Whatever stops this midway (a client gone while the claim was written, say) lets the hold go."""
        try:
            claim = await self.conversations.claim(conversation_id, owner(principal), response_id, executor)
            if claim == "missing":
                raise conversation_not_found(conversation_id)
            if claim == "busy":
                raise InvalidRequest("Another process is currently operating on this conversation. Please retry in "
                                     "a few seconds.", param="conversation", code="conversation_locked")
            return await self.history(conversation_id, principal)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.conversations.release(conversation_id, response_id)  # only if it is this response's
            raise

    async def history(self, conversation_id: str, principal: Principal) -> list[Item]:
        """The conversation's items; a 404 when it is gone (a queued response's, deleted meanwhile)."""
        found = await self.conversations.items(conversation_id, owner(principal))
        if found is None:
            raise conversation_not_found(conversation_id)
        return found

    def link(self, conversation_id: str, response_id: str, input_items: list[Item], *,
             stored: bool) -> ConversationLink:
        return ConversationLink(self.conversations, conversation_id, response_id, input_items, stored)


@dataclass(slots=True)
class ConversationLink:
    """A running response's tie to its conversation. ``done`` once its ending was written with it."""

    conversations: Conversations
    conversation_id: str
    response_id: str
    input_items: list[Item]
    # Whether the response has a row whose status the write checks (``store: true``).
    stored: bool
    done: bool = False

    def ending(self, response: dict[str, Any]) -> Callable[[Connection], None]:
        """The write that goes with the response's ending (``Conversations.ending_write``)."""
        taken = {item.get("id") for item in self.input_items}
        new = [*self.input_items, *(o for o in response["output"] if o.get("id") not in taken)]
        return self.conversations.ending_write(self.conversation_id, self.response_id, [kept(i) for i in new],
                                               status=response["status"], appended=APPENDED, stored=self.stored)

    async def write_alone(self, response: dict[str, Any]) -> None:
        """The ending's write on its own (a response that is not stored has no transaction to join)."""
        await self.conversations.in_transaction(self.ending(response))
        self.done = True

    async def release(self) -> None:
        """End the hold of a response whose ending was never written with it."""
        if not self.done:
            self.done = True
            await self.conversations.release(self.conversation_id, self.response_id)


def kept(item: Item) -> Item:
    """The item as a conversation keeps it: with an id of its kind (ids let items be listed and
    referenced) and, for a message, a status, as every item a conversation lists has."""
    if "id" not in item:
        item = {"id": new_id(item["type"]), **item}
    if item["type"] == "message" and "status" not in item:
        item = {**item, "status": "completed"}
    return item


def not_found(conversation_id: str) -> NotFound:
    return NotFound(f"Conversation with id '{conversation_id}' not found.", param="conversation_id")


def conversation_not_found(conversation_id: str) -> NotFound:
    """An unknown ``conversation`` on a create (the routes' own 404 names the path's ``conversation_id``)."""
    return NotFound(f"Conversation with id '{conversation_id}' not found.", param="conversation",
                    code="conversation_not_found")


def item_not_found(item_id: str) -> NotFound:
    return NotFound(f"Item with id '{item_id}' not found.", param="item_id")
