"""`POST /v1/responses` request bodies: parsing and validation with errors that name the field."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field

from opensupervisor.errors import InvalidRequest
from opensupervisor.wire.items import Item, normalize_input
from opensupervisor.wire.validation import INT32_MAX, validated

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,255}$")
# Sampling knobs the Supervisor manages itself once hosted tools are in play.
INFERENCE_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs")
INCLUDE_VALUES = frozenset(
    {
        "message.output_text.logprobs",
        "reasoning.encrypted_content",
        "message.input_image.image_url",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FunctionToolChoice(_Strict):
    type: Literal["function"]
    name: str


class AllowedToolRef(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    name: str | None = None


class AllowedToolsChoice(_Strict):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"] = "auto"
    tools: list[AllowedToolRef] = Field(min_length=1)


ToolChoice = (
    Literal["auto", "required", "none"]
    | Annotated[FunctionToolChoice | AllowedToolsChoice, Field(discriminator="type")]
)


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None


class TraceDestination(_Strict):
    catalog_name: str
    schema_name: str
    table_prefix: str | None = None


class DatabricksOptions(_Strict):
    return_trace: bool = False


class ConversationRef(_Strict):
    id: str = Field(min_length=1, max_length=64)


class CompactionPolicy(_Strict):
    """An entry of ``context_management``: compact the history once it is past ``compact_threshold`` tokens."""

    type: Literal["compaction"]
    compact_threshold: int | None = Field(default=None, ge=1, le=INT32_MAX)


class CreateResponseRequest(_Strict):
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    metadata: dict[str, str] | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_tool_calls: int | None = Field(default=None, ge=0, le=INT32_MAX)
    text: TextConfig | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    # The conversation whose items come before the input, and which takes the input and output.
    conversation: Annotated[str, Field(min_length=1, max_length=64)] | ConversationRef | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    parallel_tool_calls: bool = True
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning: ReasoningConfig | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    prompt_cache_key: str | None = None
    stream_options: StreamOptions | None = None
    trace_destination: TraceDestination | None = None
    databricks_options: DatabricksOptions | None = None
    # The gateway's caller-provided id, kept in the inference table.
    client_request_id: str | None = Field(default=None, max_length=1024)
    user: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    context_management: list[CompactionPolicy] | None = Field(default=None, max_length=1)
    moderation: Any = None

    @property
    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation


class CompactRequest(_Strict):
    """``POST /v1/responses/compact``: what to compact (an input, a stored chain, or both)."""

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    instructions: str | None = None
    # Hints for a provider's prompt cache and tier, accepted as on create.
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    service_tier: Literal["auto", "default", "fast", "flex", "scale", "priority"] | None = None


def parse_compact_request(data: dict[str, Any]) -> tuple[CompactRequest, list[Item]]:
    body = validated(CompactRequest, data)
    return body, normalize_input(body.input)


class ToolSpec(BaseModel):
    """One entry of ``tools``: its position, type and configuration object."""

    model_config = ConfigDict(frozen=True)
    index: int
    type: str
    config: dict[str, Any]
    raw: dict[str, Any]

    @property
    def param(self) -> str:
        return f"tools[{self.index}]"


class ParsedRequest(BaseModel):
    """A validated create request: the body plus its normalized input items and tool specs."""

    body: CreateResponseRequest
    input_items: list[Item]
    tools: list[ToolSpec]


# How deep a request body may nest (OpenAI's items need a handful of levels; JSON Schemas a few dozen).
MAX_JSON_DEPTH = 64


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body, refusing anything but a JSON object."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    # Fewer brackets than the bound cannot nest past it: most bodies skip the walk.
    too_deep = _too_deep(data) if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH else None
    if too_deep is not None:
        raise InvalidRequest(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep at '{too_deep}'.",
                             param=too_deep, code="invalid_value")
    return data


Link = tuple[Any, Any] | None  # (the parent's link, the key or index), up to the body itself


def _too_deep(data: dict[str, Any]) -> str | None:
    """The path of the first value nested past ``MAX_JSON_DEPTH`` (the body is stored, traced and
    validated recursively later: orjson writes at most 254 levels, JSON Schema checks recurse), or None.
    Only containers are walked, once each; each keeps a link to its parent, so a path is spelled only
    for a body that is too deep."""
    stack: list[tuple[Any, int, Link]] = [(data, 0, None)]
    while stack:
        value, depth, link = stack.pop()
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_JSON_DEPTH:
                    return _spelled((link, key))
                stack.append((child, depth + 1, (link, key)))
    return None


def _spelled(link: Link) -> str:
    keys: list[Any] = []
    while link is not None:
        link, key = link
        keys.append(key)
    path = ""
    for key in reversed(keys):
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
    return path


def parse_create_request(data: dict[str, Any]) -> ParsedRequest:
    """Validate a create body; every failure is an ``InvalidRequest`` whose ``param`` names the field."""
    body = validated(CreateResponseRequest, data)
    tools = [_parse_tool(i, t) for i, t in enumerate(body.tools)]
    _check_tool_names_unique(tools)
    _check_rules(body, tools)
    items = normalize_input(body.input)
    return ParsedRequest(body=body, input_items=items, tools=tools)


def _parse_tool(index: int, tool: dict[str, Any]) -> ToolSpec:
    param = f"tools[{index}]"
    kind = tool.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidRequest(f"Missing required parameter: '{param}.type'.", param=f"{param}.type",
                             code="missing_required_parameter")
    if kind == "function":
        return ToolSpec(index=index, type=kind, config=_check_function_tool(param, tool), raw=tool)
    config = tool.get(kind)
    if config is None:
        # OpenAI-style flat hosted tools ({"type": "mcp", "server_label": ...}) carry their fields inline.
        config = {k: v for k, v in tool.items() if k != "type"}
    if not isinstance(config, dict):
        raise InvalidRequest(f"Invalid value for '{param}.{kind}': expected an object.", param=f"{param}.{kind}",
                             code="invalid_type")
    return ToolSpec(index=index, type=kind, config=config, raw=tool)


class FunctionToolDef(_Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


def _check_function_tool(param: str, tool: dict[str, Any]) -> dict[str, Any]:
    fn = validated(FunctionToolDef, tool, param)
    if not FUNCTION_NAME.match(fn.name):
        raise InvalidRequest(f"function tool '{fn.name}' must match ^[a-zA-Z0-9_-]{{1,64}}$",
                             param=f"{param}.name", code="invalid_value")
    if fn.parameters is not None:
        _check_schema(fn.parameters, f"{param}.parameters")
        if fn.parameters.get("type", "object") != "object":
            raise InvalidRequest(f"'{param}.parameters' must be a JSON Schema of type 'object'.",
                                 param=f"{param}.parameters", code="invalid_value")
    return {
        "type": "function",
        "name": fn.name,
        "description": fn.description,
        "parameters": fn.parameters,
        "strict": fn.strict,
    }


def _check_tool_names_unique(tools: list[ToolSpec]) -> None:
    seen: set[str] = set()
    for t in tools:
        if t.type == "function":
            name = t.config["name"]
            if name in seen:
                raise InvalidRequest(f"Duplicate function tool name '{name}'.", param=f"{t.param}.name",
                                     code="invalid_value")
            seen.add(name)


def _check_rules(body: CreateResponseRequest, tools: list[ToolSpec]) -> None:
    hosted = [t for t in tools if t.type != "function"]
    if hosted:
        for name in INFERENCE_PARAMS:
            if getattr(body, name) is not None:
                raise InvalidRequest(f"Parameter not supported when tools are provided: '{name}'.", param=name,
                                     code="unsupported_parameter")
    if body.background and not body.store:
        raise InvalidRequest("background=true requires store=true.", param="background",
                             code="unsupported_parameter")
    if body.metadata is not None:
        check_metadata(body.metadata)
    if body.conversation is not None and body.previous_response_id is not None:
        raise InvalidRequest("Mutually exclusive parameters: ensure you are only providing one of: "
                             "'previous_response_id' or 'conversation'.", param="conversation",
                             code="mutually_exclusive_parameters")
    check_include(body.include or [])
    fmt = body.text.format if body.text else None
    if fmt is not None and fmt.type == "json_schema":
        _check_json_schema_format(fmt)
    if body.trace_destination is not None:
        _check_trace_destination(body.trace_destination)
    _check_tool_choice(body.tool_choice, tools)


def check_include(values: list[str]) -> None:
    for i, value in enumerate(values):
        if value not in INCLUDE_VALUES:
            raise InvalidRequest(f"Invalid value for 'include[{i}]': '{value}' is not supported.",
                                 param=f"include[{i}]", code="invalid_value")


def check_metadata(metadata: dict[str, str], param: str = "metadata") -> None:
    if len(metadata) > 16:
        raise InvalidRequest(f"'{param}' may hold at most 16 keys.", param=param, code="invalid_value")
    for key, value in metadata.items():
        if len(key) > 64:
            raise InvalidRequest(f"Metadata key '{key[:20]}…' is longer than 64 characters.",
                                 param=f"{param}.{key}", code="invalid_value")
        if len(value) > 512:
            raise InvalidRequest(f"Metadata value of '{key}' is longer than 512 characters.",
                                 param=f"{param}.{key}", code="invalid_value")


def _check_json_schema_format(fmt: TextFormat) -> None:
    if not fmt.name or not FUNCTION_NAME.match(fmt.name):
        raise InvalidRequest("'text.format.name' is required and must match ^[a-zA-Z0-9_-]{1,64}$.",
                             param="text.format.name", code="invalid_value")
    if fmt.schema_ is None:
        raise InvalidRequest("Missing required parameter: 'text.format.schema'.", param="text.format.schema",
                             code="missing_required_parameter")
    _check_schema(fmt.schema_, "text.format.schema")


def _check_schema(schema: dict[str, Any], param: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"Invalid JSON Schema in '{param}': {exc.message}", param=param,
                             code="invalid_value") from exc
    except RecursionError as exc:  # a schema the checker cannot walk is not one a model can be held to
        raise InvalidRequest(f"Invalid JSON Schema in '{param}': it is nested too deeply.", param=param,
                             code="invalid_value") from exc


def _check_trace_destination(dest: TraceDestination) -> None:
    for field in ("catalog_name", "schema_name", "table_prefix"):
        value = getattr(dest, field)
        if value is not None and not IDENTIFIER.match(value):
            raise InvalidRequest(
                f"'trace_destination.{field}' may only hold letters, digits and underscores.",
                param=f"trace_destination.{field}", code="invalid_value")


def _check_tool_choice(choice: Any, tools: list[ToolSpec]) -> None:
    """Names can be checked here only without hosted tools; with them the run's toolbox checks."""
    function_names = {t.config["name"] for t in tools if t.type == "function"}
    hosted = any(t.type != "function" for t in tools)
    if isinstance(choice, FunctionToolChoice) and not hosted:
        if choice.name not in function_names:
            raise InvalidRequest(f"Tool choice '{choice.name}' is not one of the function tools in 'tools'.",
                                 param="tool_choice.name", code="invalid_value")
    elif isinstance(choice, AllowedToolsChoice):
        for i, ref in enumerate(choice.tools):
            if ref.type == "function" and ref.name not in function_names and not hosted:
                raise InvalidRequest(f"Allowed tool '{ref.name}' is not one of the function tools in 'tools'.",
                                     param=f"tool_choice.tools[{i}].name", code="invalid_value")
            if ref.type != "function" and not any(t.type == ref.type for t in tools):
                raise InvalidRequest(f"Allowed tool of type '{ref.type}' is not in 'tools'.",
                                     param=f"tool_choice.tools[{i}].type", code="invalid_value")
    elif choice in ("required",) and not tools:
        raise InvalidRequest("tool_choice 'required' needs at least one tool.", param="tool_choice",
                             code="invalid_value")
