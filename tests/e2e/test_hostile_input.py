"""Hostile bodies and messages against the real gateway and worker: deep nesting, huge
integers, emails that grow when case-folded, messages that cannot be read, statements
that fail with contact data in their errors. None of them stops ingestion, none gets a
500 from the gateway, and none puts contact data in a log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import redis
import requests
from sqlalchemy import Engine, text
from standardwebhooks import Webhook

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import ContactJob, new_job_id
from contacts_ingest.jobs.messages import CeleryMessages
from contacts_ingest.producer import ContactProducer
from tests.conftest import unique
from tests.e2e.conftest import CLI, Service, service_env, start_worker

pytestmark = pytest.mark.e2e

DEPTH_MESSAGE = "Request body must not nest more than 64 levels deep"
INTEGER_MESSAGE = "Request body must not contain integers of more than 4300 digits"
UNREADABLE_MESSAGE = "The job's message could not be read"
# Valid, 137 characters; its case-folded key (the stored uniqueness key) is 265.
GROWING_EMAIL = "\u0390" * 64 + "@" + "a" * 60 + ".example.com"


def nested(levels: int, email: str = "kw@example.com") -> str:
    """A contact body whose arrays and objects nest exactly ``levels`` deep, in a field
    the model ignores."""
    arrays = levels - 1
    return f'{{"email": "{email}", "x": {"[" * arrays}{"]" * arrays}}}'


@contextmanager
def deep_recursion() -> Iterator[None]:
    """Room for the standard library to encode the deep bodies a hostile producer sends."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def post_raw(service: Service, auth: dict[str, str], path: str, raw: str | bytes) -> Any:
    return requests.post(
        f"{service.base}{path}",
        data=raw.encode() if isinstance(raw, str) else raw,
        headers={**auth, "Content-Type": "application/json"},
        timeout=30,
    )


def deliver(service: Service, path: str, secret: str, body: bytes) -> requests.Response:
    now, msg_id = datetime.now(UTC), unique("msg")
    return requests.post(
        f"{service.base}{path}",
        data=body,
        headers={
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        },
        timeout=30,
    )


def test_the_gateway_refuses_bodies_nested_past_64_levels_on_every_write_route(
    service: Service, log_dir: Path
) -> None:
    user, auth = service.new_user()
    path, secret = subprocess.run(
        [CLI, "webhooks", "create", "--user", user],
        env=service.env, capture_output=True, text=True, check=True,
    ).stdout.strip().split("\t")  # fmt: skip
    # 985 to 1,024 levels were a 500 (the standard library's encoder recursed);
    # past 1,024 orjson itself gives up.
    depths = [65, 500, 960, 985, 1000, 1024, 1025, 5000]
    for depth in depths:
        body = nested(depth)
        batch = '{"contacts": [{"email": "ok@example.com"}, ' + body + "]}"
        answers = {
            "single": post_raw(service, auth, "/io/contacts/contacts", body),
            "batch": post_raw(service, auth, "/io/contacts/contacts/batch", batch),
            "webhook": deliver(service, path, secret, body.encode()),
        }
        for route, answer in answers.items():
            assert (answer.status_code, answer.json()["error"]) == (400, DEPTH_MESSAGE), (
                depth,
                route,
            )
    # The limit is the whole body's: 64 levels (customFields nested 32 deep inside a
    # batch is 35) are accepted.
    assert post_raw(service, auth, "/io/contacts/contacts", nested(64)).status_code == 202
    deepest_custom = "[" * 31 + "]" * 31
    batch = (
        f'{{"contacts": [{{"email": "c@example.com", "customFields": {{"a": {deepest_custom}}}}}]}}'
    )
    accepted = post_raw(service, auth, "/io/contacts/contacts/batch", batch)
    assert accepted.status_code == 202
    final = service.wait_final(auth, accepted.json()["data"]["job_id"])
    assert final["result"]["items"][0]["code"] == 201
    serve_logs = "".join(p.read_text(errors="replace") for p in log_dir.glob("serve-*.log"))
    assert "Traceback" not in serve_logs


def admit(board: JobBoard, messages: CeleryMessages, user: str, body: Any, **kw: Any) -> str:
    """Queue a job exactly as the gateway does (its record and its message in one step),
    but without the gateway's checks: what a producer can put on the queue."""
    job = ContactJob(new_job_id(), user, "create", body, 0, **kw)
    with deep_recursion():
        board.admit(user_id=user, member=job.job_id, job=job, limit=None)
    return job.job_id


def admit_message(
    board: JobBoard, messages: CeleryMessages, client: redis.Redis, user: str, body: str
) -> str:
    """Queue a job whose Celery message carries ``body`` as its (unreadable) task body."""
    job = ContactJob(new_job_id(), user, "create", {}, 0)
    board.admit(user_id=user, member=job.job_id, job=job, limit=None)
    # Admission recorded the job and pushed its message: swap the message's task body.
    message = orjson.loads(client.lpop(messages.queue_key))  # type: ignore[arg-type]
    message["body"] = body
    client.lpush(messages.queue_key, orjson.dumps(message))
    return job.job_id


@pytest.fixture
def private_queue(settings: Settings) -> Iterator[tuple[Settings, JobBoard, CeleryMessages]]:
    """A queue of this test's own, so that a worker started later finds a backlog."""
    own = settings.model_copy(update={"celery_queue": unique("hostile")})
    client = redis.Redis.from_url(own.redis_url)
    messages = CeleryMessages(own)
    yield own, JobBoard.for_settings(client, own), messages
    client.delete(messages.queue_key)


def family(process: psutil.Process) -> set[int]:
    return {process.pid, *(child.pid for child in process.children(recursive=True))}


def test_no_message_stops_a_worker_and_each_unreadable_job_fails_alone_with_400(
    service: Service,
    private_queue: tuple[Settings, JobBoard, CeleryMessages],
    log_dir: Path,
) -> None:
    own, board, messages = private_queue
    user, auth = service.new_user()
    normal = [admit(board, messages, user, {"email": f"n{i}@example.com"}) for i in range(5)]
    # ~500 levels: the pool process could not be handed the batch; ~960: decoding it
    # killed the worker's main process; past 1,000 the decoder itself gives up.
    deep = {depth: admit(board, messages, user, orjson.loads(nested(depth))) for depth in (65, 500)}
    with deep_recursion():
        for depth in (960, 1000, 5000):
            body = json.loads(nested(depth))
            deep[depth] = admit(board, messages, user, body)
    deep_batch = admit(
        board, messages, user,
        {"contacts": [{"email": "b1@example.com"}, {"email": "b2@example.com",
                                                   "x": orjson.loads(nested(600))["x"]}]},
        batch=True,
    )  # fmt: skip
    unreadable = admit_message(
        board, messages, redis.Redis.from_url(own.redis_url), user, '[[], {"job": {"job_id"'
    )
    # A message that names no pending job: logged and dropped.
    nameless = new_job_id()
    _, head, tail = messages(ContactJob(nameless, user, "create", {}, 0))
    stray = orjson.loads(head + b"1" + tail)
    stray["body"] = "not json"
    redis.Redis.from_url(own.redis_url).lpush(messages.queue_key, orjson.dumps(stray))
    normal += [admit(board, messages, user, {"email": f"m{i}@example.com"}) for i in range(5)]

    worker = start_worker(service_env(own), log_dir, name=unique("hostile-worker"))
    try:
        # Well within the visibility timeout (an hour): nothing waits for a redelivery.
        finals = {job_id: service.wait_final(auth, job_id, timeout=60) for job_id in normal}
        assert {f["result"]["code"] for f in finals.values()} == {201}
        for depth, job_id in deep.items():
            final = service.wait_final(auth, job_id, timeout=60)
            assert (final["status"], final["error"]["code"]) == ("failed", 400), depth
            assert final["error"]["message"] == DEPTH_MESSAGE
            assert final["error"]["errors"] == [{"field": "body", "message": DEPTH_MESSAGE}]
        assert service.wait_final(auth, deep_batch)["error"]["message"] == DEPTH_MESSAGE
        assert service.wait_final(auth, unreadable)["error"] == {
            "code": 400,
            "message": UNREADABLE_MESSAGE,
            "errors": [{"field": "body", "message": UNREADABLE_MESSAGE}],
        }
        assert service.job(auth, nameless).status_code == 404

        # The same processes are still there, and still working.
        processes = psutil.Process(worker.popen.pid)
        before = family(processes)
        after_all = admit(board, messages, user, {"email": "after@example.com"})
        assert service.wait_final(auth, after_all)["result"]["code"] == 201
        assert worker.popen.poll() is None
        assert family(processes) == before, worker.output()[-3000:]
        assert redis.Redis.from_url(own.redis_url).llen(messages.queue_key) == 0
        # The message naming no job is logged as dropped (its batch may finish last).
        deadline = time.monotonic() + 30
        while "dropping a message that names no pending job" not in worker.output():
            assert time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.1)
    finally:
        worker.stop()
    assert "Unrecoverable error" not in worker.output()


def test_an_email_that_grows_when_case_folded_is_refused_where_emails_are_validated(
    service: Service, settings: Settings
) -> None:
    user, auth = service.new_user()
    refused = service.post(auth, {"email": GROWING_EMAIL})
    assert (refused.status_code, refused.json()["error"]) == (400, "A valid email is required")

    contacts = [{"email": f"g{i}@example.com"} for i in range(3)]
    batch = requests.post(
        f"{service.base}/io/contacts/contacts/batch",
        json={"contacts": [*contacts[:2], {"email": GROWING_EMAIL}, contacts[2]]},
        headers=auth,
        timeout=10,
    )
    final = service.wait_final(auth, batch.json()["data"]["job_id"])
    assert final["result"]["counts"] == {"created": 3, "updated": 0, "failed": 1}
    assert final["result"]["items"][2]["error"] == "A valid email is required"

    # An internal producer's job (no gateway in between) fails with the same 400.
    producer = ContactProducer(settings)
    job_id = producer.enqueue(user, {"email": GROWING_EMAIL})
    final = service.wait_final(auth, job_id)
    assert (final["status"], final["error"]["code"]) == ("failed", 400)
    assert final["error"]["message"] == "A valid email is required"


def test_integers_beyond_64_bits_are_kept_exactly_and_overlong_ones_refused(
    service: Service, settings: Settings
) -> None:
    user, auth = service.new_user()
    numbers = {
        "past 64 bits": 2**64,
        "below 64 bits": -(2**63) - 1,
        "1e30": 10**30,
        "no float holds it": -(10**400),
        "the most digits": int("9" * 4300),
        "digits in a string": "1" * 40,
    }
    body = {"email": "exact@example.com", "customFields": numbers, "ignored": 10**40}
    accepted = post_raw(service, auth, "/io/contacts/contacts", json.dumps(body))
    assert accepted.status_code == 202
    job_id = accepted.json()["data"]["job_id"]
    service.wait_final(auth, job_id)
    status = json.loads(service.job(auth, job_id).text)  # the standard decoder: exact too
    assert status["data"]["result"]["data"]["custom_fields"] == numbers
    # The synchronous answer of Prefer: wait carries them exactly too.
    waited = requests.post(
        f"{service.base}/io/contacts/contacts",
        data=json.dumps({"email": "exact2@example.com", "customFields": {"n": 10**30 + 1}}),
        headers={**auth, "Content-Type": "application/json", "Prefer": "wait=10"},
        timeout=15,
    )
    assert json.loads(waited.text)["data"]["custom_fields"] == {"n": 10**30 + 1}

    overlong = b'{"email": "long@example.com", "customFields": {"n": 1' + b"0" * 4300 + b"}}"
    refused = post_raw(service, auth, "/io/contacts/contacts", overlong)
    assert (refused.status_code, refused.json()["error"]) == (400, INTEGER_MESSAGE)

    # An internal producer's integers are kept exactly by the worker as well.
    producer = ContactProducer(settings)
    produced = producer.enqueue(user, {"email": "exact3@example.com", "customFields": numbers})
    service.wait_final(auth, produced)
    status = json.loads(service.job(auth, produced).text)
    assert status["data"]["result"]["data"]["custom_fields"] == numbers


@contextmanager
def failing_inserts(engine: Engine, user: str) -> Iterator[None]:
    """Make the database refuse some of ``user``'s contacts with their data in the error:
    a trigger naming the email, and a unique index whose violation PostgreSQL details
    as ``Key (first_name)=(...)``."""
    tag = user.replace("-", "_")
    with engine.begin() as conn:
        conn.execute(text(f"""
            CREATE FUNCTION refuse_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.last_name = 'Refused' THEN
                RAISE EXCEPTION 'refusing %', NEW.email USING DETAIL = NEW.first_name;
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_{tag} BEFORE INSERT ON contacts FOR EACH ROW
              WHEN (NEW.user_id = '{user}') EXECUTE FUNCTION refuse_{tag}();
            CREATE UNIQUE INDEX one_name_{tag} ON contacts (first_name)
              WHERE user_id = '{user}';
        """))  # fmt: skip
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER refuse_{tag} ON contacts"))
            conn.execute(text(f"DROP FUNCTION refuse_{tag}()"))
            conn.execute(text(f"DROP INDEX one_name_{tag}"))


def test_a_failing_statement_puts_no_contact_data_in_any_log(
    service: Service, settings: Settings, engine: Engine, log_dir: Path
) -> None:
    user, auth = service.new_user()
    name = unique("Zelda")
    bodies = {
        "named": {"email": f"{unique('first')}@example.com", "firstName": name},
        "same name": {"email": f"{unique('twin')}@example.com", "firstName": name},
        "refused": {"email": f"{unique('refused')}@example.com",
                    "firstName": unique("Yolanda"), "lastName": "Refused"},
    }  # fmt: skip
    producer = ContactProducer(settings)
    with failing_inserts(engine, user):
        # Queued together, so that the worker may well take them in one batch.
        jobs = {what: producer.enqueue(user, body) for what, body in bodies.items()}
        finals = {what: service.wait_final(auth, job_id) for what, job_id in jobs.items()}
    # Of the two with one name, one is written (which one is up to the worker's timing).
    outcomes = [finals[what]["error"] or finals[what]["result"] for what in bodies]
    assert sorted(outcome["code"] for outcome in outcomes) == [201, 500, 500]
    assert finals["refused"]["error"] == {"code": 500, "message": "The job could not be processed"}

    time.sleep(0.5)  # the worker's last lines reach its log
    logs = {path.name: path.read_text(errors="replace") for path in log_dir.glob("*.log")}
    everything = "".join(logs.values())
    assert jobs["refused"] in everything  # the failure was logged, in these logs
    for body in bodies.values():
        for value in (body["email"], body["firstName"]):
            leaks = [path for path, text_ in logs.items() if value in text_]
            assert not leaks, f"{value} in {leaks}"
    assert "SQLSTATE 23505" in everything  # what failed is still said
