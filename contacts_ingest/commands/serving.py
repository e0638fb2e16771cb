"""How ``serve`` runs granian: on a port of its own, stopping at the first signal."""

from __future__ import annotations

import errno
import importlib
import os
import signal
import socket
import threading
from typing import Any

import click

# Sent by a process to its own main thread to wake it; otherwise ignored.
_WAKE = signal.SIGURG
_STOPS = (signal.SIGINT, signal.SIGTERM)


def require_free_port(host: str, port: int) -> None:
    """Raise a ``ClickException`` if ``host``:``port`` is taken.

    granian binds with SO_REUSEPORT, so a second server on a taken port would start and
    share it with the first, each answering some requests; this bind, without it, fails.
    """
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        # Connections of a server that just stopped (TIME_WAIT) do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"port {port} on {host} is already in use (another `contacts-ingest"
                    " serve` or `dev`?): stop it, or choose another port with --port"
                ) from None
            raise click.ClickException(
                f"cannot listen on {host} port {port}: {exc.strerror}"
            ) from None


def load_in_gateway_process(target: str) -> Any:
    """Load the WSGI app ``target`` (``module:name``) in a granian worker process, which
    then stops on the first SIGINT or SIGTERM that reaches it.

    granian's worker waits for its stop signal in a lock on its main thread, and only a
    signal delivered to that thread interrupts the wait; the kernel may hand a signal
    to any of granian's own threads instead, and the worker then never notices it (a
    Ctrl-C, which reaches granian's main process and its workers at once, was missed
    2 times in 3: the worker was killed 30 s later, or outlived its parent). So any
    stop signal, wherever it lands, also wakes the main thread, which then runs the
    handler granian installed.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)  # written on any thread
    signal.signal(_WAKE, lambda *_: None)
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def forward() -> None:
        while True:
            received = os.read(read_end, 64)
            if any(number in _STOPS for number in received):
                signal.pthread_kill(main_thread, _WAKE)

    threading.Thread(target=forward, name="stop-signal-forwarder", daemon=True).start()
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
