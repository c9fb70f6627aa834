"""Process settings from the environment (``OPENSUPERVISOR_*``) and CLI flags."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from opensupervisor.files import private_file

DATA_DIR = Path(".opensupervisor")


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = f"sqlite:///{DATA_DIR}/opensupervisor.db"
    config: str | None = None
    admin_token: str = ""
    data_dir: Path = DATA_DIR
    # DBOS's system database for background runs (default: beside the store) and its schema.
    system_database_url: str | None = None
    system_schema: str = "dbos"
    # Overrides the workspace's background.worker_concurrency for this process.
    worker_concurrency: int | None = None
    # Where knowledge assistants' passages are indexed (default: the store's database).
    knowledge_url: str | None = None
    # Where trace_destination tables go: PostgreSQL (default: the store's, when it is PostgreSQL),
    # else SQLite files under <data dir>/traces.
    trace_url: str | None = None
    # Rate-limit counters in Redis instead of the store's database.
    redis_url: str | None = None

    @property
    def trace_database_url(self) -> str | None:
        if self.trace_url:
            return self.trace_url
        return self.database_url if self.database_url.startswith("postgresql") else None

    @property
    def knowledge_database_url(self) -> str:
        return self.knowledge_url or self.database_url

    @property
    def self_url(self) -> str:
        """How this server reaches itself: where workspace URLs that start with ``/`` point."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        data_dir = Path(env.get("OPENSUPERVISOR_DATA_DIR", str(DATA_DIR)))
        return cls(
            host=env.get("OPENSUPERVISOR_HOST", "127.0.0.1"),
            port=int(env.get("OPENSUPERVISOR_PORT", "8000")),
            database_url=env.get("OPENSUPERVISOR_DATABASE_URL", f"sqlite:///{data_dir}/opensupervisor.db"),
            config=env.get("OPENSUPERVISOR_CONFIG") or None,
            admin_token=env.get("OPENSUPERVISOR_ADMIN_TOKEN", ""),
            data_dir=data_dir,
            system_database_url=env.get("OPENSUPERVISOR_SYSTEM_DATABASE_URL") or None,
            system_schema=env.get("OPENSUPERVISOR_SYSTEM_SCHEMA", "dbos"),
            worker_concurrency=int(env["OPENSUPERVISOR_WORKER_CONCURRENCY"])
            if env.get("OPENSUPERVISOR_WORKER_CONCURRENCY") else None,
            knowledge_url=env.get("OPENSUPERVISOR_KNOWLEDGE_DATABASE_URL") or None,
            trace_url=env.get("OPENSUPERVISOR_TRACE_DATABASE_URL") or None,
            redis_url=env.get("OPENSUPERVISOR_REDIS_URL") or None,
        )


def ensure_admin_token(settings: Settings) -> tuple[str, bool]:
    """The bootstrap admin token: from the environment, else saved under the data dir, else a new one.

    Returns the token and whether it was just generated (the caller prints it once).
    """
    if settings.admin_token:
        return settings.admin_token, False
    path = settings.data_dir / "admin_token"
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    token = "os-" + secrets.token_urlsafe(32)
    private_file(path)
    path.write_text(token + "\n", encoding="utf-8")
    return token, True
