"""docker-compose.yml and the Dockerfile stay true to the code (Docker cannot run here)."""

from __future__ import annotations

import base64
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from contacts_ingest.commands.cli import main
from contacts_ingest.infrastructure.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_has_every_service_of_the_design(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "redis", "postgres", "migrate", "gateway", "worker", "flower"
    }  # fmt: skip


def test_flower_watches_the_same_broker_and_the_workers_send_it_events(
    compose: dict[str, Any],
) -> None:
    flower = compose["services"]["flower"]
    assert flower["command"][:4] == ["celery", "-A", "worker.app", "flower"]
    assert (
        flower["environment"]["REDIS_URL"]
        == compose["services"]["worker"]["environment"]["REDIS_URL"]
    )
    assert compose["services"]["worker"]["environment"]["WORKER_SEND_EVENTS"] == "true"
    assert Settings(worker_send_events="true").worker_send_events
    assert flower["ports"] == ["5555:5555"]


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name in ("redis", "postgres", "gateway", "worker"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_every_service_but_the_one_shot_migration_has_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    one_shot = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shot == {"migrate"}
    assert "healthcheck" not in services["migrate"]
    for name in set(services) - one_shot:
        assert services[name]["healthcheck"]["test"], name


def test_no_comment_says_flower_shows_tasks() -> None:
    comments = " ".join(
        line.split("#", 1)[1].strip()
        for line in (ROOT / "docker-compose.yml").read_text().splitlines()
        if "#" in line
    )
    # Jobs are applied in batches outside Celery's per-task tracing (README, Flower).
    assert "Flower lists no tasks" in comments
    assert re.search(r"flower[^.]*(task views|and tasks)", comments, re.I) is None
    assert comments.count("task") == comments.count("no tasks") + comments.count("per-task")


class _NeedsBasicAuth(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(b"admin:s3cret").decode()
        ok = self.path == "/healthcheck" and self.headers.get("Authorization") == expected
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("auth", "healthy"), [("admin:s3cret,other:pw", True), ("x:y", False)])
def test_flowers_healthcheck_asks_its_port_with_its_password(
    compose: dict[str, Any], auth: str, healthy: bool
) -> None:
    flower = compose["services"]["flower"]
    port = flower["command"][-1].removeprefix("--port=")
    test = flower["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    server = http.server.HTTPServer(("127.0.0.1", 0), _NeedsBasicAuth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # The same check against a stand-in for Flower, on a port that is free here.
        code = test[-1].replace(f":{port}/", f":{server.server_address[1]}/")
        done = subprocess.run(
            [sys.executable, *test[2:-1], code],
            env={"PATH": os.environ["PATH"], "FLOWER_BASIC_AUTH": auth},
            capture_output=True,
        )
    finally:
        server.shutdown()
    assert (done.returncode == 0) == healthy, done.stderr


def test_redis_keeps_an_always_fsynced_aof_and_never_evicts(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    assert "--maxmemory-policy noeviction" in command


def test_migration_runs_once_before_gateway_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["contacts-ingest", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("gateway", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"


def test_service_commands_are_real_cli_commands(compose: dict[str, Any]) -> None:
    for name in ("migrate", "gateway", "worker"):
        command = compose["services"][name]["command"]
        assert command[0] == "contacts-ingest"
        assert command[1] in main.commands, command


def test_service_environment_names_real_settings(compose: dict[str, Any]) -> None:
    known = {name.upper() for name in Settings.model_fields}
    for name in ("migrate", "gateway", "worker"):
        env = compose["services"][name]["environment"]
        assert set(env) <= known, set(env) - known
        assert env["DATABASE_URL"].startswith("postgresql://")
        Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"])


def test_gateway_port_matches_the_published_port(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    port = gateway["command"][gateway["command"].index("--port") + 1]
    assert gateway["ports"] == [f"{port}:{port}"]
    assert f":{port}/readyz" in " ".join(gateway["healthcheck"]["test"])


def test_dockerfile_installs_every_package_the_code_imports() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\1$", dockerfile, flags=re.M))
    assert {"contacts_ingest", "api_gateway", "worker"} <= copied
    assert "celeryconfig.py" in dockerfile
    assert 'pip install ".[ops]"' in dockerfile


def test_the_schema_head_the_gateway_expects_is_the_newest_migration() -> None:
    from contacts_ingest.infrastructure.migrate import head_revision
    from contacts_ingest.infrastructure.schema import SCHEMA_HEAD

    assert head_revision() == SCHEMA_HEAD


def test_only_the_gateway_and_flower_publish_ports_on_the_host(compose: dict[str, Any]) -> None:
    published = {name for name, service in compose["services"].items() if "ports" in service}
    assert published == {"gateway", "flower"}


def test_worker_metrics_reach_the_compose_network_but_not_the_host(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    assert Settings().worker_metrics_host == "127.0.0.1"  # outside compose: loopback only
    host = worker["environment"]["WORKER_METRICS_HOST"]
    assert Settings(worker_metrics_host=host).worker_metrics_host == "0.0.0.0"  # noqa: S104
    assert worker["expose"] == [str(Settings().worker_metrics_port)]
    assert "ports" not in worker


def _compose_unescaped(value: str) -> str:
    """A string as Compose hands it to the container: ``$$`` is a literal ``$``."""
    return value.replace("$$", "$")


@pytest.mark.parametrize("auth", [None, ""])
def test_flower_refuses_to_start_without_basic_auth(
    compose: dict[str, Any], auth: str | None
) -> None:
    flower = compose["services"]["flower"]
    assert flower["profiles"] == ["flower"]  # not started by a plain `docker compose up`
    # No default value: whatever is unset on the host is unset in the container.
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    entrypoint = [_compose_unescaped(part) for part in flower["entrypoint"]]
    env = {"PATH": os.environ["PATH"]} | ({} if auth is None else {"FLOWER_BASIC_AUTH": auth})
    done = subprocess.run(
        [*entrypoint, "echo", "flower started"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "set FLOWER_BASIC_AUTH to user:password" in done.stderr
    assert "flower started" not in done.stdout


def test_flower_starts_with_basic_auth_in_its_environment(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    entrypoint = [_compose_unescaped(part) for part in flower["entrypoint"]]
    # The command runs as given (Flower reads FLOWER_BASIC_AUTH itself, as --basic-auth).
    probe = ["sh", "-c", 'echo "started with $FLOWER_BASIC_AUTH"']
    env = {"PATH": os.environ["PATH"], "FLOWER_BASIC_AUTH": "admin:s3cret"}
    done = subprocess.run([*entrypoint, *probe], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "started with admin:s3cret\n")
    assert flower["command"][-1] == "--port=5555"
    assert "basic" not in " ".join(flower["command"])  # never the password on a command line


def test_the_failover_profile_runs_a_durable_replica_and_three_sentinels_of_the_master(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    replica = services["redis-replica"]
    assert replica["profiles"] == ["failover"]
    command = " ".join(replica["command"])
    assert "--replicaof redis 6379" in command
    # As durable as the master it may replace.
    master = " ".join(services["redis"]["command"])
    for flag in ("--appendonly yes", "--appendfsync always", "--maxmemory-policy noeviction"):
        assert flag in command
        assert flag in master
    sentinels = [name for name in services if name.startswith("sentinel-")]
    assert len(sentinels) == 3
    env = services["gateway"]["environment"]
    for name in sentinels:
        sentinel = services[name]
        assert sentinel["profiles"] == ["failover"]
        assert sentinel["healthcheck"]["test"]
        script = sentinel["entrypoint"][-1]
        # A majority of the three agrees before a failover, of the master the service names.
        assert f"'sentinel monitor {env['REDIS_SENTINEL_MASTER']} redis 6379 2'" in script
        assert "port 26379" in script
    # The services reach them by the names the compose file's header tells people to set.
    header = (ROOT / "docker-compose.yml").read_text().split("x-service-env")[0]
    listed = ",".join(f"{name}:26379" for name in sentinels)
    assert f"REDIS_SENTINELS={listed}" in header
    assert env["REDIS_SENTINELS"] == "${REDIS_SENTINELS:-}"
    assert Settings(redis_sentinels=listed, redis_sentinel_master="contacts").sentinel_addresses
