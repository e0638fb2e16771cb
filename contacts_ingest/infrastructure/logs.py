"""Structured logs: one JSON object per line, carrying request and job ids when known.

No log line carries an exception's text: a database error's text holds the failing
row's values (psycopg's ``DETAIL: Key (user_id, email_key)=(...)``, a check's message),
and any exception may hold contact data. An exception is logged as its type, where it
was raised (the traceback's frames: code, never values) and, for a database error,
its SQLSTATE and the names PostgreSQL gives (constraint, table, column). Only errors
about connections, whose text names servers rather than data, keep their text. The
message bodies Celery quotes when it discards a message are left out too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from contextlib import suppress
from typing import Any

from pythonjsonlogger.json import JsonEncoder
from pythonjsonlogger.orjson import OrjsonFormatter

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
# Exceptions (module, name) whose text is about a connection or a process, never data.
_TELLING = {
    ("redis.exceptions", "ConnectionError"),
    ("redis.exceptions", "TimeoutError"),
    ("kombu.exceptions", "OperationalError"),
    ("billiard.exceptions", "WorkerLostError"),
}


def describe_exception(exc: BaseException) -> str:
    """``exc`` as a log line may show it: its type, its SQLSTATE and the names of what
    failed for a database error, its text only where that cannot hold contact data."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    database_error = getattr(exc, "orig", None) or exc
    sqlstate = getattr(database_error, "sqlstate", None)
    details: list[str] = []
    if database_error is not exc:
        details.append(type(database_error).__qualname__)
    if sqlstate:
        details.append(f"SQLSTATE {sqlstate}")
    diag = getattr(database_error, "diag", None)
    for field in ("constraint_name", "table_name", "column_name"):
        value = getattr(diag, field, None)
        if value:
            details.append(f"{field.removesuffix('_name')} {value}")
    text = _telling_text(exc, database_error, sqlstate)
    details.append(text if text is not None else "text withheld")
    return f"{name} ({'; '.join(details)})"


def _telling_text(exc: BaseException, database_error: object, sqlstate: str | None) -> str | None:
    if isinstance(exc, OSError | RecursionError | MemoryError):
        return str(exc)
    if any((k.__module__, k.__name__) in _TELLING for k in type(exc).__mro__):
        return str(exc)
    connection_error = any(
        k.__module__.startswith("psycopg") and k.__name__ in ("OperationalError", "InterfaceError")
        for k in type(database_error).__mro__
    )
    if connection_error and (sqlstate is None or sqlstate.startswith("08")):
        return (str(database_error).strip().splitlines() or [""])[0]
    return None


def format_exception(exc: BaseException) -> str:
    """A traceback of ``exc`` and the exceptions it chains, each described by
    :func:`describe_exception` instead of its text."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    lines: list[str] = []
    for position, (item, _) in enumerate(reversed(chain)):
        if position:
            lines.append(chain[len(chain) - position][1])
        if item.__traceback__ is not None:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        lines.append(describe_exception(item) + "\n")
    return "".join(lines).rstrip("\n")


class _Described(str):
    """An exception's description standing in for it among a log call's arguments
    (``%r`` of it reads as the description, not as a quoted string)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _withheld(arg: Any) -> Any:
    if isinstance(arg, BaseException):
        return _Described(describe_exception(arg))
    exception = getattr(arg, "exception", None)  # billiard's ExceptionInfo
    if type(arg).__name__ == "ExceptionInfo" and isinstance(exception, BaseException):
        return _Described(describe_exception(exception))
    return arg


def _reports_a_message_body(msg: object) -> bool:
    # Celery's reports of messages it cannot route or decode quote up to 1 KiB of them.
    return isinstance(msg, str) and (
        "contents of the message body" in msg or msg.startswith("Can't decode message body")
    )


class _WithoutContactData(logging.Filter):
    """Replaces exceptions passed as a log call's message or arguments (Celery's
    ``"Unrecoverable error: %r", exc``) by their descriptions, and drops the message
    body Celery quotes when it discards a message it cannot route or decode."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _reports_a_message_body(record.msg):
            first_line = str(record.msg).splitlines()[0].split("%")[0].rstrip(" :")
            record.msg, record.args = f"{first_line} (its contents withheld)", ()
        record.msg = _withheld(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_withheld(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _withheld(arg) for key, arg in record.args.items()}
        return True


class _WithoutStartupNoise(logging.Filter):
    """Drops what other libraries say at every start that tells an operator nothing:
    granian's warning about our own thread count (chosen: those threads wait on the
    network, and the gate bounds the work; see the README's Slow clients)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "_granian"
            and str(record.msg).startswith("Configuration allows spawning up to")
        )


class _SafeJsonFormatter(OrjsonFormatter):
    def jsonify_log_record(self, log_data: Any) -> str:
        try:
            return str(super().jsonify_log_record(log_data))
        except TypeError:
            # orjson refuses integers beyond 64 bits and strings with lone surrogates
            # (a queued message may name its job with either; a path may hold bytes
            # that are not UTF-8): the standard library writes them, so the line is
            # not lost to logging's own error report.
            return json.dumps(log_data, cls=JsonEncoder, separators=(",", ":"))

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return format_exception(ei[1]) if ei and ei[1] is not None else ""


# The attributes every LogRecord has; any other one came from a call's ``extra``.
_RECORD_FIELDS = {
    *vars(logging.LogRecord("", 0, "", 0, "", (), None)),
    "message",
    "asctime",
    "taskName",
}


class _SafeTextFormatter(logging.Formatter):
    """One line per record, followed by the call's ``extra`` fields that have a value, as
    ``name=value`` (``job_id``, ``request_id``, ...), so a person can follow one request."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [
            f"{name}={value}"
            for name, value in vars(record).items()
            if name not in _RECORD_FIELDS and not name.startswith("_") and value is not None
        ]
        if not extra:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{head} {' '.join(extra)}{newline}{rest}"

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return format_exception(ei[1]) if ei and ei[1] is not None else ""


def service_handler(fmt: str = "json") -> logging.Handler:
    """The handler every process of ours logs through: stderr, JSON lines or text,
    exceptions described without their texts, known start-up noise left out."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            _SafeJsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_SafeTextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(_WithoutContactData())
    handler.addFilter(_WithoutStartupNoise())
    return handler


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every logger (Celery's included) and every warning to stderr, as JSON lines
    or plain text, with exceptions described without their texts."""
    root = logging.getLogger()
    root.handlers[:] = [service_handler(fmt)]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings.warn() would print plain text to stderr
    # Alembic names each of its plugins at every start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def granian_logging(fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for granian (its ``log_dictconfig``), which it
    applies in its main process and again in each worker process: its own loggers go
    to ours instead of its plain-text handlers on stdout."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {},
        "handlers": {"service": {"()": f"{__name__}.service_handler", "fmt": fmt}},
        "root": {"handlers": ["service"]},
        "loggers": {
            name: {"handlers": [], "propagate": True} for name in ("_granian", "granian.access")
        },
    }


def say_from_signal_handler(logger: str, message: str) -> None:
    """Write ``message`` as one line of the root handler's format, straight to stderr.

    For what a library says from a signal handler (Celery's "Warm shutdown"): no lock
    is taken, as a signal may interrupt a thread that holds the handler's.
    """
    record = logging.LogRecord(logger, logging.INFO, __file__, 0, message.strip(), (), None)
    handlers = logging.getLogger().handlers
    formatter = (handlers[0].formatter if handlers else None) or logging.Formatter()
    stderr = sys.__stderr__  # the process's own: Celery may have made sys.stderr a logger
    with suppress(OSError, ValueError, AttributeError):  # nowhere to say it: no matter
        os.write(stderr.fileno(), (formatter.format(record) + "\n").encode())  # type: ignore[union-attr]
