"""API keys against the real PostgreSQL: hashed at rest, revocable, cached briefly."""

from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import InternalError, OperationalError

from contacts_ingest.access.keys import (
    KEY_PREFIX,
    KeyResolver,
    create_key,
    hash_key,
    list_keys,
    revoke_key,
)
from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.schema import api_keys
from tests.conftest import free_port, unique

pytestmark = pytest.mark.integration


def test_only_the_hash_of_a_key_is_stored(engine: Engine) -> None:
    user = unique("user")
    key_id, key = create_key(engine, user)
    assert key.startswith(KEY_PREFIX)
    with engine.connect() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).mappings().one()
    assert row["key_hash"] == hash_key(key)
    assert key not in {str(v) for v in row.values()}


def test_a_key_resolves_to_its_user_until_revoked(engine: Engine) -> None:
    user = unique("user")
    _, key = create_key(engine, user)
    resolver = KeyResolver(engine, ttl=0)
    assert resolver.user_for(key) == user
    assert revoke_key(engine, key)
    assert resolver.user_for(key) is None
    assert not revoke_key(engine, key)


def test_revocation_takes_effect_within_the_cache_ttl(engine: Engine) -> None:
    user = unique("user")
    key_id, key = create_key(engine, user)
    resolver = KeyResolver(engine, ttl=0.3)
    assert resolver.user_for(key) == user
    revoke_key(engine, key_id)
    assert resolver.user_for(key) == user  # still cached
    time.sleep(0.4)
    assert resolver.user_for(key) is None


def test_unknown_and_malformed_keys_resolve_to_nobody(engine: Engine) -> None:
    resolver = KeyResolver(engine, ttl=10)
    assert resolver.user_for(KEY_PREFIX + "nope") is None
    assert resolver.user_for("") is None
    assert resolver.user_for("x" * 10_000) is None


def test_list_shows_ids_and_users_never_keys(engine: Engine) -> None:
    user = unique("user")
    key_id, key = create_key(engine, user)
    [info] = list_keys(engine, user)
    assert (info.key_id, info.user_id, info.revoked_at) == (key_id, user, None)
    assert key not in repr(info)


def test_the_gateways_engine_cannot_write(database_url: str) -> None:
    read_only = make_engine(database_url, read_only=True, pool_size=1)
    with read_only.connect() as conn, pytest.raises(InternalError, match="read-only"):
        conn.execute(text("DELETE FROM api_keys"))
    read_only.dispose()


def test_known_keys_keep_working_while_postgresql_is_unreachable(engine: Engine) -> None:
    user = unique("user")
    _, known = create_key(engine, user)
    _, revoked = create_key(engine, user)
    _, never_seen = create_key(engine, user)
    resolver = KeyResolver(engine, ttl=0)
    assert resolver.user_for(known) == user
    revoke_key(engine, revoked)
    assert resolver.user_for(revoked) is None

    resolver._engine = make_engine(  # the same resolver, its database now gone
        f"postgresql://postgres@127.0.0.1:{free_port()}/contacts", pool_size=1
    )
    assert resolver.user_for(known) == user
    assert resolver.user_for(revoked) is None
    with pytest.raises(OperationalError):
        resolver.user_for(never_seen)


def test_a_flood_of_random_keys_never_evicts_a_seen_key_for_an_outage(engine: Engine) -> None:
    user = unique("user")
    _, known = create_key(engine, user)
    resolver = KeyResolver(engine, ttl=0, max_entries=50)
    assert resolver.user_for(known) == user
    for _ in range(500):  # ten times what the process remembers
        assert resolver.user_for(KEY_PREFIX + secrets.token_urlsafe(32)) is None
    assert resolver.seen_live(known)

    resolver._engine = make_engine(  # the same resolver, its database now gone
        f"postgresql://postgres@127.0.0.1:{free_port()}/contacts", pool_size=1
    )
    assert resolver.user_for(known) == user
