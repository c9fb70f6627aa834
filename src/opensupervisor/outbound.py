"""Outbound URLs a request brings (the ``mcp`` tool's ``server_url``): parsed, matched part by part,
and checked again where the connection is made.

A pattern of ``[mcp] allowed_server_urls`` is ``scheme://host[:port]/path``: the host may start with
``*.`` (any subdomain) or be ``*``; the port may be ``*`` (without one, only the scheme's default);
the path is a glob over the URL's path (``/mcp``, ``/tools/*``); without one, only ``/``. A URL is
refused outright when it carries userinfo (``user@host``), a backslash, whitespace or control
characters, or a scheme other than ``http``/``https``. A host a pattern names exactly (a name or an
address) may be anything, loopback included; a host matched by a wildcard must resolve only to
public addresses (never loopback, private, link-local or reserved ones), which is checked when each
connection is made (``check_address``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_PATTERN = re.compile(r"^(?P<scheme>https?)://(?P<host>\[[0-9a-fA-F:.]+\]|[^/:\[\]@\\]+)(?::(?P<port>\*|\d{1,5}))?"
                      r"(?P<path>/[^\s\\]*)?$")
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\]")
# Headers a request may not set for the server to send: they are the connection's, not the caller's.
FORBIDDEN_HEADERS = frozenset({"host", "connection", "keep-alive", "proxy-authorization", "proxy-connection",
                               "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade",
                               "content-length", "expect"})


class UrlRefused(ValueError):
    """The URL (or header) may not be used; the message says why, without echoing credentials."""


@dataclass(frozen=True, slots=True)
class Pattern:
    scheme: str
    host: str  # lower case; "*", "*.example.com" or an exact name or address
    port: int | None  # None: any port
    path: str

    @property
    def exact_host(self) -> bool:
        return "*" not in self.host

    def matches(self, url: SplitResult) -> bool:
        host = (url.hostname or "").lower()
        if url.scheme != self.scheme or not _host_matches(self.host, host):
            return False
        if self.port is not None and (url.port or DEFAULT_PORTS[url.scheme]) != self.port:
            return False
        return fnmatch.fnmatchcase(url.path or "/", self.path)


def parse_pattern(text: str) -> Pattern:
    match = _PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a URL pattern (scheme://host[:port]/path, e.g. https://*.example.com/mcp)")
    port = match["port"]
    host = match["host"].lower().strip("[]")
    if "*" in host and not (host == "*" or (host.startswith("*.") and "*" not in host[2:])):
        raise ValueError(f"{text!r}: a host pattern is '*', '*.domain' or an exact host")
    return Pattern(match["scheme"], host, None if port == "*" else int(port or DEFAULT_PORTS[match["scheme"]]),
                   match["path"] or "/")


def _host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def parse_url(url: str) -> SplitResult:
    """The URL's parts, or ``UrlRefused`` for a URL that is ambiguous or carries credentials."""
    if _UNSAFE.search(url):
        raise UrlRefused("the URL has a backslash, whitespace or a control character")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError as exc:
        raise UrlRefused("the URL does not parse") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise UrlRefused("only http:// and https:// URLs may be used")
    if "@" in parts.netloc:
        raise UrlRefused("the URL may not carry a user name or password (send credentials in 'authorization')")
    if not parts.hostname:
        raise UrlRefused("the URL names no host")
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        # Clients and servers resolve these (``/mcp/../admin`` is ``/admin``): a path glob cannot hold.
        raise UrlRefused("the URL's path has '.' or '..' segments")
    return parts


def allowed(url: str, patterns: list[Pattern]) -> tuple[SplitResult, Pattern]:
    """The URL's parts and the first pattern it matches; ``UrlRefused`` when none does."""
    parts = parse_url(url)
    for pattern in patterns:
        if pattern.matches(parts):
            if not pattern.exact_host:
                _public_literal(parts.hostname or "")
            return parts, pattern
    raise UrlRefused("the URL is not allowed on this server (the operator lists the allowed ones in "
                     "[mcp] allowed_server_urls)")


def check_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if name.lower() in FORBIDDEN_HEADERS:
            raise UrlRefused(f"the header '{name}' belongs to the connection and may not be set")
        if _UNSAFE.sub("", name) != name or "\r" in value or "\n" in value:
            raise UrlRefused("a header name or value has a control character")


def address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host literal stands for, the legacy IPv4 spellings the resolver accepts included
    (``2130706433``, ``0x7f.1``, ``127.1``); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _public_literal(host: str) -> None:
    address = address_of(host)
    if address is not None and not address.is_global:  # a name is checked when it is resolved
        raise UrlRefused("the URL's address is not public; only a pattern that names it exactly allows it")


async def check_address(host: str, port: int) -> None:
    """Refuse a host (matched by a wildcard pattern) that resolves to any address that is not public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlRefused("the host could not be resolved") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise UrlRefused("the host resolves to an address that is not public")
