"""MCP approval: signed approval requests, matching the user's answers, and what the model sees.

A call to a tool that needs approval does not run: the run ends with an ``mcp_approval_request``
item, and the client continues (full history resent, or ``previous_response_id``) with an
``mcp_approval_response``. The request's id is signed with a key the server keeps, over the caller
it was issued to and what it asks, so a client cannot approve a call the model never asked for,
change its arguments on the way back, or answer another caller's request. Each request is answered
once: the server records which response acted on its answer (``store.approvals``), and a second
answer is refused unless the conversation already holds what the first one led to.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from opensupervisor.core.contracts import ToolDef, Toolset, WrapperToolset
from opensupervisor.errors import InvalidRequest
from opensupervisor.wire.items import FunctionCallItem, FunctionCallOutputItem, Item, as_item

if TYPE_CHECKING:
    from opensupervisor.core.context import RunContext

PREFIX = "mcpr_"
_NONCE = 24
_MAC = 32
_MODEL_ITEMS = frozenset({"reasoning", "function_call", "mcp_call", "mcp_approval_request"})


class AskFirst(WrapperToolset):
    """A toolset whose tools wait for the user's approval where ``rule`` says so (each tool kind has
    its own policy: a connection's ``require_approval``, an ``mcp`` tool's filters)."""

    def __init__(self, inner: Toolset, rule: Callable[[RunContext, ToolDef], bool]) -> None:
        super().__init__(inner)
        self.rule = rule

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        return [replace(t, approval=self.rule(ctx, t)) for t in await self.inner.list_tools(ctx)]


@dataclass(frozen=True, slots=True)
class ApprovalSigner:
    key: bytes
    # The principal the requests are issued to: signed into each id, so that only they can answer it.
    principal: str = ""

    def bound(self, principal: str) -> ApprovalSigner:
        return ApprovalSigner(self.key, principal)

    def request_id(self, nonce: str, server_label: str, name: str, arguments: str) -> str:
        """``mcpr_`` + nonce + MAC over whom and what the user is asked to approve (61 characters)."""
        parts = (nonce, self.principal, server_label, name, arguments)
        # Length-prefixed: no choice of label, name or arguments can shift text between parts.
        message = b"".join(len(b).to_bytes(4, "big") + b for b in (p.encode() for p in parts))
        return PREFIX + nonce[:_NONCE] + hmac.new(self.key, message, hashlib.sha256).hexdigest()[:_MAC]

    def genuine(self, request: Item) -> bool:
        rid = str(request.get("id", ""))
        if not rid.startswith(PREFIX) or len(rid) != len(PREFIX) + _NONCE + _MAC:
            return False
        nonce = rid[len(PREFIX):len(PREFIX) + _NONCE]
        expected = self.request_id(nonce, request["server_label"], request["name"], request["arguments"])
        return hmac.compare_digest(rid, expected)


@dataclass(frozen=True, slots=True)
class Answer:
    """The user's answer to one approval request that the run has yet to act on."""

    request: Item
    approve: bool
    reason: str | None
    # Where the answer is in the request's ``input``, for the error that refuses it.
    index: int = 0

    @property
    def request_id(self) -> str:
        return str(self.request["id"])


def answers(history: list[Item], input_start: int, signer: ApprovalSigner,
            lookup: Callable[[str], ToolDef | None]) -> list[Answer]:
    """The new input's approval responses, each matched to its request in the conversation.

    An answer the conversation already acted on is skipped, so resending a full history never runs a
    call twice: an approval whose call is there, a denial whose call is there or that the model's
    output follows. Anything that does not match is a 400 naming the input item. Whether an answer
    was used before is for the caller to check (``refusal`` words the error).
    """
    requests: dict[str, tuple[int, Item]] = {}
    acted = _acted_on(history)
    last_output = max((pos for pos, i in enumerate(history) if _from_model(i)), default=-1)
    out: dict[str, Answer] = {}
    for pos, item in enumerate(history):
        kind = item["type"]
        if kind == "mcp_approval_request":
            requests.setdefault(item["id"], (pos, item))
            continue
        if kind != "mcp_approval_response" or pos < input_start:
            continue
        param = f"input[{pos - input_start}]"
        rid = item["approval_request_id"]
        found = requests.get(rid)
        if found is None:
            raise InvalidRequest(f"No MCP approval request with id '{rid}' comes before this approval response.",
                                 param=f"{param}.approval_request_id", code="invalid_value")
        where, request = found
        if not signer.genuine(request):
            raise InvalidRequest(f"The MCP approval request '{rid}' was not issued by this server to this caller, "
                                 "or was changed.",
                                 param=f"input[{where - input_start}]" if where >= input_start else param,
                                 code="invalid_value")
        if rid in out:
            raise InvalidRequest(f"The MCP approval request '{rid}' is answered twice.", param=param,
                                 code="invalid_value")
        tool = lookup(request["name"])
        if tool is None or tool.server_label != request["server_label"]:
            raise InvalidRequest(
                f"The MCP approval request '{rid}' is for tool '{request['name']}' of '{request['server_label']}', "
                "which is not one of this request's tools.", param=f"{param}.approval_request_id",
                code="invalid_value")
        approve = bool(item["approve"])
        if rid not in acted and (approve or pos > last_output):
            out[rid] = Answer(request, approve, item.get("reason"), pos - input_start)
    return list(out.values())


def refusal(answer: Answer, why: str) -> InvalidRequest:
    """The 400 for an answer the record of used approvals refuses (``store.approvals``)."""
    rid, param = answer.request_id, f"input[{answer.index}]"
    if why == "used":
        return InvalidRequest(f"The MCP approval request '{rid}' was already answered: an approval or denial is "
                              "used once.", param=param, code="approval_already_used")
    return InvalidRequest(f"The MCP approval request '{rid}' cannot be answered: it was not issued to this caller, "
                          "it expired, or the response that issued it was deleted.",
                          param=f"{param}.approval_request_id", code="approval_not_found")


def _acted_on(history: list[Item]) -> set[str]:
    """Approval requests whose call (or denial) is already in the conversation."""
    done = {i["call_id"] for i in history if i["type"] == "function_call"}
    done.update(i["approval_request_id"] for i in history if i["type"] == "mcp_call" and i.get("approval_request_id"))
    return done


def _from_model(item: Item) -> bool:
    """Output of a model turn: a denial it follows was already told to the model."""
    kind = item["type"]
    return kind in _MODEL_ITEMS or (kind == "message" and item.get("role") == "assistant")


def denial_text(reason: str | None) -> str:
    return "Error: the user did not approve this call" + (f": {reason}" if reason else ".")


def model_view(history: list[Item]) -> list[Item]:
    """The history as a model reads it: MCP items become the call/output pairs every provider knows.

    ``mcp_call`` becomes a function call and its output; a denied approval request that nothing
    answered yet becomes a call whose output says so; listings, pending requests and the answers
    themselves are bookkeeping the model does not need.
    """
    if not any(i["type"].startswith("mcp_") for i in history):
        return history
    acted = _acted_on(history)
    denied = {i["approval_request_id"]: i for i in history
              if i["type"] == "mcp_approval_response" and not i["approve"]}
    out: list[Item] = []
    for item in history:
        kind = item["type"]
        if kind == "mcp_call":
            result = item.get("output")
            if result is None:
                result = f"Error: {_error_text(item.get('error'))}"
            out += _pair(item["id"], item["name"], item["arguments"], result)
        elif kind == "mcp_approval_request":
            answer = denied.get(item["id"])
            if answer is not None and item["id"] not in acted:
                out += _pair(item["id"], item["name"], item["arguments"], denial_text(answer.get("reason")))
        elif not kind.startswith("mcp_"):
            out.append(item)
    return out


def _pair(call_id: str, name: str, arguments: str, output: str) -> list[Item]:
    call: FunctionCallItem = {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
                              "status": "completed"}
    result: FunctionCallOutputItem = {"type": "function_call_output", "call_id": call_id, "output": output,
                                      "status": "completed"}
    return [as_item(call), as_item(result)]


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("content") or error)
    return str(error or "the call failed")
