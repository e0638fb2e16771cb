"""The embedded PostgreSQL that dev and the tests run on keeps running and stops cleanly."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from contacts_ingest.infrastructure.local_servers import (
    start_embedded_postgres,
    stop_embedded_postgres,
)

pytestmark = pytest.mark.integration


def test_the_embedded_postgresql_survives_checkpoints_and_dropped_databases(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    url = start_embedded_postgres(data)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            conn.execute("CREATE DATABASE scratch")
            conn.execute("DROP DATABASE scratch WITH (FORCE)")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stop_embedded_postgres(data)
