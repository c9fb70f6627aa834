"""Persistence of responses, items and event logs (SQLite by default, PostgreSQL by URL)."""

from opensupervisor.store.store import Store, engine_url

__all__ = ["Store", "engine_url"]
