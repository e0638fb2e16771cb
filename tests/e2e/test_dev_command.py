"""`contacts-ingest dev` brings up the whole system with embedded PostgreSQL and Redis."""

from __future__ import annotations

import fcntl
import os
import queue
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import termios
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import redis
import requests

from tests.conftest import free_port
from tests.e2e.conftest import CLI, wait_final
from tests.e2e.sockets import listening, non_loopback_ipv4

pytestmark = pytest.mark.e2e


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Read the process's stdout until a line matches ``pattern``; return everything read."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen += line
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got:\n{seen}")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def child(dev: psutil.Process, command: str) -> psutil.Process:
    """The one process dev started to run ``command``."""
    [found] = [c for c in dev.children() if command in c.cmdline()]
    return found


def assert_private_to_its_user(data: Path, dev: psutil.Process) -> None:
    """Other local users can enter none of dev's folders nor use its Redis."""
    # As root, PostgreSQL runs as an account of its own, which may pass through (0710).
    assert mode(data) == (0o700 if os.geteuid() else 0o710)
    redis_files = [path for path in (data / "redis").rglob("*") if path.is_file()]
    assert redis_files
    assert {mode(path) & 0o077 for path in [data / "redis", *redis_files]} == {0}
    assert mode(data / "postgres") & 0o077 == 0

    [redis_server] = [c for c in dev.children() if "redis-server" in c.name()]
    [(_, redis_port)] = listening(redis_server.pid)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5).ping()
    # Its password is in the environment of dev's processes (their owner's), and on no
    # command line (which every local user can read).
    url = urlsplit(child(dev, "worker").environ()["REDIS_URL"])
    assert url.port == redis_port
    assert url.password
    assert redis.Redis(port=redis_port, password=url.password, socket_timeout=5).ping()
    command_lines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    assert not [line for line in command_lines if url.password in line]


def test_dev_runs_the_service_on_embedded_servers_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    port = free_port()
    metrics_port = free_port()
    env["WORKER_METRICS_PORT"] = str(metrics_port)  # the default port may be taken here
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # made by hand, open to all: dev tightens it
    data.chmod(0o755)
    process = subprocess.Popen(
        [CLI, "dev", "--data-dir", str(data), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "dev.log").open("w"),
        text=True,
    )
    try:
        banner = read_until(process, r"^\s+\S*contacts-ingest import ", timeout=120)
        key = re.search(r"API key:\s+(cik_\S+)", banner)
        assert key, banner
        auth = {"Authorization": f"Bearer {key.group(1)}"}
        base = f"http://127.0.0.1:{port}"
        # Quoted (zsh reads an unquoted ? as a pattern), and an upsert: a second dev on
        # the same data gets 200, not a 409 job.
        assert f"curl -i '{base}/io/contacts/contacts?upsert=1'" in banner
        assert "import contacts.csv --user demo" in banner

        accepted = requests.post(
            f"{base}/io/contacts/contacts",
            json={"email": "dev@example.com", "firstName": "Dev"},
            headers=auth,
            timeout=10,
        )
        assert accepted.status_code == 202
        final = wait_final(base, auth, accepted.json()["data"]["job_id"])
        assert final["result"]["code"] == 201
        children = psutil.Process(process.pid).children(recursive=True)

        assert_private_to_its_user(data, psutil.Process(process.pid))
        # Everything dev starts listens on loopback only, the worker's metrics included.
        sockets = listening(process.pid)
        assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets
        assert {port, metrics_port} <= {bound_port for _, bound_port in sockets}
        for address in non_loopback_ipv4():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, metrics_port), timeout=5).close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
    assert (tmp_path / "data" / "redis").is_dir()
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ], "an embedded server outlived dev"


class Dev:
    """``contacts-ingest dev`` in ``cwd`` as a terminal runs it (a process group of its
    own, stdout and stderr on one screen), every line it prints kept in ``lines``."""

    def __init__(self, cwd: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env["WORKER_METRICS_PORT"] = str(free_port())
        self.process = subprocess.Popen(
            [CLI, "dev", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 120
        while not any("contacts-ingest import " in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError("no banner:\n" + self.output)
            time.sleep(0.1)

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)  # what a terminal does: the whole group
        return self.process.wait(timeout=60)


def everything_of(dev: Dev, data: Path) -> list[psutil.Process]:
    """Every process dev started, its children's children and the embedded PostgreSQL
    (which pg_ctl leaves to the system) included."""
    ours = psutil.Process(dev.process.pid).children(recursive=True)
    ours += [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data.resolve()) in " ".join(p.info["cmdline"] or []) and p not in ours
    ]
    return ours


def test_ctrl_c_stops_everything_dev_started_ten_times_in_a_row(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / ".contacts-ingest"
    for attempt in range(10):
        dev = Dev(tmp_path, port)
        processes = everything_of(dev, data)
        assert len(processes) >= 6, processes  # Redis, PostgreSQL, granian x2, Celery x3
        assert dev.ctrl_c() == 0, (attempt, dev.output)
        psutil.wait_procs(processes, timeout=10)
        left = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, (attempt, left)
        assert "Error" not in dev.output, dev.output
        assert "stopping ..." in dev.output
        # Nothing holds the gateway's port: a granian worker left behind would.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no holder
            probe.bind(("127.0.0.1", port))


def test_other_commands_in_devs_folder_use_it_and_a_second_dev_is_refused(
    tmp_path: Path,
) -> None:
    port = free_port()
    dev = Dev(tmp_path, port)
    time.sleep(3)
    # The banner is the last thing printed: every process said it was ready before.
    assert "contacts-ingest import " in dev.lines[-2], dev.output
    state = tmp_path / ".contacts-ingest" / "dev.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    try:
        assert mode(state) == 0o600
        # keys and import, from the same folder, reach dev's embedded servers.
        listed = subprocess.run(
            [CLI, "keys", "list", "--user", "demo"], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert "\tdemo\t" in listed.stdout
        pid = dev.process.pid
        assert f"using the `contacts-ingest dev` running in ./.contacts-ingest/ (pid {pid}" in (
            listed.stderr
        )
        (tmp_path / "contacts.csv").write_text("email,firstName\nzoe@example.com,Zoe\n")
        imported = subprocess.run(
            [CLI, "import", "contacts.csv", "--user", "demo"], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        assert re.search(r"^created\s+1$", imported.stdout, re.M), imported.stdout
        assert "using the `contacts-ingest dev`" in imported.stderr
        # Variables that are set win over dev's.
        own = subprocess.run(
            [CLI, "keys", "list"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env={**env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                 "REDIS_URL": "redis://127.0.0.1:1/0"},
        )  # fmt: skip
        assert own.returncode != 0
        assert "using the `contacts-ingest dev`" not in own.stderr

        second = subprocess.run(
            [CLI, "dev", "--port", str(free_port())], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode != 0
        assert "another `contacts-ingest dev` is running on .contacts-ingest" in second.stderr
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        same_port = subprocess.run(
            [CLI, "dev", "--port", str(port)], cwd=elsewhere, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert same_port.returncode != 0
        assert f"port {port} on 127.0.0.1 is already in use" in same_port.stderr
        assert not (elsewhere / ".contacts-ingest").exists()  # refused before anything
    finally:
        dev.process.terminate()  # SIGTERM to dev alone, as `kill` sends it
        assert dev.process.wait(timeout=60) == 0, dev.output
    assert "stopping ..." in dev.output
    assert not state.exists()
    # Text logs a person can follow: the imported batch's job, with its id.
    assert re.search(r"INFO \S+ job finished .*job_id=job_\w+", dev.output), dev.output


def read_terminal(master: int, until: str, timeout: float) -> str:
    """What the terminal shows, read until ``until`` appears or it closes."""
    seen = b""
    deadline = time.monotonic() + timeout
    while until.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process on the terminal has gone
                break
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_ctrl_c_typed_in_a_terminal_ends_make_dev_with_status_0(tmp_path: Path) -> None:
    port = free_port()
    # The Makefile's dev verb, as `make dev` runs it.
    (tmp_path / "Makefile").write_text(f"dev:\n\t{CLI} dev --port {port}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["WORKER_METRICS_PORT"] = str(free_port())
    master, terminal = os.openpty()
    make = subprocess.Popen(
        ["make", "dev"],
        cwd=tmp_path,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        # The pseudo-terminal becomes its controlling terminal, as a shell's is.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(terminal)
    try:
        shown = read_terminal(master, "contacts-ingest import ", timeout=120)
        assert "contacts-ingest import " in shown, shown
        os.write(master, b"\x03")  # Ctrl-C, as typed
        shown += read_terminal(master, "\x00never\x00", timeout=60)
        assert make.wait(timeout=60) == 0, shown
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        os.close(master)
    assert "stopping ..." in shown
    assert "Interrupt" not in shown, shown  # make's report of a command it saw interrupted
    assert "Error" not in shown, shown
