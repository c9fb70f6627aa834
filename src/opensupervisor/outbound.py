"""Outbound URLs the server calls on someone's behalf: parsed, matched part by part, and checked
again where the connection is made.

Every URL the server calls (a request's ``mcp`` ``server_url``, a connection's ``url`` and OAuth
``token_url``, an app's, a model's ``base_url``) goes through ``parse_url``: refused outright when it
carries userinfo (``user@host``), a backslash, whitespace, control or non-ASCII characters, a
percent-encoded host, ``.``/``..`` path segments, or a scheme other than ``http``/``https``.

URLs that requests and admins bring must also match a pattern (``[mcp] allowed_server_urls``,
``[outbound] allowed_urls``): ``scheme://host[:port]/path``, where the host may start with ``*.``
(any subdomain) or be ``*``; the port may be ``*`` (without one, only the scheme's default); the
path is a glob over the URL's path (``/mcp``, ``/tools/*``); without one, only ``/``. A host a
pattern names exactly (a name or an address) may be anything, loopback included; a host matched by
a wildcard must resolve only to public addresses (never loopback, private, link-local, multicast or
reserved ones, nor IPv6 forms that embed such an IPv4 address). That is checked where each
connection is made, on the very addresses it then connects to (``public_addresses``, used by
``tools.http_bounds.PinnedBackend``), so a name that answers differently the second time it is
resolved cannot reach anything else.
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
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
# IPv6 ranges that carry an IPv4 address a router or translator may deliver it to.
_EMBEDS_IPV4 = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b::/96"))
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
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
    """The URL's parts (scheme and host in lower case), or ``UrlRefused`` for a URL that is ambiguous
    or carries credentials; the reason never repeats the URL."""
    if _UNSAFE.search(url):
        raise UrlRefused("the URL has a backslash, whitespace or a control character")
    if _NOT_ASCII.search(url):
        # Parsers map these differently (IDNA, NFKC): the host we check must be the one connected to.
        raise UrlRefused("the URL has characters outside ASCII (write a host in its xn-- form)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError as exc:
        raise UrlRefused("the URL does not parse") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise UrlRefused("only http:// and https:// URLs may be used")
    if "@" in parts.netloc:
        raise UrlRefused("the URL may not carry a user name or password (send credentials as a token or a header)")
    if not parts.hostname:
        raise UrlRefused("the URL names no host")
    if "%" in parts.netloc:
        raise UrlRefused("the URL's host or port has percent-encoded characters")
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        # Clients and servers resolve these (``/mcp/../admin`` is ``/admin``): a path glob cannot hold.
        raise UrlRefused("the URL's path has '.' or '..' segments")
    return parts


def allowed(url: str, patterns: list[Pattern], setting: str = "[mcp] allowed_server_urls"
            ) -> tuple[SplitResult, Pattern]:
    """The URL's parts and the first pattern it matches; ``UrlRefused`` when none does."""
    parts = parse_url(url)
    for pattern in patterns:
        if pattern.matches(parts):
            if not pattern.exact_host:
                _public_literal(parts.hostname or "")
            return parts, pattern
    raise UrlRefused(f"the URL is not allowed on this server (the operator lists the allowed ones in {setting})")


def check_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if name.lower() in FORBIDDEN_HEADERS:
            raise UrlRefused(f"the header '{name}' belongs to the connection and may not be set")
        if _UNSAFE.sub("", name) != name or "\r" in value or "\n" in value:
            raise UrlRefused("a header name or value has a control character")


def address_of(host: str) -> Address | None:
    """The address a host literal stands for, the legacy IPv4 spellings the resolver accepts included
    (``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``) and a trailing dot; None for a name."""
    literal = host.removesuffix(".")  # ``127.0.0.1.`` is 127.0.0.1 to the resolver
    try:
        return ipaddress.ip_address(literal)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(literal))
    except OSError:
        return None


def is_public(address: Address) -> bool:
    """Whether an address is on the public internet: not loopback, private, link-local, multicast
    or reserved, nor an IPv6 address that embeds such an IPv4 one (mapped, compatible, NAT64, 6to4,
    Teredo)."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
    if embedded is None and any(address in network for network in _EMBEDS_IPV4):
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return embedded is None or is_public(embedded)


def _public_literal(host: str) -> None:
    address = address_of(host)
    if address is not None and not is_public(address):  # a name is checked when it is resolved
        raise UrlRefused("the URL's address is not public; only a pattern that names it exactly allows it")


async def public_addresses(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, once; ``UrlRefused`` when it does not resolve or any of
    them is not public. Connect to these, not to the name: a second lookup may answer otherwise."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlRefused("the host could not be resolved") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UrlRefused("the host could not be resolved")
    for text in addresses:
        if not is_public(ipaddress.ip_address(text.split("%", 1)[0])):
            raise UrlRefused("the host resolves to an address that is not public")
    return addresses
