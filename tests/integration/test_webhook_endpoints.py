"""Webhook endpoints against the real PostgreSQL: secrets, rotation with grace, revocation."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from standardwebhooks import Webhook

from contacts_ingest.access.webhooks import (
    WebhookEndpoint,
    WebhookRejected,
    WebhookVerifier,
    create_endpoint,
    list_endpoints,
    revoke_endpoint,
    rotate_secret,
)
from contacts_ingest.infrastructure.database import make_engine
from tests.conftest import free_port, unique

pytestmark = pytest.mark.integration

BODY = b'{"email": "w@example.com"}'


def signed(*secrets: str, msg_id: str = "msg_1") -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(Webhook(s).sign(msg_id, now, BODY.decode()) for s in secrets),
    }


def test_a_delivery_signed_with_the_endpoints_secret_names_its_user(engine: Engine) -> None:
    user = unique("user")
    endpoint, secret = create_endpoint(engine, user)
    assert endpoint.startswith("whk_")
    assert secret.startswith("whsec_")
    verifier = WebhookVerifier(engine, ttl=0)
    assert verifier.endpoint_for(endpoint, signed(secret), lambda: BODY) == WebhookEndpoint(
        user, "create"
    )
    _, someone_elses = create_endpoint(engine, unique("user"))
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for(endpoint, signed(someone_elses), lambda: BODY)


def test_an_endpoint_created_to_upsert_upserts_and_is_listed_so(engine: Engine) -> None:
    user = unique("user")
    upserting, secret = create_endpoint(engine, user, "upsert")
    creating, _ = create_endpoint(engine, user)
    verifier = WebhookVerifier(engine, ttl=0)
    assert verifier.endpoint_for(upserting, signed(secret), lambda: BODY) == WebhookEndpoint(
        user, "upsert"
    )
    listed = {info.endpoint_id: info.operation for info in list_endpoints(engine, user)}
    assert listed == {upserting: "upsert", creating: "create"}
    with pytest.raises(ValueError, match="operation must be one of create, upsert"):
        create_endpoint(engine, user, "delete")  # type: ignore[arg-type]


def test_after_rotation_both_secrets_verify_until_the_grace_period_ends(engine: Engine) -> None:
    endpoint, old = create_endpoint(engine, unique("user"))
    new = rotate_secret(engine, endpoint, grace=timedelta(seconds=1))
    assert new is not None
    assert new != old
    verifier = WebhookVerifier(engine, ttl=0)
    verifier.endpoint_for(endpoint, signed(old), lambda: BODY)
    verifier.endpoint_for(endpoint, signed(new), lambda: BODY)
    verifier.endpoint_for(endpoint, signed(old, new), lambda: BODY)  # a source signing with both
    time.sleep(1.2)
    verifier.endpoint_for(endpoint, signed(new), lambda: BODY)
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for(endpoint, signed(old), lambda: BODY)
    [info] = [e for e in list_endpoints(engine) if e.endpoint_id == endpoint]
    assert info.live_secrets == 1


def test_a_secret_rotated_in_verifies_at_once_despite_the_cache(engine: Engine) -> None:
    endpoint, old = create_endpoint(engine, unique("user"))
    verifier = WebhookVerifier(engine, ttl=60)
    verifier.endpoint_for(endpoint, signed(old), lambda: BODY)  # cached for a minute
    time.sleep(0.2)
    new = rotate_secret(engine, endpoint)
    assert new is not None
    verifier.endpoint_for(endpoint, signed(new), lambda: BODY)
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for(endpoint, signed("whsec_" + "A" * 44), lambda: BODY)


def test_a_revoked_endpoint_lists_no_live_secret(engine: Engine) -> None:
    endpoint, _ = create_endpoint(engine, unique("user"))
    assert revoke_endpoint(engine, endpoint)
    [info] = [e for e in list_endpoints(engine) if e.endpoint_id == endpoint]
    assert info.revoked_at is not None
    assert info.live_secrets == 0


def test_a_revoked_endpoint_stops_within_the_cache_ttl(engine: Engine) -> None:
    endpoint, secret = create_endpoint(engine, unique("user"))
    verifier = WebhookVerifier(engine, ttl=0.3)
    verifier.endpoint_for(endpoint, signed(secret), lambda: BODY)
    assert revoke_endpoint(engine, endpoint)
    assert rotate_secret(engine, endpoint) is None
    time.sleep(0.4)
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for(endpoint, signed(secret), lambda: BODY)


def test_unknown_and_malformed_endpoints_are_rejected(engine: Engine) -> None:
    verifier = WebhookVerifier(engine, ttl=10)
    for endpoint in ("whk_nope", "", "x" * 1000):
        with pytest.raises(WebhookRejected):
            verifier.endpoint_for(endpoint, signed("whsec_" + "A" * 44), lambda: BODY)


def test_an_unknown_endpoint_is_refused_without_reading_the_body(engine: Engine) -> None:
    def never() -> bytes:
        raise AssertionError("the body was read")

    verifier = WebhookVerifier(engine, ttl=10)
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for("whk_" + "0" * 24, signed("whsec_" + "A" * 44), never)
    endpoint, _ = create_endpoint(engine, unique("user"))
    assert revoke_endpoint(engine, endpoint)
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for(endpoint, signed("whsec_" + "A" * 44), never)


def test_a_flood_of_unknown_endpoints_never_evicts_a_live_one_for_an_outage(
    engine: Engine,
) -> None:
    user = unique("user")
    endpoint, secret = create_endpoint(engine, user)
    verifier = WebhookVerifier(engine, ttl=0, max_entries=50)
    assert verifier.endpoint_for(endpoint, signed(secret), lambda: BODY).user_id == user
    for _ in range(500):
        with pytest.raises(WebhookRejected):
            verifier.endpoint_for(f"whk_{secrets.token_hex(12)}", signed(secret), lambda: BODY)
    assert verifier.seen_live(endpoint)

    verifier._engine = make_engine(  # the same verifier, its database now gone
        f"postgresql://postgres@127.0.0.1:{free_port()}/contacts", pool_size=1
    )
    assert verifier.endpoint_for(endpoint, signed(secret), lambda: BODY).user_id == user
