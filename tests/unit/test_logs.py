"""Log lines carry no exception's text, so no contact data, whatever fails."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from contacts_ingest.commands import cli
from contacts_ingest.infrastructure.logs import (
    configure_logging,
    describe_exception,
    format_exception,
)
from tests.unit.harness import Broken, make_harness

SECRET = "bob.secret@example.com"


class FakeDatabaseError(Exception):
    """Shaped like psycopg's: its text holds the row's values, its diag the names."""

    __module__ = "psycopg.errors"
    sqlstate = "23505"
    diag = SimpleNamespace(constraint_name="contacts_pkey", table_name="contacts", column_name=None)


class WrappedError(Exception):
    """Shaped like SQLAlchemy's: the driver's error as ``orig``."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__(f"({orig}) [parameters: {{'rows': '{SECRET}'}}]")
        self.orig = orig


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


class Stderr:
    """What the process wrote to stderr (where logs go) during the test."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def getvalue(self) -> str:
        return self._capsys.readouterr().err


@pytest.fixture
def stream(capsys: pytest.CaptureFixture[str]) -> Iterator[Stderr]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Stderr(capsys)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_database_error_is_described_by_its_sqlstate_and_names_never_its_text() -> None:
    driver = FakeDatabaseError(f"duplicate key\nDETAIL:  Key (email)=({SECRET}) already exists.")
    described = describe_exception(WrappedError(driver))
    assert SECRET not in described
    assert described == (
        "tests.unit.test_logs.WrappedError (FakeDatabaseError; SQLSTATE 23505;"
        " constraint contacts_pkey; table contacts; text withheld)"
    )


def test_connection_errors_keep_their_text() -> None:
    assert "Connection refused" in describe_exception(
        ConnectionRefusedError(111, "Connection refused")
    )


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_logged_tracebacks_and_arguments_carry_no_exception_text(stream: Stderr, fmt: str) -> None:
    configure_logging("INFO", fmt)
    log = logging.getLogger("test")
    cause = FakeDatabaseError(f"DETAIL: Key (email)=({SECRET})")
    error = raised(ValueError(f"bad contact {SECRET}"))
    error.__cause__ = raised(WrappedError(cause))
    log.error("job failed", exc_info=error)
    log.critical("Unrecoverable error: %r", error)  # as Celery logs its own crashes
    log.error(error)
    output = stream.getvalue()
    assert SECRET not in output
    assert "ValueError (text withheld)" in output
    assert "SQLSTATE 23505" in output
    assert "The above exception was the direct cause" in output
    assert "Unrecoverable error: ValueError (text withheld)" in output
    if fmt == "json":  # one object per line, tracebacks included
        assert [json.loads(line)["level"] for line in output.splitlines()] == [
            "ERROR",
            "CRITICAL",
            "ERROR",
        ]


def test_the_traceback_keeps_where_it_failed() -> None:
    def apply_contact() -> None:
        raise KeyError(SECRET)

    try:
        apply_contact()
    except KeyError as exc:
        text = format_exception(exc)
    assert "in apply_contact" in text
    assert SECRET not in text


def test_an_unexpected_failure_of_the_gateway_is_a_json_500_logged_without_its_text(
    stream: Stderr,
) -> None:
    configure_logging("INFO", "json")

    gw = make_harness(keys=Broken(f"could not look up {SECRET}"))
    answer = gw.post({"email": SECRET})
    assert answer.status_code == 500
    assert answer.json == {"error": "Internal server error"}
    logged = stream.getvalue()
    assert "RuntimeError (text withheld)" in logged
    assert SECRET not in logged


def test_an_unexpected_failure_of_a_command_prints_its_type_not_its_text(
    stream: Stderr,
) -> None:
    @cli.main.command("explode")
    def explode() -> None:
        raise ValueError(f"row {SECRET}")

    try:
        result = CliRunner().invoke(cli.main, ["explode"])
    finally:
        cli.main.commands.pop("explode")
    assert result.exit_code == 1
    assert "failed: ValueError (text withheld)" in result.output
    assert SECRET not in result.output + stream.getvalue()
    assert isinstance(result.exception, SystemExit)


def test_celerys_report_of_a_discarded_message_leaves_its_body_out(stream: Stderr) -> None:
    from celery.worker.consumer.consumer import INVALID_TASK_ERROR, UNKNOWN_TASK_ERROR

    configure_logging("INFO", "text")
    consumer = logging.getLogger("celery.worker.consumer.consumer")
    body = f"[[], {{'job': {{'body': {{'email': '{SECRET}'}}}}}}]"
    consumer.error(UNKNOWN_TASK_ERROR, "contacts.other", body, "{}", "{}")
    consumer.error(INVALID_TASK_ERROR, raised(ValueError(SECRET)), body)
    logged = stream.getvalue()
    assert SECRET not in logged
    assert "Received unregistered task of type (its contents withheld)" in logged
    assert "Received invalid task message (its contents withheld)" in logged


def test_text_lines_carry_the_job_and_request_ids(stream: Stderr) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("test").info(
        "job finished", extra={"job_id": "job_1", "request_id": "req_2", "code": 201}
    )
    logging.getLogger("test").info("job finished", extra={"job_id": "job_3", "request_id": None})
    [line, without_request] = stream.getvalue().splitlines()
    assert line.endswith("INFO test job finished job_id=job_1 request_id=req_2 code=201")
    assert without_request.endswith("INFO test job finished job_id=job_3")


def test_granians_logs_go_through_ours_without_its_thread_warning(stream: Stderr) -> None:
    import logging.config

    from contacts_ingest.infrastructure.logs import granian_logging

    configure_logging("INFO", "json")  # as serve does before it starts granian
    logging.config.dictConfig(granian_logging("json"))  # as granian then applies it
    granian = logging.getLogger("_granian")
    granian.warning("Configuration allows spawning up to 1024 Python threads, which ...")
    granian.info("Listening at: http://127.0.0.1:8000")
    [line] = stream.getvalue().splitlines()
    assert json.loads(line) | {"time": None} == {
        "time": None,
        "level": "INFO",
        "logger": "_granian",
        "message": "Listening at: http://127.0.0.1:8000",
    }


def test_a_json_line_holds_values_orjson_refuses(stream: Stderr) -> None:
    # A queued message may name its job with any JSON value (an integer past 64 bits, a
    # string with a lone surrogate escape), and the worker logs what it names; a path an
    # operator gives may hold undecodable bytes (surrogate-escaped). Each is one JSON line.
    configure_logging("INFO", "json")
    test = logging.getLogger("test")
    test.error("dropping a message that names no pending job", extra={"job_id": 2**70})
    test.error("dropping a message that names no pending job", extra={"job_id": "job_\ud800"})
    test.warning("cannot read %s", "/imports/contacts-\udcff.csv")
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["level"] for line in lines] == ["ERROR", "ERROR", "WARNING"]
    [big, surrogate, path] = (json.loads(line) for line in lines)
    assert big["job_id"] == 2**70
    assert surrogate["job_id"] == "job_\ud800"
    assert path["message"] == "cannot read /imports/contacts-\udcff.csv"
