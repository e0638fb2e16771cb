"""Where Redis clients come from: one server, or the master that Sentinel names."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection

import celeryconfig
from contacts_ingest.infrastructure.redis_clients import redis_client
from contacts_ingest.infrastructure.settings import Settings

SENTINELS = "10.0.0.1:26379,sentinel-b:26380,[::1]:26381"


def under_sentinel(redis_url: str = "redis://127.0.0.1:6379/0") -> Settings:
    return Settings(
        redis_url=redis_url, redis_sentinels=SENTINELS, redis_sentinel_master="contacts"
    )


def test_sentinels_are_read_as_host_and_port_pairs() -> None:
    assert under_sentinel().sentinel_addresses == (
        ("10.0.0.1", 26379),
        ("sentinel-b", 26380),
        ("::1", 26381),
    )
    assert Settings().sentinel_addresses == ()


@pytest.mark.parametrize("entry", ["sentinel-a", "host:", ":26379", "host:port", "host:70000"])
def test_a_sentinel_that_is_not_host_and_port_is_refused_by_name(entry: str) -> None:
    with pytest.raises(ValidationError, match=f"REDIS_SENTINELS entry '{entry}'"):
        Settings(redis_sentinels=f"10.0.0.1:26379,{entry}", redis_sentinel_master="m")


def test_sentinels_without_the_masters_name_are_refused() -> None:
    with pytest.raises(ValidationError, match="REDIS_SENTINEL_MASTER"):
        Settings(redis_sentinels=SENTINELS)


def test_without_sentinels_a_client_talks_to_the_url() -> None:
    client = redis_client(Settings(redis_url="redis://:pw@cache.internal:6390/2"))
    pool = client.connection_pool
    assert type(pool) is redis.ConnectionPool
    assert (pool.connection_kwargs["host"], pool.connection_kwargs["port"]) == (
        "cache.internal",
        6390,
    )


def test_under_sentinel_a_client_asks_for_the_master_with_the_urls_credentials_and_db() -> None:
    client = redis_client(
        under_sentinel(redis_url="redis://app:s3cret@ignored.example:1/4"), socket_timeout=3
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "contacts"
    assert pool.connection_class is SentinelManagedConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "s3cret", 4)
    assert kwargs["socket_timeout"] == 3
    assert "host" not in kwargs
    sentinels = [c.connection_pool.connection_kwargs for c in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [
        ("10.0.0.1", 26379),
        ("sentinel-b", 26380),
        ("::1", 26381),
    ]


def test_under_sentinel_the_broker_is_the_sentinel_aware_inbox_transport() -> None:
    conf = celeryconfig.from_settings(under_sentinel())
    assert conf["broker_transport"] == "contacts_ingest.infrastructure.transport:SentinelTransport"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "contacts"
    assert options["sentinels"] == under_sentinel().sentinel_addresses
    plain = celeryconfig.from_settings(Settings())
    assert plain["broker_transport"] == "contacts_ingest.infrastructure.transport:Transport"
    assert "sentinels" not in plain["broker_transport_options"]


def test_sentinels_that_ask_for_credentials_are_given_them_and_the_master_its_own() -> None:
    settings = under_sentinel(redis_url="redis://:master-pw@ignored.example:1/0").model_copy(
        update={"redis_sentinel_username": "watcher", "redis_sentinel_password": "sentinel-pw"}
    )
    pool = redis_client(settings).connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.connection_kwargs["password"] == "master-pw"
    sentinels = [c.connection_pool.connection_kwargs for c in pool.sentinel_manager.sentinels]
    assert {(s["username"], s["password"]) for s in sentinels} == {("watcher", "sentinel-pw")}
    broker = celeryconfig.from_settings(settings)["broker_transport_options"]
    assert broker["sentinel_auth"] == {"username": "watcher", "password": "sentinel-pw"}
    # Without them the sentinels are asked as before, with no credentials.
    plain = redis_client(under_sentinel()).connection_pool
    assert isinstance(plain, SentinelConnectionPool)
    kwargs = plain.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert kwargs.get("password") is None
