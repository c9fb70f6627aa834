"""Tables of the response store. Changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text, text

metadata = MetaData()

_UNCLAIMED = "owner_executor IS NULL AND background"
responses = Table(
    "os_responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("background", Boolean, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Milliseconds: the order of listings (``created_at`` is in seconds, which many responses share).
    Column("created_ms", BigInteger, nullable=True),
    Column("previous_response_id", String(64), nullable=True),
    # Epoch milliseconds of the last sign of life of the process running a background response.
    Column("heartbeat_at", BigInteger, nullable=True),
    # The Response object without ``output`` (output items live in os_response_items).
    Column("response", Text, nullable=False),
    # The create request as received, for background runs and audits.
    Column("request", Text, nullable=False),
    # How the server runs it, beyond the request (JSON: e.g. whether the output echoes the history).
    Column("options", Text, nullable=True),
    # Background runs: bumped by each process that starts or resumes the run, which names itself in
    # ``owner_executor``; the run's writes carry the epoch they were claimed with, and a stale one is
    # refused (the process was taken for dead and the run went to another).
    Column("owner_epoch", Integer, nullable=False, server_default="0"),
    Column("owner_executor", String(64), nullable=True),
    # The pool of processes (one durable-execution database) whose queue a background run waits in.
    Column("run_pool", String(32), nullable=True),
    Index("ix_os_responses_owner_created", "owner", "created_at"),
    Index("ix_os_responses_owner_created_ms", "owner", "created_ms"),
    Index("ix_os_responses_created_ms", "created_ms"),
    Index("ix_os_responses_status", "status", "background"),
    # The queue (``store.run_queue``): background runs no process has taken.
    Index("ix_os_responses_unclaimed", "run_pool", "created_at", sqlite_where=text(_UNCLAIMED),
          postgresql_where=text(_UNCLAIMED)),
)

items = Table(
    "os_response_items",
    metadata,
    Column("response_id", String(64), primary_key=True),
    # "input" or "output"
    Column("kind", String(8), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("item_id", String(64), nullable=True),
    Column("item", Text, nullable=False),
    Index("ix_os_response_items_item_id", "item_id"),
)

events = Table(
    "os_response_events",
    metadata,
    Column("response_id", String(64), primary_key=True),
    Column("sequence_number", Integer, primary_key=True),
    Column("event", Text, nullable=False),
)

# Processes that run background responses (DBOS executors), so that a live one can tell when
# another died and recover its runs. ``pool`` names the DBOS system database they share.
executors = Table(
    "os_executors",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("pool", String(64), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
)

# The steps of background runs (``runs.checkpoints``): each model call, hosted call, tool listing
# and history read, in the order its run made them, with its ``output`` once it finished. A hosted
# call is claimed (a row with no output yet) before it runs, so that two processes running the same
# run never both run it.
run_steps = Table(
    "os_run_steps",
    metadata,
    Column("response_id", String(64), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("executor", String(64), nullable=False),
    Column("claimed_at", BigInteger, nullable=False),
    Column("output", Text, nullable=True),
    # The run's ownership epoch of the copy that claimed the step: one process may hold two copies
    # of a run (paused past the executor timeout, it was handed its own run back).
    Column("epoch", Integer, nullable=True),
)

# Genie conversations: each message as the Genie REST API shows it, and its query result.
genie_messages = Table(
    "os_genie_messages",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("conversation_id", String(64), nullable=False),
    Column("space_id", String(255), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("message", Text, nullable=False),
    Column("result", Text, nullable=True),
    Index("ix_os_genie_messages_conversation", "conversation_id", "created_at"),
)

# Catalog functions registered at run time: the entry as in the workspace file, and a Python
# function's source. ``updated_at`` (epoch ms) tells processes which ones changed.
functions = Table(
    "os_functions",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("entry", Text, nullable=False),
    Column("source_code", Text, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
)

# Keys the server makes for itself and every process sharing the store uses (never user secrets).
keys = Table(
    "os_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Connections registered at run time: the entry without secrets, and the secrets sealed with the
# server's secret key (``opensupervisor.vault``).
connections = Table(
    "os_connections",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("entry", Text, nullable=False),
    Column("sealed", Text, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
)

# Who may call: users, service principals and groups (``kind``); members of groups; and personal
# access tokens, stored as SHA-256 hashes (shown once, revocable, optionally expiring).
principals = Table(
    "os_principals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("is_admin", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

group_members = Table(
    "os_group_members",
    metadata,
    Column("group_id", String(64), primary_key=True),
    Column("member_id", String(64), primary_key=True),
    Index("ix_os_group_members_member", "member_id"),
)

tokens = Table(
    "os_tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("principal_id", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("comment", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    Index("ix_os_tokens_principal", "principal_id"),
)

# Grants changed through the admin API: ``kind:name`` and the JSON list of principals that may use it.
grants = Table(
    "os_grants",
    metadata,
    Column("object", String(512), primary_key=True),
    Column("principals", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Usage: one row per response that ran; ``calls`` is the JSON list of its model calls and their
# tokens ({"model", "input_tokens", "output_tokens"}).
usage = Table(
    "os_usage",
    metadata,
    Column("response_id", String(64), primary_key=True),
    Column("principal", String(255), nullable=False),
    Column("model", String(255), nullable=False),
    Column("day", String(10), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("model_calls", Integer, nullable=False),
    Column("tool_calls", Integer, nullable=False),
    Column("latency_ms", BigInteger, nullable=False),
    Column("calls", Text, nullable=False),
    # The model calls tools make themselves (also listed in ``calls``, with their ``purpose``).
    Column("tool_input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("tool_output_tokens", BigInteger, nullable=False, server_default="0"),
    Index("ix_os_usage_day", "day"),
)

# Rate limits set through the admin API, per model (they replace the workspace file's for it):
# the JSON list of limits in the gateway's shape.
rate_limits = Table(
    "os_rate_limits",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("limits", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Rate-limit counters: a bucket's calls and tokens in one minute (``minute`` = epoch minute).
rate_counters = Table(
    "os_rate_counters",
    metadata,
    Column("bucket", String(600), primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("calls", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
)

# Per-user credentials of connections that run as each caller (on behalf of the user): the
# caller's own token for the connection, sealed with the server's key.
user_credentials = Table(
    "os_user_credentials",
    metadata,
    Column("connection", String(255), primary_key=True),
    Column("principal_id", String(64), primary_key=True),
    Column("sealed", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# MCP approval requests as issued, whatever the issuing response's ``store``: to whom, by which
# response, until when they may be answered, and which response acted on the answer (``used_by``,
# set once). Rows are removed once past ``expires_at``.
approvals = Table(
    "os_approvals",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("principal", String(255), nullable=False),
    Column("response_id", String(64), nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_by", String(64), nullable=True),
    Column("used_at", BigInteger, nullable=True),
    Index("ix_os_approvals_expires", "expires_at"),
    Index("ix_os_approvals_response", "response_id"),
)

idempotency_keys = Table(
    "os_idempotency_keys",
    metadata,
    Column("principal", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    # sha256 of the route and the canonical JSON of the request body
    Column("request_hash", String(64), nullable=False),
    # The process that claimed the key: a claim whose process died without storing a response is void.
    Column("executor", String(255), nullable=False),
    Column("response_id", String(64), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_os_idempotency_keys_expires", "expires_at"),
    Index("ix_os_idempotency_keys_response", "response_id"),
)

# Conversations (``/v1/conversations``): the caller's, with their metadata. ``next_position`` is the
# position the next appended item takes (appends lock the row, so positions never collide). A
# response running in the conversation holds it (``busy_response``, since ``busy_at``, epoch ms; run
# by ``busy_executor`` when it is a foreground one), so that two never build on the same items at once.
conversations = Table(
    "os_conversations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("next_position", Integer, nullable=False),
    Column("busy_response", String(64), nullable=True),
    Column("busy_executor", String(64), nullable=True),
    Column("busy_at", BigInteger, nullable=True),
    Index("ix_os_conversations_owner", "owner", "created_at"),
)

conversation_items = Table(
    "os_conversation_items",
    metadata,
    Column("conversation_id", String(64), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("item_id", String(64), nullable=False),
    Column("item", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_os_conversation_items_item", "conversation_id", "item_id"),
)
