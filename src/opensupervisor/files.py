"""Files and folders the server creates for its own state: readable by its user only.

The store, DBOS's system database, trace and inference tables, the knowledge index and the key and
token files hold prompts, answers and secrets. Each is created ``0600`` (SQLite gives its
``-wal``, ``-shm`` and ``-journal`` files the mode of the database file), in folders created
``0700``. Files and folders that exist already keep their mode: they may be shared on purpose.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """``path`` and each missing folder above it, created ``0700``."""
    missing: list[Path] = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs stands
            created.mkdir(mode=DIR_MODE)
            os.chmod(created, DIR_MODE)  # the umask may have taken bits mkdir was given


def private_file(path: Path) -> None:
    """Create ``path`` empty and ``0600`` (and its folders ``0700``) unless it exists."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def private_sqlite(url: str) -> None:
    """For a SQLite file URL, create the database file ``0600`` before SQLite creates it ``0644``."""
    # Here, not at the top: settings import this module, and most commands never open a database.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # the engine reports a bad URL itself
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return
    private_file(Path(db))
