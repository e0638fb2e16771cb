"""URL origins (RFC 6454: scheme, host, port), as the callback allow-list compares them.

``CALLBACK_ALLOWED_HOSTS`` lists origins; a callback URL is allowed when its origin is
one of them, written the same way: scheme and host in lower case, the port left out
when it is the scheme's default, an IPv6 address in brackets.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """The origin of an http(s) ``url``, normalised; ValueError saying what is wrong."""
    if any(ord(c) <= 32 or ord(c) == 127 for c in url.strip()):
        raise ValueError(f"{url!r} must not contain spaces or control characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r} must start with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError(f"{url!r} must not carry a user name or password")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"{url!r} names no host")
    if not host.isascii():
        raise ValueError(f"{url!r}: write the host in its ASCII (punycode) form")
    if ":" in host:
        host = f"[{ipaddress.IPv6Address(host).compressed}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_origins(listed: str) -> frozenset[str]:
    """The comma-separated origins of ``listed`` (each bare: no path, query or fragment)."""
    origins = set()
    for entry in (item.strip() for item in listed.split(",")):
        if not entry:
            continue
        parts = urlsplit(entry)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{entry!r} is not an origin (scheme://host[:port], no path)")
        origins.add(origin_of(entry))
    return frozenset(origins)
