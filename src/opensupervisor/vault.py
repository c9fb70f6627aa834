"""Secrets at rest: sealed with the server's secret key (Fernet: AES-128-CBC with HMAC-SHA256).

The key comes from ``OPENSUPERVISOR_SECRET_KEY`` (a Fernet key; every process of a deployment that
shares a database needs the same one), else from ``<data dir>/secret_key``, made on first use with
owner-only permissions. Sealed are: the secrets of connections registered through the admin API,
and the ``headers``/``authorization`` of ``mcp`` tools in stored requests (a background run needs
them again when it resumes, perhaps in another process).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography.fernet import Fernet, InvalidToken

from opensupervisor.errors import ConfigError
from opensupervisor.files import private_dir

KEY_ENV = "OPENSUPERVISOR_SECRET_KEY"
SEALED = "__sealed__"
REDACTED = "<redacted>"
# Fields of a request's tool entries that hold credentials, by tool type.
SECRET_TOOL_FIELDS = {"mcp": ("headers", "authorization")}
# The field of a request's tool entries that holds a URL the server calls (the ``mcp`` tool's).
URL_TOOL_FIELD = "server_url"


class Vault:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise ConfigError(f"{KEY_ENV} is not a valid key (make one with `opensupervisor secret-key`)") from exc

    @classmethod
    def load(cls, data_dir: Path) -> Vault:
        key = os.environ.get(KEY_ENV, "").strip()
        return cls(key.encode() if key else _key_file(data_dir / "secret_key"))

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def open(self, sealed: str) -> str:
        opened = self.open_or_none(sealed)
        if opened is None:
            raise ConfigError(f"a stored secret cannot be opened with this server's key ({KEY_ENV})")
        return opened

    def open_or_none(self, sealed: str) -> str | None:
        """``open`` for what a client sends back: None when it was changed or sealed by another key."""
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except (InvalidToken, UnicodeError):
            return None

    def seal_request(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The request as stored: credentials in tool entries sealed, everything else as sent."""
        return _map_secrets(raw, lambda value: {SEALED: self.seal(orjson.dumps(value).decode())})

    def open_request(self, stored: dict[str, Any]) -> dict[str, Any]:
        return _map_secrets(stored, lambda value: orjson.loads(self.open(value[SEALED]))
                            if isinstance(value, dict) and SEALED in value else value)


def redact_request(raw: dict[str, Any]) -> dict[str, Any]:
    """A request (as sent or as stored) with its tools' credentials replaced: what logs may keep.
    A URL that carries credentials (``http://user:password@host``) is refused before any run, but a
    refused request is logged too: such a URL is replaced whole."""
    redacted = _map_secrets(raw, lambda value: REDACTED)
    tools = redacted.get("tools")
    if not isinstance(tools, list) or not any(_has_userinfo(t.get(URL_TOOL_FIELD)) for t in tools
                                              if isinstance(t, dict)):
        return redacted
    scrubbed = [dict(t, **{URL_TOOL_FIELD: REDACTED}) if isinstance(t, dict) and _has_userinfo(t.get(URL_TOOL_FIELD))
                else t for t in tools]
    return {**redacted, "tools": scrubbed}


def _has_userinfo(url: Any) -> bool:
    if not isinstance(url, str) or "@" not in url:
        return False
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return True


def redact_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool entry as a response shows it: credential values replaced."""
    fields = SECRET_TOOL_FIELDS.get(str(tool.get("type")), ())
    if not any(f in tool for f in fields):
        return tool
    out = dict(tool)
    for field in fields:
        value = out.get(field)
        if isinstance(value, dict):
            out[field] = dict.fromkeys(value, REDACTED)
        elif value is not None:
            out[field] = REDACTED
    return out


def _map_secrets(raw: dict[str, Any], change: Any) -> dict[str, Any]:
    tools = raw.get("tools")
    if not isinstance(tools, list) or not any(
            isinstance(t, dict) and any(f in t for f in SECRET_TOOL_FIELDS.get(str(t.get("type")), ())) for t in tools):
        return raw
    out = copy.copy(raw)
    out["tools"] = []
    for tool in tools:
        fields = SECRET_TOOL_FIELDS.get(str(tool.get("type")), ()) if isinstance(tool, dict) else ()
        if any(f in tool for f in fields):
            tool = dict(tool)
            for field in fields:
                if tool.get(field) is not None:
                    tool[field] = change(tool[field])
        out["tools"].append(tool)
    return out


def _key_file(path: Path) -> bytes:
    """Read the key file, or make it: written aside, then linked into place, so that two processes
    starting together agree on one key."""
    if path.exists():
        return path.read_bytes().strip()
    private_dir(path.parent)
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key())
    try:
        os.link(aside, path)
    except FileExistsError:
        pass  # another process won: use its key
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()
    return path.read_bytes().strip()
