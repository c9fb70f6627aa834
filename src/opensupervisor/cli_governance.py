"""``opensupervisor grants`` and ``rate-limits``: who may use what, and how much, set at run time.

Every command is an admin service's operation (``opensupervisor.admin``), as the admin API's is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from opensupervisor.cli_support import with_store
from opensupervisor.settings import Settings

if TYPE_CHECKING:
    from opensupervisor.admin.governance import GrantAdmin, LimitAdmin
    from opensupervisor.store import Store

T = TypeVar("T")
CONFIG = click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                      help="Workspace file. Default: $OPENSUPERVISOR_CONFIG, else the demo workspace.")


def _grants(config: str | None, action: Callable[[GrantAdmin], Awaitable[T]]) -> T:
    # Imported here, not at the top: ``--help`` stays quick to start.
    from opensupervisor.admin.governance import GrantAdmin
    from opensupervisor.identity.grants import Access
    from opensupervisor.store.grants import StoredGrants
    from opensupervisor.store.principals import Principals
    from opensupervisor.workspace import load_workspace

    async def run(store: Store, settings: Settings) -> T:
        ws = load_workspace(config or settings.config)
        admin = GrantAdmin(Access(ws.access.grants, ws.access.default), StoredGrants(store), Principals(store))
        await admin.reload()
        return await action(admin)

    return with_store(run)


def _limits(config: str | None, action: Callable[[LimitAdmin], Awaitable[T]]) -> T:
    from opensupervisor.admin.governance import LimitAdmin
    from opensupervisor.identity.limits import RateLimiter
    from opensupervisor.store.rate_limits import DatabaseCounters, StoredRateLimits
    from opensupervisor.workspace import load_workspace

    async def run(store: Store, settings: Settings) -> T:
        ws = load_workspace(config or settings.config)
        # The counters are never touched here: a limiter only to know which limits apply.
        limiter = RateLimiter({name: entry.rate_limits for name, entry in ws.models.items()}, DatabaseCounters(store))
        admin = LimitAdmin(limiter, StoredRateLimits(store), ws.models)
        await admin.reload()
        return await action(admin)

    return with_store(run)


@click.group()
def grants() -> None:
    """Who may use a model or tool (stored grants join the workspace file's)."""


@grants.command("list")
@CONFIG
def grants_list(config: str | None) -> None:
    """Every grant: object, privilege, principals, origin (workspace or stored)."""

    async def listing(admin: GrantAdmin) -> dict[str, Any]:
        return admin.listing()

    shown = _grants(config, listing)
    click.echo(f"objects without grants: {shown['default']}", err=True)
    for row in shown["data"]:
        click.echo(f"{row['object']}\t{row['privilege']}\t{','.join(row['principals'])}\t{row['origin']}")


@grants.command("set")
@click.argument("obj", metavar="OBJECT")
@click.argument("principals", nargs=-1)
@CONFIG
def grants_set(obj: str, principals: tuple[str, ...], config: str | None) -> None:
    """Let PRINCIPALS (users, service principals, groups) use OBJECT, e.g. genie_space:sales; the list
    replaces the one before (none: only admins)."""
    _grants(config, lambda admin: admin.put(obj, {"principals": list(principals)}))


@grants.command("remove")
@click.argument("obj", metavar="OBJECT")
@CONFIG
def grants_remove(obj: str, config: str | None) -> None:
    """Remove the stored grants on OBJECT (it follows the workspace's default again)."""
    _grants(config, lambda admin: admin.remove(obj))


@click.group("rate-limits")
def rate_limits() -> None:
    """Queries and tokens per minute per model (set here, they replace the workspace file's)."""


@rate_limits.command("list")
@CONFIG
def limits_list(config: str | None) -> None:
    """Every model with limits: model, source (workspace or api), the limits as JSON."""

    async def listing(admin: LimitAdmin) -> list[dict[str, Any]]:
        return admin.listing()

    for row in _limits(config, listing):
        click.echo(f"{row['model']}\t{row['source']}\t{orjson.dumps(row['rate_limits']).decode()}")


@rate_limits.command("set")
@click.argument("model")
@click.argument("limits", metavar="JSON")
@CONFIG
def limits_set(model: str, limits: str, config: str | None) -> None:
    """Replace MODEL's limits with JSON, a list as the API takes it: '[{"key": "user", "calls": 10}]'."""
    try:
        parsed = orjson.loads(limits)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="JSON") from exc
    _limits(config, lambda admin: admin.put(model, {"rate_limits": parsed}))


@rate_limits.command("remove")
@click.argument("model")
@CONFIG
def limits_remove(model: str, config: str | None) -> None:
    """Remove MODEL's limits set at run time (the workspace file's apply again)."""
    _limits(config, lambda admin: admin.remove(model))
