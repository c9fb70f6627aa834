"""What the store-managing commands share: open and migrate the store, run, close, report errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from opensupervisor.errors import APIError, ConfigError
from opensupervisor.settings import Settings

if TYPE_CHECKING:
    from opensupervisor.store import Store

T = TypeVar("T")


def with_store(action: Callable[[Store, Settings], Awaitable[T]]) -> T:
    """Run ``action`` against the migrated store of ``$OPENSUPERVISOR_*``. A configuration mistake,
    a conflict or a refusal of the admin services is a clean command-line error, with the message
    the admin API gives."""
    # Here, not at the top: ``--help`` and commands that need no store stay quick to start.
    from opensupervisor.store import Store
    from opensupervisor.store.principals import Conflict

    settings = Settings.from_env()

    async def run() -> T:
        store = Store(settings.database_url)
        await store.migrate()
        try:
            return await action(store, settings)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except APIError as exc:
        raise click.ClickException(exc.message) from exc
    except (ConfigError, Conflict) as exc:
        raise click.ClickException(str(exc)) from exc
