"""A machine is lost: the Redis master under Sentinel, or the PostgreSQL primary with a
synchronous standby. The service finds the promoted server without a restart and keeps
its guarantees (the audit of every fault test)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import text

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.migrate import upgrade
from contacts_ingest.infrastructure.redis_clients import redis_client
from contacts_ingest.jobs.board import JobBoard, NotReplicated
from contacts_ingest.jobs.job import ContactJob, new_job_id
from tests.conftest import unique
from tests.e2e.conftest import create_key, wait_final
from tests.faults.conftest import Scenario, Servers, binaries, wait_until
from tests.faults.load import SteadyLoad, audit_allowing_unanswered
from tests.faults.servers import PrivatePostgres, PrivateRedis, PrivateSentinel, temp_root

pytestmark = pytest.mark.faults

MASTER_NAME = "contacts"


@dataclass
class SentinelRedis:
    """A master, two replicas (one keeps confirming writes once the other is promoted)
    and three sentinels, each on a free port of loopback."""

    master: PrivateRedis
    replicas: list[PrivateRedis]
    sentinels: list[PrivateSentinel]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def master_port(self) -> int | None:
        """The master's port, as the first sentinel that answers names it (None if none
        answers in time: a busy machine)."""
        for sentinel in self.sentinels:
            try:
                _, port = ask(sentinel.port, "SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def settled(self) -> bool:
        """Every sentinel knows the others and both replicas, and they are in sync."""
        try:
            return self._settled()
        except redis.RedisError:  # one did not answer in time: ask again
            return False

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            state = ask(sentinel.port, "SENTINEL MASTER", MASTER_NAME)
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 2:
                return False
        port = self.master_port()
        if port is None:
            return False
        info = ask(port, "INFO", "replication")
        return sum(1 for key in info if key.startswith("slave") and key[5:].isdigit()) == 2


def ask(port: int, *command: str) -> Any:
    """One command to the server (or sentinel) on ``port``, over a connection of its own."""
    with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as client:
        return client.execute_command(*command)


@pytest.fixture
def sentinel_redis() -> Iterator[SentinelRedis]:
    root = temp_root()
    redis_binaries = binaries()[1]
    master = PrivateRedis(redis_binaries, root, name="master")
    started: list[PrivateRedis | PrivateSentinel] = []
    try:
        master.start()
        started.append(master)
        replicas = [
            PrivateRedis(redis_binaries, root, name=f"replica{i}", replica_of=master.port)
            for i in (1, 2)
        ]
        for replica in replicas:
            replica.start()
            started.append(replica)
        sentinels = [
            PrivateSentinel(
                redis_binaries, root / f"sentinel{i}", name=MASTER_NAME, master_port=master.port
            )
            for i in (1, 2, 3)
        ]
        for sentinel in sentinels:
            sentinel.start()
            started.append(sentinel)
        servers = SentinelRedis(master, replicas, sentinels)
        wait_until(servers.settled, "the sentinels did not find each other and the replicas")
        yield servers
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def sentinel_scenario(
    servers: Servers, redis_servers: SentinelRedis, min_replicas_ack: int
) -> Scenario:
    queue = unique("failover")
    settings = servers.settings.model_copy(
        update={
            "redis_url": "redis://127.0.0.1:1/0",  # under Sentinel, host and port are unused
            "redis_sentinels": redis_servers.addresses,
            "redis_sentinel_master": MASTER_NAME,
            "redis_min_replicas_ack": min_replicas_ack,
            "celery_queue": queue,
        }
    )
    return Scenario.on(
        replace(servers, redis=redis_servers.master, settings=settings),
        settings,
        redis_client(settings, socket_timeout=5),
        REDIS_SENTINELS=redis_servers.addresses,
        REDIS_SENTINEL_MASTER=MASTER_NAME,
        REDIS_MIN_REPLICAS_ACK=str(min_replicas_ack),
    )


def master_killed_under_load(
    scenario: Scenario, redis_servers: SentinelRedis, strike: Callable[[], None] | None = None
) -> tuple[SteadyLoad, float]:
    """Post steadily; SIGKILL the master (or ``strike`` it); go on until 202s come after
    the promotion. Returns the load and when the master was struck."""
    scenario.worker("w")
    _, base = scenario.gateway()
    load = SteadyLoad(base, {"Authorization": f"Bearer {create_key(scenario.env, scenario.user)}"})
    old = redis_servers.master.port
    with load.running():
        wait_until(lambda: len(load.accepted()) >= 50, "the gateway accepted too little")
        (strike or redis_servers.master.kill)()
        killed_at = time.monotonic()
        wait_until(
            lambda: redis_servers.master_port() not in (old, None), "Sentinel promoted no replica"
        )
        promoted = time.monotonic()
        wait_until(
            lambda: any(a.code == 202 and a.started > promoted for a in load.answers),
            "the gateway accepted nothing after the promotion",
        )
        wait_until(
            lambda: len([a for a in load.answers if a.code == 202 and a.started > promoted]) >= 25,
            "the gateway accepted too little after the promotion",
        )
    assert {a.code for a in load.answers} <= {202, 503, None}
    return load, killed_at


def audit_confirmed_failover(
    scenario: Scenario, load: SteadyLoad, struck_at: float, how: str
) -> None:
    """Under REDIS_MIN_REPLICAS_ACK=1: every 202 job drains and ends once (a 503 one may
    have been queued all the same); prints what the failover cost."""
    accepted = load.accepted()
    scenario.wait_drained(list(accepted), timeout=60)
    audit_allowing_unanswered(scenario, load, accepted, lambda a: a.code == 503)
    record_failover(load, [], struck_at, how)


def test_with_one_replica_confirming_a_killed_master_loses_no_accepted_job(
    servers: Servers, sentinel_redis: SentinelRedis
) -> None:
    scenario = sentinel_scenario(servers, sentinel_redis, min_replicas_ack=1)
    try:
        load, killed_at = master_killed_under_load(scenario, sentinel_redis)
        audit_confirmed_failover(scenario, load, killed_at, "REDIS_MIN_REPLICAS_ACK=1")
    finally:
        scenario.stop_all()


def test_a_master_that_stops_answering_without_closing_a_connection_is_replaced_too(
    servers: Servers, sentinel_redis: SentinelRedis
) -> None:
    # SIGSTOP: every connection to it stays open and silent, as when its machine drops
    # off the network (no reset reaches the clients); only timeouts can tell.
    scenario = sentinel_scenario(servers, sentinel_redis, min_replicas_ack=1)
    frozen = sentinel_redis.master.process
    assert frozen is not None
    try:
        load, struck_at = master_killed_under_load(
            scenario, sentinel_redis, lambda: frozen.send_signal(signal.SIGSTOP)
        )
        audit_confirmed_failover(
            scenario, load, struck_at, "REDIS_MIN_REPLICAS_ACK=1, master frozen"
        )
    finally:
        scenario.stop_all()
        frozen.kill()


def test_without_confirmation_a_killed_master_loses_at_most_its_last_writes(
    servers: Servers, sentinel_redis: SentinelRedis
) -> None:
    scenario = sentinel_scenario(servers, sentinel_redis, min_replicas_ack=0)
    try:
        load, killed_at = master_killed_under_load(scenario, sentinel_redis)
        accepted = load.accepted()

        def settled() -> bool:
            # Every accepted job is final, or gone from Redis altogether (lost with the
            # master): nothing of it left to finish.
            finished = scenario.final_rows(list(accepted))
            return scenario.in_flight() == 0 and all(
                job_id in finished or scenario.board.pending(job_id) is None for job_id in accepted
            )

        wait_until(settled, lambda: f"jobs still in flight: {scenario.broker_state()}", 60)
        finished = scenario.final_rows(list(accepted))
        lost = [job_id for job_id in accepted if job_id not in finished]
        survivors = {job_id: accepted[job_id] for job_id in accepted if job_id in finished}
        audit_allowing_unanswered(scenario, load, survivors, lambda a: a.code == 503)
        record_failover(load, lost, killed_at, "REDIS_MIN_REPLICAS_ACK=0")
    finally:
        scenario.stop_all()


def record_failover(load: SteadyLoad, lost: list[str], killed_at: float, how: str) -> None:
    """Print what the failover cost (for the README's figures; run with -s to see it)."""
    before = [a.ended for a in load.answers if a.code == 202 and a.started < killed_at]
    after = [a.ended for a in load.answers if a.code == 202 and a.started > killed_at]
    figure = {
        "accepted": len(load.accepted()),
        "lost": len(lost),
        "refused_503": sum(1 for a in load.answers if a.code == 503),
        "no_answer": sum(1 for a in load.answers if a.code is None),
        "seconds_without_202": round(min(after) - max(before), 2),
    }
    print(f"\nRedis failover, {how}: {json.dumps(figure)}")


@dataclass
class StandbyPostgres:
    """A primary that commits only once its standby has the commit, and that standby."""

    primary: PrivatePostgres
    standby: PrivatePostgres

    @property
    def url(self) -> str:
        """Both, in libpq's multi-host form: whichever takes writes is the one used."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            "/contacts?target_session_attrs=read-write"
        )

    def synchronous(self) -> bool:
        engine = make_engine(self.primary.url.replace("/contacts", "/postgres"), pool_size=1)
        try:
            with engine.connect() as conn:
                states = conn.execute(text("SELECT sync_state FROM pg_stat_replication"))
                return list(states.scalars()) == ["sync"]
        finally:
            engine.dispose()


@pytest.fixture
def standby_postgres() -> Iterator[StandbyPostgres]:
    root = temp_root()
    postgres_binaries = binaries()[0]
    primary = PrivatePostgres(postgres_binaries, root, name="primary")
    started: list[PrivatePostgres] = []
    try:
        primary.start()
        started.append(primary)
        upgrade(primary.url)  # before the copy, so the standby starts with the schema
        standby = PrivatePostgres(postgres_binaries, root, name="standby", standby_of=primary)
        standby.start()
        started.append(standby)
        primary.wait_for_a_standby()
        pair = StandbyPostgres(primary, standby)
        wait_until(pair.synchronous, "the standby did not become synchronous")
        yield pair
    finally:
        for server in started:
            with suppress(subprocess.CalledProcessError):  # the killed one is down already
                server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_primary_killed_and_its_synchronous_standby_promoted_fail_and_lose_nothing(
    servers: Servers, standby_postgres: StandbyPostgres
) -> None:
    queue = unique("pg-failover")
    settings = servers.settings.model_copy(
        update={"database_url": standby_postgres.url, "celery_queue": queue}
    )
    engine = make_engine(standby_postgres.url, pool_size=2)
    scenario = Scenario.on(
        replace(servers, postgres=standby_postgres.primary, engine=engine),
        settings,
        redis.Redis.from_url(settings.redis_url),
    )
    try:
        scenario.worker("w")
        _, base = scenario.gateway()
        auth = {"Authorization": f"Bearer {create_key(scenario.env, scenario.user)}"}
        load = SteadyLoad(base, auth)
        with load.running():
            wait_until(lambda: scenario.finished(list(load.accepted())) >= 50, "nothing finished")
            committed_before = set(scenario.final_rows(list(load.accepted())))
            standby_postgres.primary.kill()
            time.sleep(1)  # the workers meet the dead primary before there is another
            standby_postgres.standby.promote()
            promoted = time.monotonic()
            wait_until(
                lambda: (
                    sum(1 for a in load.answers if a.code == 202 and a.started > promoted) >= 25
                ),
                "the gateway accepted too little after the promotion",
            )
        accepted = load.accepted()
        # The gateway reads PostgreSQL only for keys, which it caches: it kept accepting.
        assert {a.code for a in load.answers} == {202}
        scenario.wait_drained(list(accepted), timeout=60)
        # Every commit the dead primary confirmed is on the promoted standby.
        assert committed_before <= set(scenario.final_rows(list(accepted)))
        scenario.audit(dict.fromkeys(accepted, 201), {email: 1 for email in accepted.values()})
    finally:
        scenario.stop_all()
        engine.dispose()


def test_sentinels_that_ask_for_a_password_are_given_it_by_every_process(
    servers: Servers,
) -> None:
    root = temp_root()
    master = PrivateRedis(binaries()[1], root, name="master")
    master.start()
    sentinel = PrivateSentinel(
        binaries()[1], root / "sentinel", name=MASTER_NAME, master_port=master.port, quorum=1,
        password="sentinel-secret",
    )  # fmt: skip
    sentinel.start()
    addresses = f"127.0.0.1:{sentinel.port}"
    settings = servers.settings.model_copy(
        update={
            "redis_url": "redis://127.0.0.1:1/0",
            "redis_sentinels": addresses,
            "redis_sentinel_master": MASTER_NAME,
            "redis_sentinel_password": "sentinel-secret",
            "celery_queue": unique("guarded"),
        }
    )
    scenario = Scenario.on(
        replace(servers, redis=master, settings=settings),
        settings,
        redis_client(settings),
        REDIS_SENTINELS=addresses,
        REDIS_SENTINEL_MASTER=MASTER_NAME,
        REDIS_SENTINEL_PASSWORD="sentinel-secret",
    )
    try:
        # The sentinel refuses a client without the password: it finds no master.
        with pytest.raises(redis.ConnectionError):
            redis_client(settings.model_copy(update={"redis_sentinel_password": ""})).ping()
        scenario.worker("w")  # its broker connections ask the sentinel too
        _, base = scenario.gateway()
        auth = {"Authorization": f"Bearer {create_key(scenario.env, scenario.user)}"}
        answer = requests.post(
            f"{base}/io/contacts/contacts", json={"email": "guarded@example.com"}, headers=auth,
            timeout=10,
        )  # fmt: skip
        assert answer.status_code == 202, answer.text
        final = wait_final(base, auth, answer.json()["data"]["job_id"])
        assert final["result"]["code"] == 201
    finally:
        scenario.stop_all()
        sentinel.stop()
        master.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("min_replicas_ack", [0, 1])
def test_a_promoted_server_that_never_saw_the_scripts_runs_them(
    servers: Servers, min_replicas_ack: int
) -> None:
    # A replica promoted by Sentinel may not have the scripts the old master had loaded:
    # Redis answers NOSCRIPT, and the board loads them there and runs them again.
    root = temp_root()
    server = PrivateRedis(binaries()[1], root, name="fresh")
    server.start()
    try:
        settings = servers.settings.model_copy(
            update={
                "redis_url": server.url,
                "redis_min_replicas_ack": min_replicas_ack,
                "redis_replicas_ack_timeout_ms": 10,
                "celery_queue": unique("noscript"),
            }
        )
        client = redis.Redis.from_url(server.url)
        board = JobBoard.for_settings(client, settings)
        user = unique("user")
        job_ids = []
        for _ in range(2):
            job = ContactJob(new_job_id(), user, "create", {"email": "a@b.example"}, 0)
            job_ids.append(job.job_id)
            try:
                board.admit(user_id=user, member=job.job_id, job=job, limit=(10, 60))
            except NotReplicated:  # no replica here: not confirmed, but admitted
                assert min_replicas_ack
            client.script_flush()
        assert [board.pending(job_id) is not None for job_id in job_ids] == [True, True]
        assert client.llen(f"{settings.redis_key_prefix}{settings.celery_queue}") == 2
        assert board.start_many(job_ids) == [1, 1]  # a pipeline of scripts, reloaded too
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
