"""An in-process gateway with fakes for its collaborators: fakeredis (running the real
admission scripts), dicts for keys and final rows."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fakeredis
import falcon.testing
from standardwebhooks import Webhook, WebhookVerificationError

from api_gateway.app import GatewayDeps, create_app
from contacts_ingest.access.keys import KeyHolder
from contacts_ingest.access.webhooks import WebhookEndpoint, WebhookRejected
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import ContactJob
from contacts_ingest.jobs.messages import CeleryMessages
from contacts_ingest.jobs.status import us_from_datetime
from tests.unit.fake_redis import FakeRedis

KEYS = {"cik_alice": "alice", "cik_bob": "bob"}
WEBHOOK_ENDPOINT = "whk_alice"
UPSERT_WEBHOOK_ENDPOINT = "whk_alice_upserts"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"alice's webhook secret, 32 bytes").decode()
ALICES_ENDPOINTS = {
    WEBHOOK_ENDPOINT: WebhookEndpoint("alice", "create"),
    UPSERT_WEBHOOK_ENDPOINT: WebhookEndpoint("alice", "upsert"),
}


class Keys:
    """Keys as a dict (key -> user, or key -> its holder); every one of them counts as
    seen by this process."""

    def __init__(self, users: dict[str, str] | dict[str, KeyHolder]) -> None:
        self._holders = {
            key: user if isinstance(user, KeyHolder) else KeyHolder(f"key_{user}", user)
            for key, user in users.items()
        }

    def holder_for(self, key: str) -> KeyHolder | None:
        return self._holders.get(key)

    def seen_live(self, key: str) -> bool:
        return key in self._holders


class Broken:
    """A collaborator with a bug: every call raises ``RuntimeError(text)``."""

    def __init__(self, text: str = "a bug") -> None:
        self._text = text

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(self._text)

        return fail


class AlicesWebhook:
    """Alice's two webhook endpoints (one creates, one upserts; one secret), verified as
    the real verifier does: the body is read only for her endpoints."""

    def endpoint_for(
        self, endpoint_id: str, headers: dict[str, str], read_body: Callable[[], bytes]
    ) -> WebhookEndpoint:
        if endpoint_id not in ALICES_ENDPOINTS:
            raise WebhookRejected("unknown endpoint")
        try:
            Webhook(WEBHOOK_SECRET).verify(read_body(), headers, json_parse=False)
        except (WebhookVerificationError, ValueError, UnicodeDecodeError) as exc:
            raise WebhookRejected(str(exc)) from exc
        return ALICES_ENDPOINTS[endpoint_id]

    def seen_live(self, endpoint_id: str) -> bool:
        return endpoint_id in ALICES_ENDPOINTS


def signed(
    body: bytes, *, secret: str = WEBHOOK_SECRET, msg_id: str = "msg_1", at: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, as a source would send them."""
    moment = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, moment, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


ALICE = {"Authorization": "Bearer cik_alice"}
BOB = {"Authorization": "Bearer cik_bob"}
JSON = {"Content-Type": "application/json"}


def queued_jobs(client: fakeredis.FakeRedis, queue_key: str) -> list[ContactJob]:
    """The jobs whose Celery messages are on the queue, oldest first, decoded as the
    worker decodes them."""
    jobs = []
    for raw in reversed(client.lrange(queue_key, 0, -1)):
        _, kwargs, _ = json.loads(json.loads(raw)["body"])
        jobs.append(ContactJob.from_message(kwargs["job"]))
    return jobs


@dataclass
class Harness:
    client: falcon.testing.TestClient
    redis: fakeredis.FakeRedis
    queue_key: str
    final_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    redis_server: fakeredis.FakeServer | None = None

    @property
    def published(self) -> list[ContactJob]:
        """Every job queued so far, oldest first."""
        return queued_jobs(self.redis, self.queue_key)

    def post(self, body: Any = None, *, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.client.simulate_post(
            "/io/contacts/contacts",
            json=body,
            headers={**ALICE, **(headers or {})},
            **kw,
        )


class InstantWorker:
    """Stands in for the worker and the completion subscription: a queued job is final
    as soon as anyone looks, with the given outcome, and a waiting request is woken at
    once."""

    def __init__(
        self,
        final_rows: dict[str, dict[str, Any]],
        queue: tuple[fakeredis.FakeRedis, str],
        code: int,
        data: Any,
        batch_items: list[dict[str, Any]] | None = None,
    ) -> None:
        self._final_rows = final_rows
        self._queue = queue
        self._code = code
        self._data = data
        self._batch_items = batch_items

    def final_job(self, job_id: str) -> dict[str, Any] | None:
        client, key = self._queue
        for job in queued_jobs(client, key):
            if job.job_id not in self._final_rows:
                self._finish(job)
        return self._final_rows.get(job_id)

    def _finish(self, job: ContactJob) -> None:
        ok = self._code < 400
        if job.batch:
            items = self._batch_items or []
            counts = {"created": sum(i["code"] == 201 for i in items),
                      "updated": sum(i["code"] == 200 for i in items),
                      "failed": sum(i["code"] >= 400 for i in items)}  # fmt: skip
            self._data = None
        self._final_rows[job.job_id] = {
            "job_id": job.job_id, "user_id": job.user_id, "operation": job.operation,
            "status": "succeeded" if ok else "failed", "code": self._code,
            "result": (
                {"code": 200, "counts": counts, "items": items} if job.batch
                else {"code": self._code, "data": self._data} if ok else None
            ),
            "error": None if ok else {"code": self._code, "message": self._data},
            "accepted_at": datetime.now(UTC), "finished_at": datetime.now(UTC),
        }  # fmt: skip

    def register(self, job_id: str) -> threading.Event:
        done = threading.Event()
        done.set()
        return done

    def unregister(self, job_id: str) -> None:
        pass


def final_rows_lister(rows: dict[str, dict[str, Any]]) -> Any:
    """Lists ``rows`` as ``read_final_jobs`` lists the status table (a fake of its SQL)."""

    def final_jobs(
        user_id: str, *, below: Any, since_us: Any, status: Any, limit: int
    ) -> list[dict[str, Any]]:
        def position(row: dict[str, Any]) -> tuple[int, bytes]:
            return us_from_datetime(row["accepted_at"]), row["job_id"].encode()

        found = [
            row
            for row in rows.values()
            if row["user_id"] == user_id
            and (status is None or row["status"] == status)
            and (since_us is None or position(row)[0] >= since_us)
            and (below is None or position(row) < (below[0], below[1].encode()))
        ]
        return sorted(found, key=position, reverse=True)[:limit]

    return final_jobs


def make_harness(
    *,
    limit: int = 200,
    ready: bool = True,
    outcome: tuple[int, Any] | None = None,
    batch_items: list[dict[str, Any]] | None = None,
    batch_limit: int = 10,
    auth_failures: int = 60,
    completions: Any = None,
    waits_per_user: int = 10,
    keys: Any = None,
    webhooks: Any = None,
    max_queued: int = 0,
    respond_default: str = "async",
) -> Harness:
    """An in-process gateway; with ``outcome`` (code, contact or message) every job is
    final at once with it, as if a worker had been instant (for ``Prefer: wait``)."""
    settings = Settings(
        rate_limit_writes=limit,
        rate_limit_window_seconds=60,
        batch_rate_limit_requests=batch_limit,
        auth_failure_limit=auth_failures,
        wait_max_per_user=waits_per_user,
        redis_key_prefix="t:",
        respond_default=respond_default,
    )
    server = fakeredis.FakeServer()
    client = FakeRedis(server=server)
    messages = CeleryMessages(settings)
    board = JobBoard(
        client, messages, key_prefix="t:", record_ttl_seconds=3600, max_queued_jobs=max_queued
    )
    final_rows: dict[str, dict[str, Any]] = {}

    def down() -> None:
        raise ConnectionError("down")

    worker = (
        InstantWorker(final_rows, (client, messages.queue_key), *outcome, batch_items)
        if outcome
        else None
    )
    deps = GatewayDeps(
        keys=keys or Keys(KEYS),
        board=board,
        final_job=worker.final_job if worker else final_rows.get,  # type: ignore[arg-type]
        final_jobs=final_rows_lister(final_rows),
        readiness={"redis": lambda: None, "postgres": (lambda: None) if ready else down},
        webhooks=webhooks or AlicesWebhook(),
        completions=completions or worker,  # type: ignore[arg-type]
    )
    app = create_app(settings, deps)
    return Harness(falcon.testing.TestClient(app), client, messages.queue_key, final_rows, server)
