"""Completion callbacks through the real gateway, worker and its callback sender, to real
receivers on loopback: signed, delivered once, retried, refused where not allowed, and
a receiver that never answers holds back nobody else's."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks import Webhook

from contacts_ingest.infrastructure.settings import Settings
from tests.conftest import free_port, unique
from tests.e2e.conftest import CLI, service_env, start_gateway, start_worker
from tests.e2e.test_metrics import value

pytestmark = pytest.mark.e2e


@dataclass
class Receiver:
    """An HTTP server on loopback that records what it is sent and answers each POST with
    the next of ``answers`` (then 200); with ``hold``, it answers only once it is set."""

    answers: list[int] = field(default_factory=list)
    hold: threading.Event | None = None
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def __post_init__(self) -> None:
        receiver = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    receiver.received.append((dict(self.headers.items()), body))
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                    code = receiver.answers.pop(0) if receiver.answers else 200
                try:
                    if receiver.hold is not None:
                        receiver.hold.wait(60)
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with lock:
                        receiver.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()


def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the deadline")
        time.sleep(0.1)


@dataclass
class Deployment:
    base: str
    env: dict[str, str]
    metrics: str

    def key(self, callback_url: str, **env: str) -> tuple[dict[str, str], str]:
        """A new user's key with ``callback_url``: (its auth header, the signing secret)."""
        done = subprocess.run(
            [CLI, "keys", "create", "--user", unique("user"), "--callback-url", callback_url],
            env={**self.env, **env}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        key, secret = done.stdout.splitlines()
        assert secret.startswith("whsec_")
        return {"Authorization": f"Bearer {key}"}, secret

    def post(self, auth: dict[str, str], email: str) -> str:
        answer = requests.post(
            f"{self.base}/io/contacts/contacts", json={"email": email}, headers=auth, timeout=10
        )
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["data"]["job_id"]
        return job_id

    def callbacks(self, outcome: str) -> float:
        text = requests.get(self.metrics, timeout=5).text
        return value(text, "contacts_worker_callbacks_total", outcome=outcome)


@pytest.fixture(scope="module")
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {
        "ok": Receiver(),
        "flaky": Receiver(answers=[503]),
        "stuck": Receiver(hold=threading.Event()),
        "unlisted": Receiver(),
    }
    yield made
    for receiver in made.values():
        receiver.close()


@pytest.fixture(scope="module")
def deployment(
    settings: Settings, log_dir: Path, receivers: dict[str, Receiver]
) -> Iterator[Deployment]:
    metrics_port = free_port()
    allowed = ",".join(receivers[name].origin for name in ("ok", "flaky", "stuck"))
    env = service_env(
        settings,
        CELERY_QUEUE=unique("contacts-callbacks"),
        WORKER_METRICS_PORT=str(metrics_port),
        CALLBACK_ALLOWED_HOSTS=allowed,
        CALLBACK_MAX_PER_RECEIVER="2",
        CALLBACK_TIMEOUT_SECONDS="30",
    )
    worker = start_worker(env, log_dir, "callbacks-worker")
    gateway, base = start_gateway(env, log_dir)
    yield Deployment(base, env, f"http://127.0.0.1:{metrics_port}/metrics")
    gateway.stop()
    worker.stop()


def test_a_final_job_is_posted_once_signed_as_get_shows_it(
    deployment: Deployment, receivers: dict[str, Receiver]
) -> None:
    ok = receivers["ok"]
    auth, secret = deployment.key(f"{ok.origin}/hooks/jobs?source=contacts")
    job_id = deployment.post(auth, "called-back@example.com")
    eventually(lambda: any(h.get("webhook-id") == job_id for h, _ in ok.received))
    time.sleep(2)  # a second delivery would have come by now
    mine = [(h, b) for h, b in ok.received if h.get("webhook-id") == job_id]
    assert len(mine) == 1
    headers, body = mine[0]
    signed = Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    shown = requests.get(f"{deployment.base}/io/contacts/jobs/{job_id}", headers=auth, timeout=5)
    assert body == shown.content
    assert signed == shown.json()
    assert signed["data"]["status"] == "succeeded"
    assert signed["data"]["result"]["data"]["email"] == "called-back@example.com"


def test_a_receiver_that_fails_first_gets_the_retry(
    deployment: Deployment, receivers: dict[str, Receiver]
) -> None:
    flaky = receivers["flaky"]
    auth, secret = deployment.key(f"{flaky.origin}/")
    job_id = deployment.post(auth, "retried@example.com")
    eventually(lambda: len([h for h, _ in flaky.received if h.get("webhook-id") == job_id]) == 2)
    first, second = (
        Webhook(secret).verify(b, {k.lower(): v for k, v in h.items()})
        for h, b in flaky.received
        if h.get("webhook-id") == job_id
    )
    assert first == second
    assert deployment.callbacks("retried") >= 1
    assert deployment.callbacks("delivered") >= 1


def test_an_origin_not_listed_is_refused_at_creation(
    deployment: Deployment, receivers: dict[str, Receiver]
) -> None:
    unlisted = receivers["unlisted"].origin
    for command in (["keys", "create"], ["webhooks", "create"]):
        done = subprocess.run(
            [CLI, *command, "--user", unique("user"), "--callback-url", f"{unlisted}/x"],
            env=deployment.env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 2
        assert done.stdout == ""
        assert f"{unlisted} is not in CALLBACK_ALLOWED_HOSTS" in done.stderr
    off = {**deployment.env, "CALLBACK_ALLOWED_HOSTS": ""}
    done = subprocess.run(
        [CLI, "keys", "create", "--user", unique("user"), "--callback-url", f"{unlisted}/x"],
        env=off, capture_output=True, text=True,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert "callbacks are off" in done.stderr


def test_an_origin_not_listed_where_the_worker_runs_is_refused_at_delivery(
    deployment: Deployment, receivers: dict[str, Receiver]
) -> None:
    unlisted = receivers["unlisted"]
    # Allowed where the key was made, not where the worker runs.
    auth, _ = deployment.key(f"{unlisted.origin}/", CALLBACK_ALLOWED_HOSTS=unlisted.origin)
    before = deployment.callbacks("abandoned")
    deployment.post(auth, "refused@example.com")
    eventually(lambda: deployment.callbacks("abandoned") > before)
    assert unlisted.received == []


def test_a_receiver_that_never_answers_holds_back_nobody_else(
    deployment: Deployment, receivers: dict[str, Receiver]
) -> None:
    stuck, ok = receivers["stuck"], receivers["ok"]
    stuck_auth, _ = deployment.key(f"{stuck.origin}/")
    for i in range(6):
        deployment.post(stuck_auth, f"stuck{i}@example.com")
    eventually(lambda: stuck.in_flight == 2)
    auth, _ = deployment.key(f"{ok.origin}/")
    job_id = deployment.post(auth, "not-held-back@example.com")
    eventually(lambda: any(h.get("webhook-id") == job_id for h, _ in ok.received))
    # The stuck receiver still holds its two, and was never given more at once.
    assert stuck.in_flight == 2
    assert stuck.most_in_flight == 2
