"""Webhook endpoints against the real PostgreSQL: secrets, rotation with grace, revocation."""

from __future__ import annotations

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
from tests.conftest import unique

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
    assert verifier.endpoint_for(endpoint, BODY, signed(secret)) == WebhookEndpoint(user, "create")
    _, someone_elses = create_endpoint(engine, unique("user"))
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for(endpoint, BODY, signed(someone_elses))


def test_an_endpoint_created_to_upsert_upserts_and_is_listed_so(engine: Engine) -> None:
    user = unique("user")
    upserting, secret = create_endpoint(engine, user, "upsert")
    creating, _ = create_endpoint(engine, user)
    verifier = WebhookVerifier(engine, ttl=0)
    assert verifier.endpoint_for(upserting, BODY, signed(secret)) == WebhookEndpoint(user, "upsert")
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
    verifier.endpoint_for(endpoint, BODY, signed(old))
    verifier.endpoint_for(endpoint, BODY, signed(new))
    verifier.endpoint_for(endpoint, BODY, signed(old, new))  # a source signing with both
    time.sleep(1.2)
    verifier.endpoint_for(endpoint, BODY, signed(new))
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for(endpoint, BODY, signed(old))
    [info] = [e for e in list_endpoints(engine) if e.endpoint_id == endpoint]
    assert info.live_secrets == 1


def test_a_revoked_endpoint_stops_within_the_cache_ttl(engine: Engine) -> None:
    endpoint, secret = create_endpoint(engine, unique("user"))
    verifier = WebhookVerifier(engine, ttl=0.3)
    verifier.endpoint_for(endpoint, BODY, signed(secret))
    assert revoke_endpoint(engine, endpoint)
    assert rotate_secret(engine, endpoint) is None
    time.sleep(0.4)
    with pytest.raises(WebhookRejected):
        verifier.endpoint_for(endpoint, BODY, signed(secret))


def test_unknown_and_malformed_endpoints_are_rejected(engine: Engine) -> None:
    verifier = WebhookVerifier(engine, ttl=10)
    for endpoint in ("whk_nope", "", "x" * 1000):
        with pytest.raises(WebhookRejected):
            verifier.endpoint_for(endpoint, BODY, signed("whsec_" + "A" * 44))
