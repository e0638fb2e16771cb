"""How a worker groups task messages into batches, and what it acknowledges (no servers)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

import worker.tasks as tasks
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.service import Outcome
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import ContactJob, Refusal
from contacts_ingest.jobs.messages import CeleryMessages
from tests.unit.fake_redis import FakeRedis
from worker.batching import BatchOutcome, BatchTask, Exhausted, Unreadable


class FakeQoS:
    """Counts the rounds in which acknowledgements were given together."""

    def __init__(self) -> None:
        self.rounds = 0
        self.inside = False

    @contextmanager
    def acks_together(self) -> Iterator[None]:
        self.rounds += 1
        self.inside = True
        try:
            yield
        finally:
            self.inside = False


class FakeMessage:
    content_type = "application/json"

    def __init__(self, job: Any, settled: Settled) -> None:
        self.body = json.dumps([[], {"job": job}, {}])
        self.job = job
        self.settled = settled
        self.channel = settled.channel

    def ack_log_error(self, *_: Any) -> None:
        assert self.settled.qos.inside, "acknowledged outside acks_together"
        self.settled.acked.append(self.job)

    def reject_log_error(self, *_: Any, requeue: bool = False) -> None:
        self.settled.requeued.append((self.job, requeue))


class FakePool:
    """Holds each batch until the test says how it ended."""

    limit = 2

    def __init__(self) -> None:
        self.running: list[tuple[list[Any], Callable[[Any], None], Callable[[Any], None]]] = []

    def apply_async(
        self,
        target: Any,
        args: tuple[str, list[Any]],
        callback: Callable[[Any], None],
        error_callback: Callable[[Any], None],
        **_: Any,
    ) -> None:
        self.running.append((args[1], callback, error_callback))

    def finish(
        self, hand_back: list[int] | None = None, failed: dict[int, str] | None = None
    ) -> list[Any]:
        jobs, callback, _ = self.running.pop(0)
        callback(BatchOutcome(tuple(hand_back or ()), tuple((failed or {}).items())))
        return jobs

    def lose(self) -> list[Any]:
        jobs, _, error_callback = self.running.pop(0)
        error_callback(RuntimeError("process died"))
        return jobs


class Settled:
    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.requeued: list[Any] = []
        self.qos = FakeQoS()
        self.channel = SimpleNamespace(qos=self.qos)  # one channel, as in a worker

    def deliver(self, handler: Callable[..., None], job: Any) -> None:
        handler(FakeMessage(job, self), None, None, None, set())


class Batched(BatchTask):
    name = "test.batched"
    batch_size = 3

    def weight(self, job: Any) -> int:
        return int(job[1:]) if isinstance(job, str) and job.startswith("w") else 1


@pytest.fixture
def pool() -> FakePool:
    return FakePool()


@pytest.fixture
def handler(pool: FakePool) -> Callable[..., None]:
    consumer = type("Consumer", (), {"pool": pool, "connection_errors": ()})()
    task = Batched()
    return task.Strategy(task, None, consumer)


def test_a_worker_that_keeps_up_hands_over_each_message_at_once(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    settled = Settled()
    settled.deliver(handler, "a")
    settled.deliver(handler, "b")
    assert [jobs for jobs, *_ in pool.running] == [["a"], ["b"]]


def test_messages_arriving_while_every_process_is_busy_go_together_up_to_the_batch_size(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    settled = Settled()
    for job in "abcdefg":
        settled.deliver(handler, job)
    assert [jobs for jobs, *_ in pool.running] == [["a"], ["b"]]
    assert pool.finish() == ["a"]
    assert [jobs for jobs, *_ in pool.running] == [["b"], ["c", "d", "e"]]
    assert settled.acked == ["a"]  # acknowledged only once its batch returned
    pool.finish()
    assert [jobs for jobs, *_ in pool.running] == [["c", "d", "e"], ["f", "g"]]


def test_a_job_body_reaches_the_task_exactly_as_the_client_sent_it(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    # kombu's JSON decoder would turn this into a datetime, or refuse a made-up type.
    tricky = {
        "customFields": {
            "when": {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"},
            "what": {"__type__": "no-such-type", "__value__": 1},
            "big": 123456789012345678901234567890,
        }
    }
    Settled().deliver(handler, tricky)
    assert pool.running[0][0] == [tricky]


def test_heavy_messages_fill_a_batch_sooner_and_one_too_heavy_goes_alone(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    settled = Settled()
    for job in ["a", "b", "w2", "c", "w5", "d", "e"]:
        settled.deliver(handler, job)
    pool.finish()
    pool.finish()
    assert [jobs for jobs, *_ in pool.running] == [["w2", "c"], ["w5"]]
    pool.finish()
    assert [jobs for jobs, *_ in pool.running] == [["w5"], ["d", "e"]]


def test_jobs_a_batch_hands_back_are_requeued_and_the_rest_acknowledged(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    settled = Settled()
    for job in "abcd":
        settled.deliver(handler, job)
    pool.finish()
    pool.finish()
    assert pool.finish(hand_back=[1]) == ["c", "d"]
    assert settled.acked == ["a", "b", "c"]
    assert settled.requeued == [("d", True)]
    assert settled.qos.rounds == 3  # one round trip per batch, not per message


def test_a_batch_whose_process_died_is_split_and_each_of_its_jobs_tried_alone(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    settled = Settled()
    for job in "abcde":
        settled.deliver(handler, job)
    pool.finish()
    assert pool.lose() == ["b"]
    assert pool.lose() == ["c", "d", "e"]  # which one killed it is not known
    assert [jobs for jobs, *_ in pool.running] == [["b"], ["c"]]
    pool.finish()
    pool.finish()
    assert [jobs for jobs, *_ in pool.running] == [["d"], ["e"]]
    pool.finish()
    pool.finish()
    assert settled.acked == ["a", "b", "c", "d", "e"]
    assert settled.requeued == []


def running(pool: FakePool) -> list[list[Any]]:
    return [jobs for jobs, *_ in pool.running]


def test_a_job_that_keeps_killing_its_process_is_found_and_exhausted_alone(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    settled = Settled()
    for job in ["a", "x", "killer", "b", "c"]:
        settled.deliver(handler, job)
    pool.finish()
    pool.finish()
    assert pool.lose() == ["killer", "b", "c"]  # 1
    assert running(pool) == [["killer"], ["b"]]
    pool.lose()  # 2
    pool.finish()  # "b"
    assert running(pool) == [["killer"], ["c"]]
    pool.lose()  # 3
    pool.finish()  # "c"
    for _ in range(2):  # 4, 5
        assert running(pool) == [["killer"]]
        pool.lose()
    assert running(pool) == [[Exhausted("killer", 5, "RuntimeError")]]
    pool.finish()  # recorded as failed by the task
    assert settled.acked == ["a", "x", "b", "c", "killer"]  # each once
    assert settled.requeued == []


def test_a_job_that_fails_on_its_own_is_tried_alone_until_exhausted(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    settled = Settled()
    for job in ["a", "bug", "b", "c", "d"]:
        settled.deliver(handler, job)
    pool.finish()
    assert pool.finish(failed={0: "ValueError"}) == ["bug"]  # 1
    assert running(pool) == [["b", "c", "d"], ["bug"]]  # never again in a batch
    pool.finish()
    for _ in range(4):  # 2 to 5
        assert running(pool) == [["bug"]]
        pool.finish(failed={0: "ValueError"})
    assert running(pool) == [[Exhausted("bug", 5, "ValueError")]]
    pool.finish()
    assert settled.acked == ["a", "b", "c", "d", "bug"]


def test_only_the_failed_job_of_a_batch_is_tried_again_the_rest_are_acknowledged(
    pool: FakePool, handler: Callable[..., None]
) -> None:
    settled = Settled()
    for job in "abcde":
        settled.deliver(handler, job)
    pool.finish()
    pool.finish()
    assert pool.finish(failed={1: "ValueError"}) == ["c", "d", "e"]
    assert settled.acked == ["a", "b", "c", "e"]
    assert running(pool) == [["d"]]


class FakeIngestor:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[list[Any]] = []

    def process_many(self, jobs: list[Any]) -> list[Outcome | None]:
        self.calls.append(list(jobs))
        if self.failures:
            raise self.failures.pop(0)
        return [Outcome(str(job), "succeeded", 201) for job in jobs]


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.tasks.time.sleep", lambda _: None)


def use(monkeypatch: pytest.MonkeyPatch, fake: FakeIngestor) -> None:
    monkeypatch.setattr(tasks, "ingestor", lambda: fake)


def transient() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection"))


@pytest.mark.usefixtures("no_sleep")
def test_a_transient_error_is_retried_and_the_batch_then_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeIngestor(transient())
    use(monkeypatch, fake)
    assert tasks.apply_jobs(["a", "b"]) == BatchOutcome()
    assert fake.calls == [["a", "b"], ["a", "b"]]


@pytest.mark.usefixtures("no_sleep")
def test_a_batch_that_keeps_failing_transiently_is_handed_back_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeIngestor(*[transient() for _ in range(tasks.ATTEMPTS_BEFORE_HANDING_BACK)])
    use(monkeypatch, fake)
    assert tasks.apply_jobs(["a", "b"]) == BatchOutcome(hand_back=(0, 1))
    assert len(fake.calls) == tasks.ATTEMPTS_BEFORE_HANDING_BACK


@pytest.mark.usefixtures("no_sleep")
def test_an_unexpected_error_isolates_the_job_that_causes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Picky(FakeIngestor):
        def process_many(self, jobs: list[Any]) -> list[Outcome | None]:
            self.calls.append(list(jobs))
            if "bad" in jobs:
                raise ValueError("a bug")
            return [Outcome(str(job), "succeeded", 201) for job in jobs]

    fake = Picky()
    use(monkeypatch, fake)
    # The bad one is logged and reported, to be tried again alone; the others are done.
    assert tasks.apply_jobs(["a", "bad", "c"]) == BatchOutcome(failed=((1, "ValueError"),))
    assert fake.calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


class RawMessage(FakeMessage):
    """A message whose body is the given text, whatever it holds."""

    def __init__(self, body: str, settled: Settled, task_id: str | None = "job_raw") -> None:
        super().__init__(None, settled)
        self.body = body
        self.job = body[:20]
        self.headers = {"id": task_id} if task_id else {}


class Shallow(Batched):
    max_depth = 10


def nested_job(levels: int) -> Any:
    job: Any = []
    for _ in range(levels - 1):
        job = [job]
    return job


def test_a_message_nested_past_the_tasks_limit_goes_to_the_pool_undecoded(
    pool: FakePool,
) -> None:
    consumer = type("Consumer", (), {"pool": pool, "connection_errors": ()})()
    task = Shallow()
    handler = task.Strategy(task, None, consumer)
    settled = Settled()
    # The job sits two levels down its message: 8 levels of its own make 10.
    settled.deliver(handler, nested_job(8))
    settled.deliver(handler, nested_job(9))
    assert pool.running[0][0] == [nested_job(8)]
    assert pool.running[1][0] == [Unreadable(None, "too deep")]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("[" * 5000 + "]" * 5000, "too deep"),  # past what the JSON decoder can recurse
        ("[[], {}, {}]", "unreadable"),  # no job in it
        ('[[], {"job": ', "unreadable"),  # not JSON
        ('"just a string"', "unreadable"),
    ],
)
def test_a_message_that_cannot_be_read_stands_in_as_unreadable_with_its_task_id(
    pool: FakePool, handler: Callable[..., None], body: str, problem: str
) -> None:
    settled = Settled()
    handler(RawMessage(body, settled), None, None, None, set())
    settled.deliver(handler, "next")
    assert [jobs for jobs, *_ in pool.running] == [[Unreadable("job_raw", problem)], ["next"]]


def test_a_job_the_pool_cannot_take_goes_alone_as_unreadable_and_its_neighbours_go_on() -> None:
    class Picky(FakePool):
        def apply_async(
            self,
            target: Any,
            args: tuple[str, list[Any]],
            callback: Callable[[Any], None],
            error_callback: Callable[[Any], None],
            **_: Any,
        ) -> None:
            if "unpicklable" in args[1]:
                raise RecursionError("maximum recursion depth exceeded while pickling")
            super().apply_async(target, args, callback, error_callback)

    picky = Picky()
    consumer = type("Consumer", (), {"pool": picky, "connection_errors": ()})()
    task = Batched()
    handler = task.Strategy(task, None, consumer)
    settled = Settled()
    for job in ["a", "b", "c", "unpicklable", "d"]:
        settled.deliver(handler, job)
    assert [jobs for jobs, *_ in picky.running] == [["a"], ["b"]]
    picky.finish()
    picky.finish()
    # "c", "unpicklable", "d" went together and failed: each now goes alone.
    assert [jobs for jobs, *_ in picky.running] == [["c"], [Unreadable(None, "unreadable")]]
    picky.finish()
    assert [jobs for jobs, *_ in picky.running] == [[Unreadable(None, "unreadable")], ["d"]]


@pytest.fixture
def fake_board(monkeypatch: pytest.MonkeyPatch) -> JobBoard:
    board = JobBoard(
        FakeRedis(),
        CeleryMessages(Settings(redis_key_prefix="t:")),
        key_prefix="t:",
        record_ttl_seconds=60,
    )
    monkeypatch.setattr(tasks, "board", lambda: board)
    return board


def pending_job(board: JobBoard, job_id: str) -> int:
    job = ContactJob(job_id, "u1", "upsert", {"email": "a@example.com"}, 0)
    admission = board.admit(user_id="u1", member=job_id, job=job, limit=None)
    return admission.accepted_at_us


def test_an_unreadable_message_of_a_pending_job_fails_it_with_400(
    monkeypatch: pytest.MonkeyPatch, fake_board: JobBoard
) -> None:
    fake = FakeIngestor()
    use(monkeypatch, fake)
    accepted = pending_job(fake_board, "job_deep")
    pending_job(fake_board, "job_garbled")
    jobs = [
        Unreadable("job_deep", "too deep"),
        "a",
        Unreadable("job_garbled", "unreadable"),
        {"job_id": "job_garbled", "user_id": 7},  # names its job, but not readably
    ]
    assert tasks.apply_jobs(jobs) == BatchOutcome()
    deep, plain, garbled, named = fake.calls[0]
    assert deep == ContactJob(
        "job_deep", "u1", "upsert", None, accepted,
        refusal=Refusal(400, "Request body must not nest more than 64 levels deep"),
    )  # fmt: skip
    assert plain == "a"
    assert garbled.refusal == named.refusal == Refusal(400, "The job's message could not be read")


def test_an_unreadable_message_that_names_no_pending_job_is_dropped(
    monkeypatch: pytest.MonkeyPatch, fake_board: JobBoard, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeIngestor()
    use(monkeypatch, fake)
    both = [Unreadable(None, "unreadable"), Unreadable("job_x", "too deep")]
    assert tasks.apply_jobs(both) == BatchOutcome()
    assert fake.calls == []  # acknowledged: nothing to record
    assert caplog.text.count("dropping a message that names no pending job") == 2


@pytest.fixture
def dead_letters(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object, int, str]]:
    written: list[tuple[str, object, int, str]] = []

    def record(
        _: Any, job: ContactJob, message: object, *, attempts: int, error: str, callback: Any
    ) -> None:
        written.append((job.job_id, message, attempts, error))

    monkeypatch.setattr(tasks, "record_dead_letter", record)
    monkeypatch.setattr(tasks, "engine", lambda: None)
    return written


@pytest.mark.usefixtures("no_sleep", "fake_board")
def test_a_job_that_fails_unexpectedly_alone_is_reported_failed_not_recorded(
    monkeypatch: pytest.MonkeyPatch, dead_letters: list[Any]
) -> None:
    job = ContactJob("job_bug", "u1", "create", {"email": "a@example.com"}, 1).to_message()
    fake = FakeIngestor(ValueError("a bug"))
    use(monkeypatch, fake)
    assert tasks.apply_jobs([job]) == BatchOutcome(failed=((0, "ValueError"),))
    assert fake.calls == [[job]]  # nothing recorded: it is tried again
    assert dead_letters == []


@pytest.mark.usefixtures("no_sleep", "fake_board")
def test_an_exhausted_job_is_dead_lettered_then_recorded_as_failed_with_500(
    monkeypatch: pytest.MonkeyPatch, dead_letters: list[Any]
) -> None:
    job = ContactJob("job_bug", "u1", "create", {"email": "a@example.com"}, 1).to_message()
    fake = FakeIngestor()
    use(monkeypatch, fake)
    assert tasks.apply_jobs([Exhausted(job, 5, "ValueError")]) == BatchOutcome()
    assert dead_letters == [("job_bug", job, 5, "ValueError")]
    assert fake.calls == [
        [
            replace(
                ContactJob.from_message(job), refusal=Refusal(500, "The job could not be processed")
            )
        ]
    ]


@pytest.mark.usefixtures("no_sleep", "fake_board")
def test_a_job_whose_failure_cannot_be_recorded_now_is_handed_back(
    monkeypatch: pytest.MonkeyPatch, dead_letters: list[Any]
) -> None:
    job = ContactJob("job_bug", "u1", "create", {"email": "a@example.com"}, 1).to_message()
    use(monkeypatch, FakeIngestor(transient()))
    assert tasks.apply_jobs([Exhausted(job, 5, "ValueError")]) == BatchOutcome(hand_back=(0,))
