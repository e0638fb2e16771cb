"""Telling a supervisor that a process is ready: systemd's notify protocol
(``NOTIFY_SOCKET``, ``READY=1``), which ``dev`` listens on too."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import TracebackType


def notify_ready() -> None:
    """Send ``READY=1`` to ``$NOTIFY_SOCKET`` if it is set (a path, or ``@`` for an
    abstract socket); do nothing otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    # If whoever listened has gone, there is nobody to tell.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, suppress(OSError):
        sock.sendto(b"READY=1", address)


class ReadinessListener:
    """A notify socket in a folder of its own (0700); ``address`` goes into a child's
    ``NOTIFY_SOCKET``."""

    def __enter__(self) -> ReadinessListener:
        self._folder = Path(tempfile.mkdtemp(prefix="contacts-ingest-"))
        self.address = str(self._folder / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        return self

    def wait(self, timeout: float, give_up: Callable[[], bool]) -> bool:
        """True once ``READY=1`` arrived; False after ``timeout`` seconds or as soon as
        ``give_up()`` is true (checked every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not give_up():
            self._sock.settimeout(0.2)
            try:
                if b"READY=1" in self._sock.recv(4096).split(b"\n"):
                    return True
            except TimeoutError:
                continue
        return False

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sock.close()
        Path(self.address).unlink(missing_ok=True)
        self._folder.rmdir()
