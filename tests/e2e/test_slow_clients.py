"""Clients that trickle their bodies do not keep a normal client waiting."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e


@contextmanager
def trickling_connections(base: str, headers: dict[str, str], count: int) -> Iterator[None]:
    """``count`` connections that sent their head and one byte of a small body, then stall."""
    url = urlsplit(base)
    body = json.dumps({"email": "slow@example.com"}).encode()
    head = (
        "POST /io/contacts/contacts HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        f"Authorization: {headers['Authorization']}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with ExitStack() as stack:
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection((url.hostname, url.port)))
            sock.sendall(head + body[:1])
        time.sleep(0.5)  # let the server hand every one of them to a thread
        yield


def test_a_hundred_trickling_clients_do_not_delay_a_normal_one(service: Service) -> None:
    _, headers = service.new_user()
    with trickling_connections(service.base, headers, 100):
        started = time.monotonic()
        answer = requests.post(
            f"{service.base}/io/contacts/contacts",
            json={"email": "prompt@example.com"},
            headers=headers,
            timeout=5,
        )
        elapsed = time.monotonic() - started
    assert answer.status_code == 202, answer.text
    assert elapsed < 1.0, f"a normal client waited {elapsed:.2f}s"
