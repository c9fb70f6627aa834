"""Persistence of responses, items and event logs (SQLite by default, PostgreSQL by URL)."""

from opensupervisor.store.store import Store, Stored, engine_url

__all__ = ["Store", "Stored", "engine_url"]
