"""One callback POST, to the address that was checked and to no other.

The URL's host is resolved once; unless the allow-listed origin names an IP address
itself (the operator chose it), every address it resolves to must be a public one, so
an allowed name can never lead into a private network, whatever its DNS says. The
connection goes to the address checked (no second lookup for DNS to answer differently),
with the name in the Host header and, over TLS, in SNI and the certificate check.
Redirects are not followed: a 3xx is a failed attempt like any other non-2xx answer.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

from contacts_ingest.infrastructure.origins import DEFAULT_PORTS

USER_AGENT = "contacts-ingest-callbacks"


class AddressRefused(Exception):
    """The receiver's host resolves to an address callbacks may not reach."""


def checked_address(host: str, port: int) -> str:
    """The address to connect to for ``host``: itself if it is an IP address, else the
    first it resolves to, all of which must be public (AddressRefused otherwise)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve the receiver's host: {exc.strerror}") from None
    addresses = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        if not (mapped or address).is_global:
            raise AddressRefused(f"{host} resolves to {address}, which is not a public address")
        addresses.append(str(address))
    if not addresses:
        raise OSError("the receiver's host resolves to no address")
    return addresses[0]


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to ``address``, speaking to ``host`` (Host header, TLS)."""

    def __init__(
        self, host: str, port: int, address: str, timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self.default_port = 443 if tls else 80
        self._address = address
        self._tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> int:
    """POST ``body`` to ``url``; the answer's status code.

    Raises AddressRefused before connecting anywhere it may not, OSError or
    http.client.HTTPException when the receiver cannot be reached or answers nothing
    readable within ``timeout`` (per connection attempt and per read).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    address = checked_address(host, port)
    tls = ssl.create_default_context() if parts.scheme.lower() == "https" else None
    connection = _PinnedConnection(host, port, address, timeout, tls)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(
            "POST",
            target,
            body=body,
            headers={**headers, "Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        return connection.getresponse().status
    finally:
        connection.close()
