"""Persistence of responses, items and event logs (SQLite by default, PostgreSQL by URL)."""

from opensupervisor.store.store import Store, async_url

__all__ = ["Store", "async_url"]
