"""Clients that trickle their bodies, or their heads, do not keep anyone else waiting."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from contacts_ingest.infrastructure.settings import Settings
from tests.conftest import unique
from tests.e2e.conftest import Service, create_key, service_env, start_gateway

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


def _open(base: str, data: bytes) -> socket.socket:
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(data)
    return sock


def _post_head(path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join([*lines, f"Content-Length: {length}"]) + "\r\n\r\n").encode()


def _answer_or_close(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent before it closed or ``timeout`` ran out (b"" if closed)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(200)
    except ConnectionResetError:
        return b""


def test_hundreds_of_stalled_connections_leave_healthz_and_other_clients_answered(
    settings: Settings, log_dir: Path
) -> None:
    env = service_env(
        settings, CELERY_QUEUE=unique("contacts-stalled"), GATEWAY_HEADER_TIMEOUT_SECONDS="2"
    )
    gateway, base = start_gateway(env, log_dir)
    try:
        stalling = {"Authorization": f"Bearer {create_key(env, unique('user'))}"}
        prompt = {"Authorization": f"Bearer {create_key(env, unique('user'))}"}
        nobody = {"Authorization": "Bearer cik_" + "x" * 43}

        def normal_post(headers: dict[str, str]) -> requests.Response:
            return requests.post(
                f"{base}/io/contacts/contacts",
                json={"email": "prompt@example.com"},
                headers=headers,
                timeout=5,
            )

        # Clients the gateway knows (the unkeyed connections below use up this address's
        # failed-authentication budget: a key it has never seen would get a 429).
        for headers in (prompt, stalling):
            assert normal_post(headers).status_code == 202
        with ExitStack() as stack:
            # 100 heads that never end, 100 keyed bodies and 100 unkeyed ones that stop
            # after their first byte (some declaring 10 MiB).
            heads = [
                stack.enter_context(_open(base, b"POST /io/contacts/contacts HTTP/1.1\r\nHost:"))
                for _ in range(100)
            ]
            for _ in range(100):
                head = _post_head("/io/contacts/contacts", 100, stalling)
                stack.enter_context(_open(base, head + b"{"))
            unkeyed = [
                stack.enter_context(_open(base, _post_head(path, length, nobody) + b"{"))
                for path, length in [("/io/contacts/contacts", 100)] * 50
                + [("/io/contacts/contacts/batch", 10 * 2**20)] * 25
                + [(f"/io/contacts/webhooks/whk_{'0' * 24}", 100)] * 25
            ]
            time.sleep(0.5)

            health = requests.get(f"{base}/healthz", timeout=5)
            assert health.status_code == 200
            for headers in (prompt, stalling):
                answer = normal_post(headers)
                assert answer.status_code == 202, answer.text
            # Without a valid key (or a live endpoint) nothing waits for the body: a 401,
            # or a 429 once this address has failed too often.
            for sock in unkeyed:
                assert _answer_or_close(sock, 5)[:12] in (b"HTTP/1.1 401", b"HTTP/1.1 429")
            # A head that does not arrive within the timeout is dropped.
            for sock in heads:
                assert _answer_or_close(sock, 15) in (b"", b"HTTP/1.1 408 Request Timeout\r\n")
    finally:
        gateway.stop()
