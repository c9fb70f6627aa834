"""Persistence of responses, items and event logs (SQLite by default, PostgreSQL by URL)."""

from opensupervisor.engines import engine_url
from opensupervisor.store.response_rows import Stored
from opensupervisor.store.store import Store

__all__ = ["Store", "Stored", "engine_url"]
