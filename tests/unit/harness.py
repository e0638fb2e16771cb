"""An in-process gateway with fakes for its collaborators (fakeredis, dicts, a list)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fakeredis
import falcon.testing

from api_gateway.app import GatewayDeps, create_app
from contacts_ingest.jobs import ContactJob, JobBoard, JobPublisher
from contacts_ingest.settings import Settings

KEYS = {"cik_alice": "alice", "cik_bob": "bob"}
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


def make_harness(
    *, limit: int = 200, ready: bool = True, publish: JobPublisher | None = None
) -> Harness:
    server = fakeredis.FakeServer()
    board = JobBoard(fakeredis.FakeRedis(server=server), key_prefix="t:", record_ttl_seconds=3600)
    published: list[ContactJob] = []
    final_rows: dict[str, dict[str, Any]] = {}

    def down() -> None:
        raise ConnectionError("down")

    deps = GatewayDeps(
        user_for_key=KEYS.get,
        board=board,
        publish=publish or published.append,
        final_job=lambda job_id: final_rows.get(job_id),  # type: ignore[arg-type, return-value]
        readiness={"redis": lambda: None, "postgres": (lambda: None) if ready else down},
    )
    app = create_app(Settings(rate_limit_writes=limit, rate_limit_window_seconds=60), deps)
    return Harness(falcon.testing.TestClient(app), published, final_rows, server)
