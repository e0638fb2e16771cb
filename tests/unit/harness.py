"""An in-process gateway with fakes for its collaborators (fakeredis, dicts, a list)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fakeredis
import falcon.testing
from standardwebhooks import Webhook, WebhookVerificationError

from api_gateway.app import GatewayDeps, create_app
from contacts_ingest.jobs import ContactJob, JobBoard, JobPublisher
from contacts_ingest.settings import Settings
from contacts_ingest.webhooks import WebhookRejected

KEYS = {"cik_alice": "alice", "cik_bob": "bob"}
WEBHOOK_ENDPOINT = "whk_alice"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"alice's webhook secret, 32 bytes").decode()


class Keys:
    """Keys as a dict; every one of them counts as seen by this process."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = users

    def user_for(self, key: str) -> str | None:
        return self._users.get(key)

    def seen_live(self, key: str) -> bool:
        return key in self._users


class AlicesWebhook:
    """Alice's one webhook endpoint, verified as the real verifier does: the body is
    read only for her endpoint."""

    def user_for(
        self, endpoint_id: str, headers: dict[str, str], read_body: Callable[[], bytes]
    ) -> str:
        if endpoint_id != WEBHOOK_ENDPOINT:
            raise WebhookRejected("unknown endpoint")
        try:
            Webhook(WEBHOOK_SECRET).verify(read_body(), headers, json_parse=False)
        except (WebhookVerificationError, ValueError, UnicodeDecodeError) as exc:
            raise WebhookRejected(str(exc)) from exc
        return "alice"

    def seen_live(self, endpoint_id: str) -> bool:
        return endpoint_id == WEBHOOK_ENDPOINT


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


@dataclass
class Harness:
    client: falcon.testing.TestClient
    published: list[ContactJob]
    final_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    redis_server: fakeredis.FakeServer | None = None

    def post(self, body: Any = None, *, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.client.simulate_post(
            "/io/contacts/contacts",
            json=body,
            headers={**ALICE, **(headers or {})},
            **kw,
        )


class InstantWorker:
    """Stands in for the worker and the completion subscription: a published job is
    final at once with the given outcome, and a waiting request is woken at once."""

    def __init__(
        self,
        final_rows: dict[str, dict[str, Any]],
        code: int,
        data: Any,
        batch_items: list[dict[str, Any]] | None = None,
    ) -> None:
        self._final_rows = final_rows
        self._code = code
        self._data = data
        self._batch_items = batch_items

    def publish(self, job: ContactJob) -> None:
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


def make_harness(
    *,
    limit: int = 200,
    ready: bool = True,
    publish: JobPublisher | None = None,
    outcome: tuple[int, Any] | None = None,
    batch_items: list[dict[str, Any]] | None = None,
    batch_limit: int = 10,
    auth_failures: int = 60,
    completions: Any = None,
    waits_per_user: int = 10,
) -> Harness:
    """An in-process gateway; with ``outcome`` (code, contact or message) every job is
    final at once with it, as if a worker had been instant (for ``Prefer: wait``)."""
    server = fakeredis.FakeServer()
    board = JobBoard(fakeredis.FakeRedis(server=server), key_prefix="t:", record_ttl_seconds=3600)
    published: list[ContactJob] = []
    final_rows: dict[str, dict[str, Any]] = {}

    def down() -> None:
        raise ConnectionError("down")

    worker = InstantWorker(final_rows, *outcome, batch_items) if outcome else None

    deps = GatewayDeps(
        keys=Keys(KEYS),
        board=board,
        publish=publish or (worker.publish if worker else published.append),
        final_job=lambda job_id: final_rows.get(job_id),  # type: ignore[arg-type, return-value]
        readiness={"redis": lambda: None, "postgres": (lambda: None) if ready else down},
        webhooks=AlicesWebhook(),
        completions=completions or worker,  # type: ignore[arg-type]
    )
    settings = Settings(
        rate_limit_writes=limit,
        rate_limit_window_seconds=60,
        batch_rate_limit_requests=batch_limit,
        auth_failure_limit=auth_failures,
        wait_max_per_user=waits_per_user,
    )
    app = create_app(settings, deps)
    return Harness(falcon.testing.TestClient(app), published, final_rows, server)
