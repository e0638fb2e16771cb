"""What one client can cost the gateway: metric series, bodies read before a key is
checked, failed authentications, waiting threads."""

from __future__ import annotations

import io
import threading
from typing import Any

import falcon.testing
import pytest

from api_gateway.gate import ActiveRequests
from api_gateway.throttle import TOO_MANY_FAILURES, FailureThrottle
from api_gateway.waiting import WaitSlots
from tests.unit.harness import ALICE, BOB, JSON, WEBHOOK_ENDPOINT, make_harness, signed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class UnreadBody(io.BytesIO):
    """A request body that records whether anyone read it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.was_read = False

    def read(self, size: int | None = -1) -> bytes:
        self.was_read = True
        return super().read(size)


@pytest.mark.filterwarnings("ignore::wsgiref.validate.WSGIWarning")  # the method, on purpose
def test_a_method_nobody_knows_is_counted_as_other() -> None:
    gw = make_harness()
    method = "X" * 30_000
    answer = gw.client.simulate_request(method, "/io/contacts/contacts", headers=ALICE)
    assert 400 <= answer.status_code < 500
    scraped = gw.client.simulate_get("/metrics").text
    assert method not in scraped
    assert 'method="other",route="/io/contacts/contacts"' in scraped


@pytest.mark.parametrize("path", ["/io/contacts/contacts", "/io/contacts/contacts/batch"])
def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(path: str) -> None:
    # The application as wsgi.py serves it: inside the active-request gate.
    served = falcon.testing.TestClient(ActiveRequests(make_harness().client.app, active=1))
    body = UnreadBody(b'{"email": "a@example.com"}')
    answer = served.simulate_post(
        path,
        headers={**JSON, "Authorization": "Bearer cik_unknown", "Content-Length": "26"},
        extras={"wsgi.input": body},
    )
    assert answer.status_code == 401
    assert not body.was_read


def test_a_delivery_to_an_unknown_endpoint_is_refused_before_its_body_is_read() -> None:
    gw = make_harness()
    raw = b'{"email": "a@example.com"}'
    body = UnreadBody(raw)
    answer = gw.client.simulate_post(
        "/io/contacts/webhooks/whk_unknown",
        headers={**signed(raw), "Content-Length": str(len(raw))},
        extras={"wsgi.input": body},
    )
    assert answer.status_code == 401
    assert not body.was_read


def test_failed_authentications_past_the_limit_are_429_with_retry_after() -> None:
    gw = make_harness(auth_failures=3)
    bad = {**JSON, "Authorization": "Bearer cik_guess"}
    codes = [gw.post({"email": "a@example.com"}, headers=bad).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    refused = gw.post({"email": "a@example.com"}, headers=bad)
    assert refused.json == {"error": TOO_MANY_FAILURES}
    assert int(refused.headers["Retry-After"]) >= 1
    # A key that works is never refused for its address's failures.
    assert gw.post({"email": "a@example.com"}).status_code == 202
    # Another address has its own budget.
    other = gw.client.simulate_post(
        "/io/contacts/contacts",
        json={"email": "a@example.com"},
        headers=bad,
        remote_addr="192.0.2.7",
    )
    assert other.status_code == 401


def test_failed_deliveries_are_throttled_too_but_a_live_endpoint_is_not() -> None:
    gw = make_harness(auth_failures=2)
    raw = b'{"email": "a@example.com"}'

    def deliver(endpoint: str, msg_id: str) -> Any:
        return gw.client.simulate_post(
            f"/io/contacts/webhooks/{endpoint}", body=raw, headers=signed(raw, msg_id=msg_id)
        )

    codes = [deliver("whk_unknown", f"m{i}").status_code for i in range(3)]
    assert codes == [401, 401, 429]
    assert deliver(WEBHOOK_ENDPOINT, "real").status_code == 202


def test_the_failure_budget_refills_over_its_window() -> None:
    clock = Clock()
    throttle = FailureThrottle(2, 60, clock=clock)
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 30  # one failure back every 30 s
    clock.now += 29
    assert throttle.retry_after("a") == 1
    clock.now += 1
    assert throttle.retry_after("a") is None
    assert throttle.retry_after("b") is None


def test_waiting_is_bounded_per_user_and_per_process() -> None:
    slots = WaitSlots(per_user=2, per_process=3)
    with slots.slot("alice") as a1, slots.slot("alice") as a2, slots.slot("alice") as a3:
        assert (a1, a2, a3) == (True, True, False)
        with slots.slot("bob") as b1, slots.slot("carol") as c1:
            assert (b1, c1) == (True, False)  # the process has 3 waiting
        with slots.slot("carol") as c2:
            assert c2  # bob's slot was given back
    with slots.slot("alice") as again:
        assert again


class HeldCompletions:
    """A completion subscription whose jobs finish only when the test says so."""

    def __init__(self) -> None:
        self.finish = threading.Event()
        self.waiting = threading.Semaphore(0)

    def register(self, job_id: str) -> threading.Event:
        self.waiting.release()
        return self.finish

    def unregister(self, job_id: str) -> None:
        pass


def test_a_request_past_its_users_waiting_limit_gets_the_202_at_once() -> None:
    held = HeldCompletions()
    gw = make_harness(completions=held, waits_per_user=1)
    wait = {"Prefer": "wait=10"}
    first: list[Any] = []
    waiter = threading.Thread(
        target=lambda: first.append(gw.post({"email": "a@example.com"}, headers=wait))
    )
    waiter.start()
    assert held.waiting.acquire(timeout=5)  # alice's first request is waiting

    refused = gw.post({"email": "b@example.com"}, headers=wait)
    assert refused.status_code == 202
    assert "Preference-Applied" not in refused.headers
    bobs = threading.Thread(
        target=lambda: gw.post({"email": "c@example.com"}, headers={**BOB, **wait})
    )
    bobs.start()
    assert held.waiting.acquire(timeout=5)  # another user may still wait

    held.finish.set()
    waiter.join()
    bobs.join()
    assert first[0].status_code == 202


def test_reads_of_a_body_happen_outside_the_active_gate() -> None:
    entered = threading.Event()
    release = threading.Event()

    class Trickle(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            entered.set()
            release.wait(5)
            return super().read(size)

    answered: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read(2)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    gated = ActiveRequests(app, active=1)
    client = falcon.testing.TestClient(gated)
    slow = threading.Thread(
        target=lambda: client.simulate_post("/", extras={"wsgi.input": Trickle(b"{}")})
    )
    slow.start()
    assert entered.wait(5)
    # The one active slot is free while the first request waits for its body.
    answered.append(client.simulate_post("/", body=b"{}").status_code)
    release.set()
    slow.join()
    assert answered == [200]
