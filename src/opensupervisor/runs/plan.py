"""What a run is made from: the request, who asked, and what was decided when it was admitted.

``create`` makes a ``RunPlan``; a stored background run is restored from one. The stored form is a
response row's ``request``, ``input_items`` and ``options``: ``stored_options`` writes the options,
``restored`` reads the row back into the plan create made (``runs.assemble`` builds the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from opensupervisor.identity import ADMIN, Principal
from opensupervisor.identity.limits import Ticket
from opensupervisor.store.response_rows import RunRecord
from opensupervisor.tracing.spans import DEFAULT_PREFIX, Destination
from opensupervisor.vault import Vault
from opensupervisor.wire.items import Item
from opensupervisor.wire.request import ParsedRequest, parse_create_request


class StoredPrincipal(TypedDict):
    name: str
    kind: str
    groups: list[str]


class StoredOptions(TypedDict):
    """A response row's ``options``: what its run needs beyond the request (every key but
    ``principal`` may be absent; rows stored by earlier releases lack some)."""

    principal: StoredPrincipal
    echo_history: NotRequired[bool]
    traceparent: NotRequired[str]
    rate_buckets: NotRequired[list[str]]
    trace_owner: NotRequired[str | None]
    # ``store.executors.EXECUTOR_OPTION``: the process answering a foreground response.
    executor: NotRequired[str]


@dataclass(frozen=True, slots=True)
class RunPlan:
    response_id: str
    request: ParsedRequest
    # The request as stored: its secrets sealed (``vault``).
    sealed_request: dict[str, Any]
    principal: Principal
    # The new input, resolved (item references replaced, ids given); the history of an earlier
    # response (``previous_response_id``) is read when the run is built.
    input_items: list[Item]
    # The rate-limit buckets the run was admitted in: its tokens are charged there when it ends.
    ticket: Ticket | None = None
    # Start a background response's output with the history items of its input (``runs.assemble``).
    echo: bool = False
    # The client's W3C trace context: the run's spans join its trace.
    traceparent: str | None = None
    destination: Destination | None = None
    # The process answering a foreground response (should it die, the response ends ``failed``).
    executor: str | None = None

    @property
    def previous_response_id(self) -> str | None:
        return self.request.body.previous_response_id


def stored_options(plan: RunPlan) -> StoredOptions:
    """What a stored run needs to be restored as it was started: who asked, in which groups (tools run
    as the caller), the rate-limit buckets its tokens count in, its echoed history, its trace."""
    principal = plan.principal
    options: StoredOptions = {"principal": {"name": principal.name, "kind": principal.kind,
                                            "groups": sorted(principal.groups)}}
    if plan.echo:
        options["echo_history"] = True
    if plan.traceparent:
        options["traceparent"] = plan.traceparent
    if plan.ticket is not None and plan.ticket.buckets:
        options["rate_buckets"] = plan.ticket.buckets
    if plan.destination is not None:
        options["trace_owner"] = plan.destination.owner
    if plan.executor is not None:
        options["executor"] = plan.executor
    return options


def restored(record: RunRecord, vault: Vault) -> RunPlan:
    """The plan of a stored run, as ``create`` made it."""
    parsed = parse_create_request(vault.open_request(record.request))
    options = record.options
    principal = _principal(record.owner, options)
    buckets = options.get("rate_buckets")
    return RunPlan(response_id=record.response["id"], request=parsed, sealed_request=record.request,
                   principal=principal, input_items=record.input_items,
                   ticket=Ticket(list(buckets), minute=0) if buckets else None,
                   echo=bool(options.get("echo_history")), traceparent=options.get("traceparent"),
                   destination=_destination(parsed, principal, options))


def _destination(parsed: ParsedRequest, principal: Principal, options: dict[str, Any]) -> Destination | None:
    """The destination as it was admitted (a run stored before owners were kept: its owner's)."""
    dest = parsed.body.trace_destination
    if dest is None:
        return None
    owner = options.get("trace_owner", None if principal.is_admin else principal.id)
    return Destination(dest.catalog_name, dest.schema_name, dest.table_prefix or DEFAULT_PREFIX, owner)


def _principal(owner: str, options: dict[str, Any]) -> Principal:
    if owner == ADMIN.id:
        return ADMIN
    saved = options.get("principal") or {}
    kind: Literal["user", "service_principal"] = \
        "service_principal" if saved.get("kind") == "service_principal" else "user"
    return Principal(id=owner, name=saved.get("name", owner), kind=kind, groups=frozenset(saved.get("groups", ())))
