"""``opensupervisor users``, ``tokens`` and ``usage``: principals, personal access tokens, who used what.

Every command is an admin service's operation (``opensupervisor.admin``), as the admin API's is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from opensupervisor.admin.defaults import DEFAULT_GROUP_BY
from opensupervisor.cli_support import with_store
from opensupervisor.identity.principal import MAX_TOKEN_LIFETIME_S, Kind

if TYPE_CHECKING:
    from opensupervisor.admin.identity import PrincipalAdmin

T = TypeVar("T")


def _call(action: Callable[[PrincipalAdmin], Awaitable[T]]) -> T:
    # Nothing of the grants is kept in this process: servers reload them within seconds.
    from opensupervisor.admin.identity import PrincipalAdmin
    from opensupervisor.store.principals import Principals

    return with_store(lambda store, settings: action(PrincipalAdmin(Principals(store))))


@click.group()
def users() -> None:
    """Users, service principals and groups."""


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May manage the server (admin API and every response).")
@click.option("--service-principal", "service", is_flag=True, help="A machine identity rather than a person.")
@click.option("--group", is_flag=True, help="A group of users (members are added with add-member).")
def users_add(name: str, admin: bool, service: bool, group: bool) -> None:
    """Add a user (or service principal, or group) NAME."""
    if group and service:
        raise click.UsageError("a principal is a group or a service principal, not both")
    kind: Kind = "group" if group else "service_principal" if service else "user"
    row = _call(lambda p: p.create({"name": name, "kind": kind, "admin": admin}))
    click.echo(f"added {row.kind} {row.name}", err=True)


@users.command("list")
def users_list() -> None:
    """Every principal: name, kind, groups, admin."""
    for row in _call(lambda p: p.all()):
        click.echo(f"{row.name}\t{row.kind}\t{','.join(row.groups)}\t{'admin' if row.is_admin else ''}")


@users.command("remove")
@click.argument("name")
def users_remove(name: str) -> None:
    """Remove NAME with its group memberships, tokens and stored credentials, and from stored grants."""
    _call(lambda p: p.remove(name))
    click.echo(f"removed {name}", err=True)


@users.command("add-member")
@click.argument("group")
@click.argument("member")
def users_add_member(group: str, member: str) -> None:
    """Put MEMBER in GROUP."""
    _call(lambda p: p.set_member(group, {"member": member}, True))


@users.command("remove-member")
@click.argument("group")
@click.argument("member")
def users_remove_member(group: str, member: str) -> None:
    """Take MEMBER out of GROUP."""
    _call(lambda p: p.set_member(group, {"member": member}, False))


@click.group()
def tokens() -> None:
    """Personal access tokens (stored hashed; shown once)."""


@tokens.command("create")
@click.argument("name")
@click.option("--lifetime-days", type=click.FloatRange(min=0, min_open=True, max=MAX_TOKEN_LIFETIME_S / 86400),
              default=None, help="Expire after this many days (default: never; at most ten years).")
@click.option("--comment", default=None, help="What the token is for (at most 1,000 characters).")
def tokens_create(name: str, lifetime_days: float | None, comment: str | None) -> None:
    """Make a token for NAME and print it (the only time it is shown)."""
    fields: dict[str, object] = {"comment": comment}
    if lifetime_days is not None:
        fields["lifetime_seconds"] = max(1, round(lifetime_days * 86400))
    token, record = _call(lambda p: p.issue_token(name, fields))
    click.echo(token)
    click.echo(f"token {record.id} for {name}: keep it now, it is not shown again", err=True)


@tokens.command("list")
@click.argument("name", required=False)
def tokens_list(name: str | None) -> None:
    """Tokens (of NAME, or of everyone): id, principal, state, expiry, comment."""
    for row in _call(lambda p: p.tokens(name)):
        state = "revoked" if row.revoked_at is not None else "active"
        expires = "never" if row.expires_at is None else str(row.expires_at // 1000)
        click.echo(f"{row.id}\t{row.principal}\t{state}\t{expires}\t{row.comment or ''}")


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke token TOKEN_ID (every server refuses it within seconds)."""
    _call(lambda p: p.revoke(token_id))


@click.command("usage")
@click.option("--by", "group_by", default=DEFAULT_GROUP_BY, show_default=True,
              help="Comma-separated: principal, model, day (empty: one total).")
@click.option("--since", default=None, help="First day (YYYY-MM-DD).")
@click.option("--until", default=None, help="Last day (YYYY-MM-DD).")
@click.option("--principal", default=None, help="Only this caller.")
def usage(group_by: str, since: str | None, until: str | None, principal: str | None) -> None:
    """Who used what: responses, tokens, model and tool calls, mean latency."""
    from tabulate import tabulate

    from opensupervisor.admin.identity import usage_report
    from opensupervisor.store.usage import Usage

    report = with_store(lambda store, settings: usage_report(Usage(store), group_by, since=since, until=until,
                                                             principal=principal))
    keys: list[str] = list(report["group_by"])
    columns = [*keys, "responses", "input_tokens", "output_tokens", "tool_input_tokens", "tool_output_tokens",
               "model_calls", "tool_calls", "mean_latency_ms", "not_completed"]
    click.echo(tabulate([[row[c] for c in columns] for row in report["data"]], headers=columns, tablefmt="github"))
