"""What a process tree listens on, read from the kernel (psutil), not from its config."""

from __future__ import annotations

import time

import psutil


def listening(pid: int, port: int | None = None) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in ``pid`` or its descendants."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found: set[tuple[str, int]] = set()
    for process in tree:
        try:
            sockets = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        found |= {
            (s.laddr.ip, s.laddr.port)
            for s in sockets
            if s.status == psutil.CONN_LISTEN and port in (None, s.laddr.port)
        }
    return found


def wait_listening(pid: int, port: int, timeout: float = 60) -> set[str]:
    """The addresses ``pid``'s tree listens on at ``port``, once there is one."""
    deadline = time.monotonic() + timeout
    while not (found := listening(pid, port)):
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on port {port} after {timeout}s")
        time.sleep(0.2)
    return {address for address, _ in found}


def non_loopback_ipv4() -> list[str]:
    """This machine's IPv4 addresses other than 127.0.0.0/8 (possibly none)."""
    return [
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family.name == "AF_INET" and not address.address.startswith("127.")
    ]
