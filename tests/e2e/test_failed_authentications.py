"""Guessed keys against the real gateway: throttled per address, never costing a real key."""

from __future__ import annotations

import secrets
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests
from sqlalchemy import make_url

from contacts_ingest.infrastructure.settings import Settings, sqlalchemy_url
from tests.conftest import unique
from tests.e2e.conftest import create_key, service_env, start_gateway

pytestmark = pytest.mark.e2e


class Severable:
    """A TCP forwarder to PostgreSQL (at a TCP address or a Unix socket path) that can be
    cut: then nothing gets through."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                if isinstance(self._target, str):
                    server = socket.socket(socket.AF_UNIX)
                    server.connect(self._target)
                else:
                    server = socket.create_connection(self._target)
                with self._lock:
                    self._open += [client, server]
                for source, sink in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextmanager
def severable_postgres(settings: Settings) -> Iterator[tuple[Severable, str]]:
    url = make_url(sqlalchemy_url(settings.database_url))
    socket_dir = url.query.get("host")  # as the embedded PostgreSQL's URL names it
    forwarder = Severable(
        f"{socket_dir}/.s.PGSQL.{url.port or 5432}"
        if isinstance(socket_dir, str)
        else (url.host or "127.0.0.1", url.port or 5432)
    )
    try:
        through = url.difference_update_query(["host"]).set(host="127.0.0.1", port=forwarder.port)
        yield forwarder, through.render_as_string(hide_password=False)
    finally:
        forwarder.cut()


def test_guessed_keys_are_throttled_and_a_seen_key_outlives_postgresql(
    settings: Settings, log_dir: Path
) -> None:
    with severable_postgres(settings) as (postgres, through_it):
        env = service_env(
            settings,
            CELERY_QUEUE=unique("contacts-guessed"),
            DATABASE_URL=through_it,
            AUTH_FAILURE_LIMIT="20",
            AUTH_FAILURE_WINDOW_SECONDS="3600",
        )
        gateway, base = start_gateway(env, log_dir)
        try:
            real = {"Authorization": f"Bearer {create_key(env, unique('user'))}"}

            def post(headers: dict[str, str]) -> requests.Response:
                return requests.post(
                    f"{base}/io/contacts/contacts",
                    json={"email": "a@example.com"},
                    headers=headers,
                    timeout=10,
                )

            def guess() -> dict[str, str]:
                return {"Authorization": f"Bearer cik_{secrets.token_urlsafe(32)}"}

            assert post(real).status_code == 202
            answers = [post(guess()) for _ in range(200)]
            assert Counter(a.status_code for a in answers) == {401: 20, 429: 180}
            assert int(answers[-1].headers["Retry-After"]) >= 1
            assert post(real).status_code == 202  # a key that works is never throttled

            postgres.cut()
            # The key this gateway saw is still served; guesses are refused without a
            # lookup (a lookup would be a 503 now).
            assert post(real).status_code == 202
            assert post(guess()).status_code == 429
        finally:
            gateway.stop()
