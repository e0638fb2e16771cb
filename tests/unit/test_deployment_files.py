"""docker-compose.yml and the Dockerfile stay true to the code (Docker cannot run here)."""

from __future__ import annotations

import re
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
