"""Completion callbacks without servers: origins, the address check, the retry schedule,
and the sender's settling against the real Lua scripts (fakeredis)."""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any

import fakeredis
import pytest

from contacts_ingest.access.callback_targets import (
    CallbackRefused,
    CallbackTarget,
    new_callback_target,
)
from contacts_ingest.callbacks.outbound import AddressRefused, checked_address, post
from contacts_ingest.callbacks.sender import CallbackSender, retry_delay_ms
from contacts_ingest.infrastructure.origins import origin_of, parse_origins
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.callbacks import CallbackQueue, CallbackRoute
from contacts_ingest.jobs.job import ContactJob
from tests.unit.fake_redis import FakeRedis


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Hooks.Example.com/a/b?c=1", "https://hooks.example.com"),
        ("https://hooks.example.com:443/", "https://hooks.example.com"),
        ("http://127.0.0.1:9000/x", "http://127.0.0.1:9000"),
        ("http://[::1]:9000/x", "http://[::1]:9000"),
    ],
)
def test_an_origin_is_written_one_way(url: str, origin: str) -> None:
    assert origin_of(url) == origin


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/",
        "https://user:pw@hooks.example.com/",
        "https://hooks.example.com@evil.example/",
        "https:///path",
        "hooks.example.com/x",
        "http://hooks.example.com:99999/",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/a\r\nHost: evil",
    ],
)
def test_a_url_that_is_no_plain_http_origin_is_refused(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each says why in its own words)
        origin_of(url)


def test_the_allow_list_takes_bare_origins_only() -> None:
    assert parse_origins(" https://a.example.com, http://127.0.0.1:9000/ ,") == {
        "https://a.example.com",
        "http://127.0.0.1:9000",
    }
    with pytest.raises(ValueError, match="not an origin"):
        parse_origins("https://a.example.com/hooks")


def test_a_callback_url_must_have_an_allowed_origin() -> None:
    allowed = frozenset({"https://hooks.example.com"})
    target = new_callback_target("https://hooks.example.com/jobs", allowed)
    assert target.secret.startswith("whsec_")
    with pytest.raises(CallbackRefused, match="not in CALLBACK_ALLOWED_HOSTS"):
        new_callback_target("https://hooks.example.com:8443/jobs", allowed)
    with pytest.raises(CallbackRefused, match="callbacks are off"):
        new_callback_target("https://hooks.example.com/jobs", frozenset())


def _resolving_to(*addresses: str) -> Any:
    def getaddrinfo(host: str, port: int, **kw: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return getaddrinfo


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "192.168.1.1", "169.254.169.254", "::1", "::ffff:10.0.0.1"]
)
def test_a_name_resolving_to_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to("8.8.8.8", address))
    with pytest.raises(AddressRefused, match="not a public address"):
        checked_address("hooks.example.com", 443)


def test_localhost_by_name_is_refused() -> None:
    with pytest.raises(AddressRefused):
        checked_address("localhost", 80)


def test_an_ip_address_the_operator_listed_is_used_as_is() -> None:
    assert checked_address("127.0.0.1", 9000) == "127.0.0.1"


def test_the_connection_goes_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups: list[str] = []
    dialled: list[tuple[str, int]] = []

    def getaddrinfo(host: str, port: int, **kw: Any) -> list[Any]:
        # A rebinding DNS: public on the first lookup, loopback on any later one.
        lookups.append(host)
        address = "8.8.8.8" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def create_connection(address: tuple[str, int], *args: Any, **kw: Any) -> Any:
        dialled.append(address)
        raise ConnectionRefusedError("no traffic leaves this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(ConnectionRefusedError):
        post("https://hooks.example.com/x", b"{}", {}, timeout=1)
    assert (lookups, dialled) == (["hooks.example.com"], [("8.8.8.8", 443)])


def test_the_first_retry_comes_after_5_seconds_and_none_after_the_window() -> None:
    day = 24 * 3600 * 1000
    assert retry_delay_ms(1, 0, day) == 5_000
    assert retry_delay_ms(2, 5_000, day) == 30_000
    assert retry_delay_ms(40, day - 1_000, day) == 1_000  # the last attempt at the window's end
    assert retry_delay_ms(41, day, day) is None


class Poster:
    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> int:
        self.sent.append((url, body, headers))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


ORIGIN = "https://hooks.example.com"


def _world(
    poster: Poster, **settings: Any
) -> tuple[fakeredis.FakeRedis, JobBoard, CallbackQueue, CallbackSender]:
    config = Settings(redis_key_prefix="t:", callback_allowed_hosts=ORIGIN, **settings)
    client = FakeRedis()
    board = JobBoard.for_settings(client, config)
    queue = CallbackQueue(client, key_prefix="t:")
    target = CallbackTarget(
        f"{ORIGIN}/jobs", "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    )
    sender = CallbackSender(
        queue,
        {"key_1": target}.get,
        lambda job_id: {"job_id": job_id, "status": "succeeded"},
        config,
        poster=poster,
    )
    return client, board, queue, sender


def _final(board: JobBoard, job_id: str, lane: str = ORIGIN) -> None:
    job = ContactJob(job_id, "alice", "create", {"email": "a@example.com"}, 0)
    board.admit(
        user_id="alice", member=job_id, job=job, limit=None, callback=CallbackRoute("key_1", lane)
    )
    board.forget(job_id)


def test_a_failed_attempt_is_due_again_later_and_then_delivered() -> None:
    poster = Poster(503, 200)
    client, board, queue, sender = _world(poster)
    _final(board, "job_1")
    [taken] = queue.take(most=8, per_lane=2, in_flight={}, lease_ms=60_000)
    assert sender.deliver(taken) == "retried"
    assert queue.take(most=8, per_lane=2, in_flight={}, lease_ms=60_000) == []  # not yet due
    client.zadd(queue.lane_key(ORIGIN), {"job_1": 0})  # time passes
    client.zadd(queue.lanes_key, {ORIGIN: 0})
    [again] = queue.take(most=8, per_lane=2, in_flight={}, lease_ms=60_000)
    assert again.failures == 1
    assert sender.deliver(again) == "delivered"
    assert queue.waiting() == 0
    assert [headers["webhook-id"] for _, _, headers in poster.sent] == ["job_1", "job_1"]


def test_a_callback_still_failing_after_the_window_is_abandoned() -> None:
    poster = Poster(ConnectionRefusedError())
    _, board, queue, sender = _world(poster, callback_retry_window_seconds=1)
    _final(board, "job_1")
    [taken] = queue.take(most=8, per_lane=2, in_flight={}, lease_ms=60_000)
    late = replace(taken, taken_ms=taken.first_ms + 1_000)
    assert sender.deliver(late) == "abandoned"
    assert queue.waiting() == 0


def test_an_origin_not_allowed_at_delivery_is_abandoned_unsent() -> None:
    poster = Poster()
    _, board, queue, sender = _world(poster)
    sender._allowed = frozenset({"https://other.example.com"})
    _final(board, "job_1")
    [taken] = queue.take(most=8, per_lane=2, in_flight={}, lease_ms=60_000)
    assert sender.deliver(taken) == "abandoned"
    assert poster.sent == []


def test_a_lane_gives_at_most_its_share_and_other_lanes_go_on() -> None:
    _, board, queue, _ = _world(Poster())
    for i in range(5):
        _final(board, f"job_slow{i}", lane="https://slow.example.com")
    _final(board, "job_fast", lane=ORIGIN)
    taken = queue.take(
        most=8, per_lane=2, in_flight={"https://slow.example.com": 2}, lease_ms=60_000
    )
    assert [t.job_id for t in taken] == ["job_fast"]
    taken = queue.take(most=8, per_lane=2, in_flight={}, lease_ms=60_000)
    assert len(taken) == 2  # the slow lane's share; the rest wait in its lane
    assert queue.waiting() == 6


def test_a_callback_is_queued_once_even_when_its_job_is_forgotten_twice() -> None:
    _, board, queue, _ = _world(Poster())
    _final(board, "job_1")
    board.forget("job_1")  # a redelivery after the first one's commit
    assert queue.waiting() == 1
