"""The ``contacts-ingest`` command: run, migrate and administer the service."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click
from sqlalchemy.exc import OperationalError, ProgrammingError

from contacts_ingest.infrastructure.logs import configure_logging, describe_exception
from contacts_ingest.infrastructure.settings import Settings

if TYPE_CHECKING:
    from contacts_ingest.access.callback_targets import CallbackTarget
    from contacts_ingest.commands.importer import Summary
    from contacts_ingest.jobs.job import Operation
    from contacts_ingest.producer import ContactProducer


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc


class _Commands(click.Group):
    """Turns database failures into one readable line instead of a traceback, and any
    other failure into a log line that carries no exception's text (contact data)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[-1]
            raise click.ClickException(f"cannot use PostgreSQL: {reason}") from exc
        except ProgrammingError as exc:
            raise click.ClickException(
                "the database schema is missing or old: run `contacts-ingest migrate`"
            ) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            logging.getLogger(__name__).error("command failed", exc_info=exc)
            raise click.ClickException(f"failed: {describe_exception(exc)}") from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Contacts ingestion: an HTTP gateway that enqueues, Celery workers that persist.

    Run in the folder of a running `contacts-ingest dev`, with DATABASE_URL or REDIS_URL
    unset, a command uses dev's servers (and says so on stderr).
    """
    from contacts_ingest.commands.dev import use_running_dev

    if ctx.invoked_subcommand == "dev":
        os.environ.setdefault("LOG_FORMAT", "text")  # a person reads dev's logs
    else:
        use_running_dev()
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)


@main.command()
def migrate() -> None:
    """Create the database if needed and apply every pending schema migration."""
    from contacts_ingest.infrastructure.migrate import upgrade

    upgrade(_settings().database_url)
    click.echo("database is at the newest schema", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers",
    default=os.cpu_count() or 1,
    show_default="number of cores",
    type=click.IntRange(min=1),
    help="Gateway processes.",
)
@click.option(
    "--threads",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Python threads a process runs requests on at most (a request whose body is"
    " still arriving, or that waits, holds one; started as needed).",
)
@click.option(
    "--connections",
    default=4096,
    show_default=True,
    type=click.IntRange(min=1),
    help="Connections a process holds at once (idle and slow ones included); more wait"
    " in the listen backlog.",
)
@click.option(
    "--active",
    default=None,
    type=click.IntRange(min=1),
    show_default="GATEWAY_ACTIVE_REQUESTS, default number of cores",
    help="Requests a process works on at once (not counting waiting on the network).",
)
def serve(
    host: str, port: int, workers: int, threads: int, connections: int, active: int | None
) -> None:
    """Serve the HTTP gateway under granian (a production WSGI server)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from contacts_ingest.commands.serving import load_in_gateway_process, require_free_port
    from contacts_ingest.infrastructure.logs import granian_logging
    from contacts_ingest.infrastructure.metrics_dir import prepare_multiprocess_dir

    if active is not None:
        os.environ["GATEWAY_ACTIVE_REQUESTS"] = str(active)  # read by each gateway process
    # Fail here, not in every gateway process, if the configuration is wrong.
    settings = _settings()
    require_free_port(host, port)
    prepare_multiprocess_dir()  # before any gateway process records a metric
    Granian(
        "api_gateway.wsgi:app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        websockets=False,  # WSGI has none; left on, granian says so at every start
        log_level=LogLevels(settings.log_level.lower()),
        log_dictconfig=granian_logging(settings.log_format),
        workers=workers,
        blocking_threads=threads,
        # Connections are cheap in granian's I/O loop; each one holds a slot here for
        # its whole life, so slow and idle ones must not use up what others need.
        backpressure=max(connections, threads),
        respawn_failed_workers=True,
        # On SIGTERM a process finishes what it has, but a client that stalls its body
        # (granian cannot time a body out) may hold that up for at most this long.
        workers_kill_timeout=30,
        http1_settings=HTTP1Settings(
            # Caps the request head (line and headers) at 64 KiB; bodies are capped by the app.
            max_buffer_size=64 * 1024,
            # A head not complete within it is dropped (granian has no body timeout).
            header_read_timeout=round(settings.gateway_header_timeout_seconds * 1000),
        ),
    ).serve(target_loader=load_in_gateway_process)


@main.command()
@click.option(
    "--concurrency",
    default=os.cpu_count() or 1,
    show_default="number of cores",
    type=click.IntRange(min=1),
    help="Worker processes.",
)
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(min=0, max=65535),
    show_default="WORKER_METRICS_PORT, default 9808",
    help="Port of the worker's GET /metrics; 0 turns it off.",
)
def worker(concurrency: int, metrics_port: int | None) -> None:
    """Run a Celery worker consuming contact jobs (log level: LOG_LEVEL)."""
    from contacts_ingest.infrastructure.metrics_dir import prepare_multiprocess_dir

    settings = _settings()
    prepare_multiprocess_dir()  # before the pool processes fork
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        from contacts_ingest.infrastructure.metrics import QueueDepth, serve_worker_metrics
        from contacts_ingest.infrastructure.redis_clients import redis_client

        prefix = settings.redis_key_prefix
        depth = QueueDepth(
            redis_client(settings, settings.broker_url, socket_timeout=2),
            f"{prefix}{settings.celery_queue}",
            f"{prefix}unacked",
            settings.celery_queue,
        )
        host = settings.worker_metrics_host
        try:
            serve_worker_metrics(host, port, depth)
        except OSError as exc:
            logging.getLogger(__name__).error(
                "worker metrics not served: %s port %s: %s", host, port, exc.strerror
            )
    from celery.bin.celery import celery as celery_command
    from click.exceptions import Exit

    _log_celery_through_ours()
    # Callbacks go out from a process of their own, so they never hold back ingestion.
    sender = _CallbackSenderProcess() if settings.callback_origins else None
    # The Celery app is named, as granian is given the gateway's: the core imports no edge.
    try:
        celery_command.main(
            args=[
                "--app=worker.app",
                "--quiet",  # no banner: its settings are in our logs, and the banner is not
                "worker",
                f"--concurrency={concurrency}",
                f"--loglevel={settings.log_level}",
                f"--queues={settings.celery_queue}",
                "--without-gossip",
                "--without-mingle",
            ],
            prog_name="celery",
            standalone_mode=False,
        )
    except Exit as exc:
        raise SystemExit(exc.exit_code) from None
    finally:
        if sender is not None:
            sender.stop()


class _CallbackSenderProcess:
    """``python -m contacts_ingest.callbacks`` beside the worker, started again if it
    dies, stopped (its attempts in progress finished) when the worker stops."""

    def __init__(self) -> None:
        import threading

        self._stopping = threading.Event()
        self._process = self._start()
        threading.Thread(target=self._watch, name="callback-sender", daemon=True).start()

    @staticmethod
    def _start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "contacts_ingest.callbacks"])

    def _watch(self) -> None:
        while not self._stopping.is_set():
            code = self._process.wait()
            if self._stopping.wait(1):
                return
            logging.getLogger(__name__).error("callback sender exited (%s); restarting", code)
            self._process = self._start()

    def stop(self) -> None:
        self._stopping.set()
        self._process.terminate()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()


def _log_celery_through_ours() -> None:
    """What Celery's worker prints itself goes to our logs instead (one JSON object per
    line with LOG_FORMAT=json); once it is ready it says so to ``$NOTIFY_SOCKET``."""
    import celery.apps.worker
    from celery.signals import worker_ready

    from contacts_ingest.commands.readiness import notify_ready
    from contacts_ingest.infrastructure.logs import say_from_signal_handler

    # Its shutdown notices ("worker: Warm shutdown (MainProcess)"), written from signal
    # handlers straight to stdout; celery is pinned to the minor version this was read in.
    celery.apps.worker.safe_say = lambda msg, f=None: say_from_signal_handler(
        "celery.apps.worker", msg
    )

    def ready(sender: object, **_: object) -> None:
        # On the consumer's event loop, so after Celery's own "ready." line.
        hub = getattr(sender, "hub", None)
        if hub is None:
            notify_ready()
        else:
            hub.call_soon(notify_ready)

    worker_ready.connect(ready, weak=False)


@main.group()
def keys() -> None:
    """Create, revoke and list API keys."""


def _respond_mode(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from contacts_ingest.infrastructure.settings import parse_respond_mode

    try:
        return None if value is None else parse_respond_mode(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _callback_target(url: str | None) -> CallbackTarget | None:
    """A target with a fresh signing secret for ``url``, if CALLBACK_ALLOWED_HOSTS allows
    its origin; otherwise a usage error (exit status 2) saying why."""
    from contacts_ingest.access.callback_targets import CallbackRefused, new_callback_target

    if url is None:
        return None
    try:
        return new_callback_target(url, _settings().callback_origins)
    except CallbackRefused as exc:
        raise click.BadParameter(str(exc), param_hint="--callback-url") from None


_CALLBACK_HELP = (
    "POST the outcome of each of its jobs here once final, signed (Standard Webhooks);"
    " its origin must be in CALLBACK_ALLOWED_HOSTS. The signing secret is printed on a"
    " second line, only here."
)


@keys.command("create")
@click.option("--user", "user_id", required=True, help="The user the key acts for.")
@click.option(
    "--respond",
    default=None,
    callback=_respond_mode,
    metavar="async|wait|wait=N",
    help="How its writes are answered: async (202 at once), or wait (5 s) / wait=N (N up"
    " to 10) for the outcome as the reference API answers (201/200 or 409/400), 202 if"
    " not final by then. Default: RESPOND_DEFAULT.",
)
@click.option("--callback-url", default=None, help=_CALLBACK_HELP)
def keys_create(user_id: str, respond: int | None, callback_url: str | None) -> None:
    """Create a key and print it (only it) on stdout. It is not shown again."""
    from contacts_ingest.access.keys import create_key
    from contacts_ingest.infrastructure.database import make_engine

    callback = _callback_target(callback_url)
    engine = make_engine(_settings().database_url, pool_size=1)
    try:
        key_id, key = create_key(engine, user_id, respond_wait_seconds=respond, callback=callback)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--user") from exc
    click.echo(key)
    if callback is not None:
        click.echo(callback.secret)
    click.echo(f"created {key_id} for user {user_id}", err=True)


@keys.command("revoke")
@click.argument("key_or_id")
def keys_revoke(key_or_id: str) -> None:
    """Revoke a key, named by its id (key_...) or by the key itself."""
    from contacts_ingest.access.keys import revoke_key
    from contacts_ingest.infrastructure.database import make_engine

    if not revoke_key(make_engine(_settings().database_url, pool_size=1), key_or_id):
        raise click.ClickException("no live key matches")
    click.echo("revoked", err=True)


@keys.command("list")
@click.option("--user", "user_id", default=None, help="Only this user's keys.")
def keys_list(user_id: str | None) -> None:
    """List keys: ids, users, dates, response mode, callback URL (never the keys)."""
    from contacts_ingest.access.keys import list_keys
    from contacts_ingest.infrastructure.database import make_engine
    from contacts_ingest.infrastructure.settings import respond_mode_text

    settings = _settings()
    default = f"{respond_mode_text(settings.respond_default_wait)} (RESPOND_DEFAULT)"
    for info in list_keys(make_engine(settings.database_url, pool_size=1), user_id):
        revoked = info.revoked_at.isoformat() if info.revoked_at else "-"
        wait = info.respond_wait_seconds
        mode = default if wait is None else respond_mode_text(wait)
        click.echo(
            f"{info.key_id}\t{info.user_id}\t{info.created_at.isoformat()}\t{revoked}"
            f"\t{mode}\t{info.callback_url or '-'}"
        )


@main.group()
def jobs() -> None:
    """Dead-lettered jobs (list, retry) and pruning old final jobs."""


@jobs.command("dead")
@click.option("--user", "user_id", default=None, help="Only this user's jobs.")
def jobs_dead(user_id: str | None) -> None:
    """List dead-lettered jobs: id, user, attempts, last error class, when it failed."""
    from contacts_ingest.infrastructure.database import make_engine
    from contacts_ingest.ingestion.dead_letters import list_dead_jobs

    engine = make_engine(_settings().database_url, pool_size=1)
    for dead in list_dead_jobs(engine, user_id=user_id):
        click.echo(
            f"{dead.job_id}\t{dead.user_id}\t{dead.attempts}\t{dead.error}"
            f"\t{dead.failed_at.isoformat()}"
        )


@jobs.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every dead-lettered job.")
def jobs_retry(job_ids: tuple[str, ...], every: bool) -> None:
    """Queue dead-lettered jobs again under their own ids (exactly once still holds: a
    retry that succeeds replaces the job's 500 outcome). Prints each job id queued."""
    from contacts_ingest.infrastructure.database import make_engine
    from contacts_ingest.infrastructure.redis_clients import redis_client
    from contacts_ingest.ingestion.dead_letters import NotRetriable, list_dead_jobs, retry
    from contacts_ingest.jobs.board import JobBoard, JobsShed

    if every == bool(job_ids):
        raise click.UsageError("name the jobs to retry, or give --all")
    settings = _settings()
    engine = make_engine(settings.database_url, pool_size=1)
    dead = list_dead_jobs(engine, job_ids=None if every else job_ids)
    board = JobBoard.for_settings(redis_client(settings), settings)
    found = {job.job_id for job in dead}
    problems = [f"{job_id}: not a dead-lettered job" for job_id in job_ids if job_id not in found]
    queued = 0
    for job in dead:
        try:
            retry(board, job, settings.job_retention_days)
        except NotRetriable as exc:
            problems.append(str(exc))
            continue
        except JobsShed as exc:
            raise click.ClickException(
                f"{exc}: {job.job_id} and those after it not queued"
            ) from exc
        click.echo(job.job_id)
        queued += 1
    click.echo(f"queued {queued} job(s) again", err=True)
    if problems:
        raise click.ClickException("; ".join(problems))


@jobs.command("prune")
@click.option(
    "--older-than",
    "older_than",
    default=None,
    show_default="JOB_RETENTION_DAYS, default 30d",
    help="Remove final jobs accepted longer ago than this: 30d, 12h, 0s (every final job).",
)
def jobs_prune(older_than: str | None) -> None:
    """Remove old final jobs (status rows, dead letters) by dropping whole day partitions.

    Contacts are never touched. Workers do this by themselves every hour with
    JOB_RETENTION_DAYS; this does it now.
    """
    from datetime import timedelta

    from contacts_ingest.infrastructure.database import make_engine
    from contacts_ingest.ingestion.retention import parse_duration, prune

    settings = _settings()
    try:
        age = (
            parse_duration(older_than)
            if older_than is not None
            else timedelta(days=settings.job_retention_days)
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    pruned = prune(make_engine(settings.database_url, pool_size=1), age)
    click.echo(
        f"removed final jobs accepted before {pruned.cutoff.isoformat()}: "
        f"{len(pruned.partitions)} partition(s) dropped, {pruned.stragglers} other row(s)",
        err=True,
    )


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--user", "user_id", required=True, help="The user the contacts belong to.")
@click.option("--upsert", is_flag=True, help="Update contacts that exist instead of failing 409.")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Default: from the file's extension (.csv, .jsonl, .ndjson).",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="Enqueue every batch and print their job ids, without waiting for the outcome.",
)
def import_contacts(
    file: Path, user_id: str, upsert: bool, file_format: str | None, no_wait: bool
) -> None:
    """Import a CSV or JSONL file of contacts, in batches of 1,000, and report the outcome.

    CSV columns are the API's field names (email, firstName, ...); socialProfiles.<key>
    and customFields.<key> columns fill those objects; empty cells are left out.
    JSONL has one contact object per line.
    """
    from contacts_ingest.commands.importer import format_of, import_file
    from contacts_ingest.producer import ContactProducer

    try:
        kind = format_of(file, file_format)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from exc
    producer = ContactProducer(_settings())
    if no_wait:
        jobs: list[str] = []

        def sent(job_id: str) -> None:
            jobs.append(job_id)
            click.echo(job_id)

        summary = import_file(
            file, kind, producer, user_id, upsert=upsert, wait=False,
            on_progress=lambda summary: None, on_sent=sent,
            on_unreachable=lambda seconds: click.echo(_unreachable(seconds), err=True),
        )  # fmt: skip
        click.echo(
            f"enqueued {summary.accepted - summary.failed:,} rows in {len(jobs):,} batch jobs;"
            " follow each with GET /io/contacts/jobs/<job_id>",
            err=True,
        )
        for line, message in summary.first_errors:
            click.echo(f"  line {line}: {message}", err=True)
        return
    _import_and_wait(file, kind, producer, user_id, upsert)


def _unreachable(seconds: float) -> str:
    return (
        f"Redis or PostgreSQL has not answered for {seconds:.0f} s (or fewer Redis replicas"
        " confirm than REDIS_MIN_REPLICAS_ACK asks); still trying, each batch stays one job"
    )


def _import_and_wait(
    file: Path, kind: Literal["csv", "jsonl"], producer: ContactProducer, user_id: str,
    upsert: bool,
) -> None:  # fmt: skip
    from tqdm import tqdm

    from contacts_ingest.commands.importer import count_rows, import_file

    def stalled(seconds: float) -> None:
        tqdm.write(
            f"no worker has taken a job for {seconds:.0f} s: is `contacts-ingest worker`"
            " running? (--no-wait enqueues without waiting)",
            file=sys.stderr,
        )

    total = count_rows(file, kind)
    # Whole numbers: tqdm's unit scaling shows counts as 9e+4.
    with tqdm(total=total, unit="rows", dynamic_ncols=True) as bar:

        def progress(summary: Summary) -> None:
            bar.update(summary.done - bar.n)
            bar.set_postfix(created=summary.created, updated=summary.updated,
                            failed=summary.failed, refresh=False)  # fmt: skip

        summary = import_file(
            file, kind, producer, user_id, upsert=upsert, on_progress=progress, on_stall=stalled,
            on_unreachable=lambda seconds: tqdm.write(_unreachable(seconds), file=sys.stderr),
        )  # fmt: skip
    rows = [
        ("accepted", summary.accepted),
        ("created", summary.created),
        ("updated", summary.updated),
        ("failed", summary.failed),
    ]
    for name, value in rows:
        click.echo(f"{name:<9}{value:>12,}")
    if summary.first_errors:
        click.echo("first errors:")
        for line, message in summary.first_errors:
            click.echo(f"  line {line}: {message}")


@main.group()
def webhooks() -> None:
    """Create, rotate, revoke and list webhook endpoints (Standard Webhooks)."""


@webhooks.command("create")
@click.option("--user", "user_id", required=True, help="The user its deliveries act for.")
@click.option(
    "--upsert",
    is_flag=True,
    help="Every delivery upserts (default: creates, 409 if the contact exists). Fixed for"
    " the endpoint's life; nothing in the URL changes it.",
)
@click.option("--callback-url", default=None, help=_CALLBACK_HELP)
def webhooks_create(user_id: str, upsert: bool, callback_url: str | None) -> None:
    """Create an endpoint; print its path and signing secret (shown only here)."""
    from contacts_ingest.access.webhooks import create_endpoint
    from contacts_ingest.infrastructure.database import make_engine

    operation: Operation = "upsert" if upsert else "create"
    callback = _callback_target(callback_url)
    try:
        endpoint_id, secret = create_endpoint(
            make_engine(_settings().database_url, pool_size=1),
            user_id,
            operation,
            callback=callback,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--user") from exc
    click.echo(f"/io/contacts/webhooks/{endpoint_id}\t{secret}")
    if callback is not None:
        click.echo(callback.secret)
    click.echo(f"created {endpoint_id} for user {user_id}: its deliveries {operation}", err=True)


@webhooks.command("rotate")
@click.argument("endpoint_id")
@click.option(
    "--grace-hours",
    default=24.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="How long the older secrets keep verifying.",
)
def webhooks_rotate(endpoint_id: str, grace_hours: float) -> None:
    """Add a new signing secret and print it; older ones expire after the grace period."""
    from datetime import timedelta

    from contacts_ingest.access.webhooks import rotate_secret
    from contacts_ingest.infrastructure.database import make_engine

    secret = rotate_secret(
        make_engine(_settings().database_url, pool_size=1),
        endpoint_id,
        timedelta(hours=grace_hours),
    )
    if secret is None:
        raise click.ClickException("no live endpoint matches")
    click.echo(secret)
    click.echo(f"older secrets of {endpoint_id} stop verifying in {grace_hours:g} h", err=True)


@webhooks.command("revoke")
@click.argument("endpoint_id")
def webhooks_revoke(endpoint_id: str) -> None:
    """Revoke an endpoint: its deliveries get 401 from then on."""
    from contacts_ingest.access.webhooks import revoke_endpoint
    from contacts_ingest.infrastructure.database import make_engine

    if not revoke_endpoint(make_engine(_settings().database_url, pool_size=1), endpoint_id):
        raise click.ClickException("no live endpoint matches")
    click.echo("revoked", err=True)


@webhooks.command("list")
@click.option("--user", "user_id", default=None, help="Only this user's endpoints.")
def webhooks_list(user_id: str | None) -> None:
    """List endpoints (ids, users, operations, dates, live secrets; never the secrets)."""
    from contacts_ingest.access.webhooks import list_endpoints
    from contacts_ingest.infrastructure.database import make_engine

    for info in list_endpoints(make_engine(_settings().database_url, pool_size=1), user_id):
        revoked = info.revoked_at.isoformat() if info.revoked_at else "-"
        click.echo(
            f"{info.endpoint_id}\t{info.user_id}\t{info.operation}"
            f"\t{info.created_at.isoformat()}\t{revoked}"
            f"\t{info.live_secrets} live secret(s)"
        )


@main.command()
@click.option(
    "--data-dir",
    default=".contacts-ingest",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where embedded PostgreSQL and Redis keep their data.",
)
@click.option("--port", default=8000, show_default=True, type=int, help="Gateway port.")
def dev(data_dir: str, port: int) -> None:
    """Run the whole system on this machine: databases, migrations, gateway, worker.

    Starts embedded PostgreSQL and Redis servers unless DATABASE_URL / REDIS_URL are set.
    """
    from contacts_ingest.commands.dev import run_dev

    run_dev(data_dir, port)
