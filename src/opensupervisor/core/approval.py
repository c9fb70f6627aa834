"""MCP approval: signed approval requests, matching the user's answers, and what the model sees.

A call to a tool that needs approval does not run: the run ends with an ``mcp_approval_request``
item, and the client continues (full history resent, or ``previous_response_id``) with an
``mcp_approval_response``. The request's id is signed with a key the server keeps, so a client
cannot approve a call the model never asked for, or change its arguments on the way back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from opensupervisor.core.contracts import ToolDef
from opensupervisor.errors import InvalidRequest
from opensupervisor.wire.items import Item

PREFIX = "mcpr_"
_NONCE = 24
_MAC = 32


@dataclass(frozen=True, slots=True)
class ApprovalSigner:
    key: bytes

    def request_id(self, nonce: str, server_label: str, name: str, arguments: str) -> str:
        """``mcpr_`` + nonce + MAC over what the user is asked to approve (61 characters)."""
        message = "\x1f".join((nonce, server_label, name, arguments)).encode()
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


def answers(history: list[Item], input_start: int, signer: ApprovalSigner,
            lookup: Callable[[str], ToolDef | None]) -> list[Answer]:
    """The new input's approval responses, each matched to its request in the conversation.

    An answer the conversation already acted on (the resent history holds the call it led to) is
    skipped, so resending a full history never runs a call twice. Anything that does not match is
    a 400 naming the input item.
    """
    requests: dict[str, tuple[int, Item]] = {}
    acted = _acted_on(history)
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
            raise InvalidRequest(f"The MCP approval request '{rid}' was not issued by this server, or was changed.",
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
        if rid not in acted:
            out[rid] = Answer(request, bool(item["approve"]), item.get("reason"))
    return list(out.values())


def _acted_on(history: list[Item]) -> set[str]:
    """Approval requests whose call (or denial) is already in the conversation."""
    done = {i["call_id"] for i in history if i["type"] == "function_call"}
    done.update(i["approval_request_id"] for i in history if i["type"] == "mcp_call" and i.get("approval_request_id"))
    return done


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
    return [{"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"},
            {"type": "function_call_output", "call_id": call_id, "output": output, "status": "completed"}]


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("content") or error)
    return str(error or "the call failed")
