"""Input items: validation and normalization to the canonical item dicts the loop works on.

Clients echo output items back with ``item.model_dump()``, which keeps every key whose value is
``None`` (``"phase": None``, ``"logprobs": None`` …), so each item model ignores unknown keys and
accepts nulls for optional ones; what is kept is rebuilt into one canonical shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict, cast

from pydantic import BaseModel, ConfigDict, Field

from opensupervisor.errors import InvalidRequest
from opensupervisor.wire.validation import validated

# A Responses item in canonical form (what the loop, the models and the store exchange). Code that
# reads items of any kind reads this; code that builds one builds a typed shape below.
Item = dict[str, Any]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


# -- the typed shapes of canonical items -------------------------------------------------------
# A key is required where the input models below require it, so one shape serves an item that
# came in and one this server made; every key an item may carry is named, so a misspelt one fails.

class InputText(TypedDict):
    type: Literal["input_text"]
    text: str


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]]
    # Streamed output has it (always empty); parts that came in as input do not.
    logprobs: NotRequired[list[dict[str, Any]]]


class Refusal(TypedDict):
    type: Literal["refusal"]
    refusal: str


class InputImage(TypedDict):
    type: Literal["input_image"]
    detail: Literal["low", "high", "auto", "original"]
    image_url: NotRequired[str]
    file_id: NotRequired[str]


class InputFile(TypedDict):
    type: Literal["input_file"]
    file_id: NotRequired[str]
    file_data: NotRequired[str]
    file_url: NotRequired[str]
    filename: NotRequired[str]


MessagePart = InputText | OutputText | Refusal | InputImage | InputFile


class MessageItem(TypedDict):
    type: Literal["message"]
    role: Literal["user", "assistant", "system", "developer"]
    content: list[MessagePart]
    id: NotRequired[str]
    status: NotRequired[ItemStatus]
    phase: NotRequired[Literal["commentary", "final_answer"]]


class FunctionCallItem(TypedDict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: NotRequired[str]
    status: NotRequired[ItemStatus]


class FunctionCallOutputItem(TypedDict):
    type: Literal["function_call_output"]
    call_id: str
    # A string, or (as a client may send it) content parts.
    output: str | list[MessagePart]
    id: NotRequired[str]
    status: NotRequired[ItemStatus]


class SummaryText(TypedDict):
    type: Literal["summary_text"]
    text: str


class ReasoningText(TypedDict):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(TypedDict):
    type: Literal["reasoning"]
    summary: list[SummaryText]
    id: NotRequired[str]
    content: NotRequired[list[ReasoningText]]
    encrypted_content: NotRequired[str]
    status: NotRequired[ItemStatus]


class McpCallItem(TypedDict):
    type: Literal["mcp_call"]
    id: str
    server_label: str
    name: str
    arguments: str
    status: NotRequired[Literal["in_progress", "completed", "incomplete", "calling", "failed"]]
    approval_request_id: NotRequired[str]
    output: NotRequired[str | None]
    # {"type": "mcp_tool_execution_error", "content": [text parts]} when the call failed.
    error: NotRequired[dict[str, Any] | None]


class McpListToolsItem(TypedDict):
    type: Literal["mcp_list_tools"]
    id: str
    server_label: str
    # Each {"name", "input_schema", "description"?, "annotations"?}, as the server listed it.
    tools: list[dict[str, Any]]
    error: NotRequired[Any]


class McpApprovalRequestItem(TypedDict):
    type: Literal["mcp_approval_request"]
    id: str
    server_label: str
    name: str
    arguments: str


class McpApprovalResponseItem(TypedDict):
    type: Literal["mcp_approval_response"]
    approval_request_id: str
    approve: bool
    id: NotRequired[str]
    reason: NotRequired[str]


class ItemReference(TypedDict):
    type: Literal["item_reference"]
    id: str


TypedItem = (MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | McpCallItem
             | McpListToolsItem | McpApprovalRequestItem | McpApprovalResponseItem | ItemReference)


def as_item(item: TypedItem) -> Item:
    """A built item as the loop holds every item: one shape for all kinds, read by ``type``.

    The same object, not a copy: the loop goes on filling in an item it has already emitted.
    """
    return cast(Item, item)


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


# Item ids are at most 64 characters everywhere (databricks-openai cuts longer ones).
ItemId = Annotated[str, Field(min_length=1, max_length=64)]


class _Part(_Item):
    type: Literal["input_text", "output_text", "text", "refusal", "input_image", "input_file",
                  "summary_text", "reasoning_text", "input_audio"]
    text: str | None = None
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = None
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto", "original"] | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None
    input_audio: dict[str, Any] | None = None


class _Message(_Item):
    type: Literal["message"] = "message"
    id: ItemId | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_Part]
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class _FunctionCall(_Item):
    type: Literal["function_call"]
    id: ItemId | None = None
    call_id: str
    name: str
    arguments: str
    status: ItemStatus | None = None


class _FunctionCallOutput(_Item):
    type: Literal["function_call_output"]
    id: ItemId | None = None
    call_id: str
    output: str | list[_Part]
    status: ItemStatus | None = None


class _ItemReference(_Item):
    type: Literal["item_reference"]
    id: ItemId


class _Reasoning(_Item):
    type: Literal["reasoning"]
    id: ItemId | None = None
    summary: list[dict[str, Any]]
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None


class _McpApprovalRequest(_Item):
    type: Literal["mcp_approval_request"]
    id: ItemId
    server_label: str
    name: str
    arguments: str


class _McpApprovalResponse(_Item):
    type: Literal["mcp_approval_response"]
    id: ItemId | None = None
    approval_request_id: str
    approve: bool
    reason: str | None = None


class _McpCall(_Item):
    type: Literal["mcp_call"]
    id: ItemId
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: Any = None
    approval_request_id: str | None = None
    status: str | None = None


class _Compaction(_Item):
    type: Literal["compaction"]
    id: ItemId | None = None
    encrypted_content: str = Field(min_length=1)
    created_by: str | None = None


class _McpListTools(_Item):
    type: Literal["mcp_list_tools"]
    id: ItemId
    server_label: str
    tools: list[dict[str, Any]]
    error: Any = None


_ITEM_MODELS: dict[str, type[_Item]] = {
    "message": _Message,
    "function_call": _FunctionCall,
    "function_call_output": _FunctionCallOutput,
    "item_reference": _ItemReference,
    "reasoning": _Reasoning,
    "mcp_approval_request": _McpApprovalRequest,
    "mcp_approval_response": _McpApprovalResponse,
    "mcp_call": _McpCall,
    "mcp_list_tools": _McpListTools,
    "compaction": _Compaction,
}


def normalize_input(value: str | list[dict[str, Any]] | None) -> list[Item]:
    """Validate ``input`` and return canonical items; errors name ``input[i].<field>``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [user_message(value)]
    return [normalize_item(item, f"input[{i}]") for i, item in enumerate(value)]


def user_message(text: str) -> Item:
    message: MessageItem = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return as_item(message)


def normalize_item(item: dict[str, Any], param: str) -> Item:
    """Validate one input item and rebuild it in canonical form."""
    kind = item.get("type", "message" if "role" in item else None)
    if not isinstance(kind, str):
        raise InvalidRequest(f"Missing required parameter: '{param}.type'.", param=f"{param}.type",
                             code="missing_required_parameter")
    model = _ITEM_MODELS.get(kind)
    if model is None:
        raise InvalidRequest(f"Invalid value for '{param}.type': '{kind}' is not a supported input item type.",
                             param=f"{param}.type", code="invalid_value")
    parsed = validated(model, item, param)
    if isinstance(parsed, _Message):
        return _canonical_message(parsed, param)
    if isinstance(parsed, _FunctionCallOutput):
        out = parsed.model_dump(exclude_none=True)
        if isinstance(parsed.output, list):
            out["output"] = [_canonical_part(p, f"{param}.output[{i}]") for i, p in enumerate(parsed.output)]
        return out
    return parsed.model_dump(exclude_none=True)


def _canonical_message(msg: _Message, param: str) -> Item:
    if isinstance(msg.content, str):
        part_type = "output_text" if msg.role == "assistant" else "input_text"
        content = [_canonical_part(_Part.model_validate({"type": part_type, "text": msg.content}), param)]
    else:
        content = [_canonical_part(p, f"{param}.content[{i}]") for i, p in enumerate(msg.content)]
    out: Item = {"type": "message", "role": msg.role, "content": content}
    if msg.id is not None:
        out["id"] = msg.id
    if msg.status is not None:
        out["status"] = msg.status
    if msg.phase is not None:
        out["phase"] = msg.phase
    return out


def _canonical_part(part: _Part, param: str) -> dict[str, Any]:
    if part.type in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
        if part.text is None:
            raise InvalidRequest(f"Missing required parameter: '{param}.text'.", param=f"{param}.text",
                                 code="missing_required_parameter")
        out: dict[str, Any] = {"type": part.type, "text": part.text}
        if part.type == "output_text":
            out["annotations"] = part.annotations or []
        return out
    if part.type == "refusal":
        return {"type": "refusal", "refusal": part.refusal or ""}
    if part.type == "input_image":
        if part.image_url is None and part.file_id is None:
            raise InvalidRequest(f"'{param}' needs 'image_url' or 'file_id'.", param=f"{param}.image_url",
                                 code="missing_required_parameter")
        return part.model_dump(exclude_none=True) | {"detail": part.detail or "auto"}
    return part.model_dump(exclude_none=True)


def item_text(item: Item) -> str:
    """The plain text of a message item (text parts joined), or ``""`` for other items."""
    if item.get("type") != "message":
        return ""
    return "".join(p.get("text") or p.get("refusal") or "" for p in item.get("content", []))


def check_call_pairs(history: list[Item], input_start: int) -> None:
    """Every ``function_call`` needs an output and every output a call (the Supervisor's rule).

    ``history`` is the prior context followed by the new input, which starts at ``input_start``;
    errors point into ``input``.
    """
    calls: dict[str, int] = {}
    outputs: set[str] = set()
    for pos, item in enumerate(history):
        kind = item.get("type")
        if kind == "function_call":
            calls.setdefault(item["call_id"], pos)
        elif kind == "function_call_output":
            call_id = item["call_id"]
            if call_id not in calls:
                i = pos - input_start
                raise InvalidRequest(
                    f"No tool call found for function call output with call_id {call_id}.",
                    param=f"input[{i}].call_id" if i >= 0 else "previous_response_id", code="invalid_value")
            outputs.add(call_id)
    for call_id, pos in calls.items():
        if call_id not in outputs:
            i = pos - input_start
            raise InvalidRequest(f"No tool output found for function call {call_id}.",
                                 param=f"input[{i}]" if i >= 0 else "input", code="invalid_value")
