"""A Celery task type whose messages a worker applies many at a time.

Celery hands each message to a pool process on its own, so each job pays its own
transaction and commit. A ``BatchTask`` instead keeps the messages that arrive while
every pool process is busy, and hands them to the next free process together (at
most ``batch_size``, in units of ``weight``): when the worker keeps up, each job still
goes alone and at once; under load, batches grow by themselves.

Acknowledgement stays late: a batch's messages are acknowledged only once the
process returned, except those it names to hand back, which are put back on the
queue (its transient failures). If the worker dies, Redis still holds every message
unacknowledged and redelivers it.

A job that fails unexpectedly (``BatchOutcome.failed``), or whose process dies while
it is being applied, is tried again on its own, never again inside a batch: a batch
whose process died is split, each of its jobs sent alone, so that the one that kills
processes is found and its neighbours are applied as usual. A job whose deliveries
all failed so (``max_attempts`` of them, the first one in its batch included) is sent
once more as ``Exhausted``, for the task to record as failed; its message is held,
unacknowledged, all along.

The prefetch limit (``worker_prefetch_multiplier`` x processes) bounds how many
messages a worker holds; it must exceed ``batch_size`` for batches to fill.

celery-batches does this for older Celery (< 5.7) with a timer-driven flush; this
one follows the pool instead, and hands back what failed.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from kombu.utils.uuid import uuid

from contacts_ingest.model.json_input import (
    JsonRefused,
    could_nest_deeper_than,
    nests_deeper_than,
    read_body,
)

logger = logging.getLogger(__name__)


class BatchTask(Task):  # type: ignore[misc]
    """A task applied to lists of messages' first arguments by ``run_batch``."""

    abstract = True
    #: The most work one pool process is given at a time, in units of ``weight``
    #: (a message heavier than that goes alone).
    batch_size = 100
    #: How deep a message may nest to be handed to a pool process (pickling recurses
    #: once per level, within Python's limit of about 1,000); a deeper one is
    #: ``Unreadable``.
    max_depth = 200
    #: Deliveries a job may fail (an unexpected error, or its process dying) before it
    #: is handed over as ``Exhausted``.
    max_attempts = 5

    def run_batch(self, jobs: list[Any]) -> BatchOutcome:
        """Apply ``jobs``; say which to put back on the queue and which failed.

        A job is a message's first argument, ``Unreadable`` for a message that has
        none the worker could read, or ``Exhausted`` for one whose tries all failed
        (it is always alone): each is acknowledged unless handed back or failed.
        """
        raise NotImplementedError

    def weight(self, job: Any) -> int:
        """How much of a batch ``job`` takes up (1 unless a task says otherwise)."""
        return 1

    def Strategy(self, task: BatchTask, app: Celery, consumer: Any) -> Callable[..., None]:  # noqa: N802 (Celery's name)
        return _BatchingConsumer(task, consumer).on_message


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Stands in for a message whose job could not be read, so that the task can still
    record the job (its id is the message's task id, when it has one) as failed."""

    task_id: str | None
    # "too deep" (nested past ``max_depth``), or "unreadable" (not JSON, not a task
    # message, or a job that could not be handed to a pool process).
    problem: str


@dataclass(frozen=True, slots=True)
class Exhausted:
    """Stands in for a job whose every try on its own failed unexpectedly or killed its
    process: the task records it as failed instead of applying it again."""

    job: Any
    attempts: int
    # The class of the last failure's exception.
    error: str


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What became of a batch: indices of jobs to put back on the queue (a transient
    failure: nothing of them was committed), and of jobs that failed unexpectedly on
    their own, with their exception's class (they are tried again alone). The others
    are done."""

    hand_back: tuple[int, ...] = ()
    failed: tuple[tuple[int, str], ...] = ()


@dataclass(slots=True)
class _Delivery:
    job: Any
    weight: int
    message: Any
    # Sent to a pool process alone (it failed, or was in a batch that did).
    alone: bool = False
    # Deliveries that failed (an unexpected error, or its process died), and the last
    # one's exception class.
    failures: int = 0
    error: str = ""


def _task_id(message: Any) -> str | None:
    headers = getattr(message, "headers", None)
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None


def _first_argument(message: Any, max_depth: int) -> Any:
    """The job a task message carries (protocol 2: ``[args, kwargs, embed]``), or
    ``Unreadable``. Never raises: it runs in the worker's main process, which a raised
    error would stop.

    JSON bodies are read as the gateway reads them (``read_body``: orjson, integers
    exact), else with the standard library's decoder, not kombu's: kombu's turns
    objects shaped like ``{"__type__": ..., "__value__": ...}`` into Python values (or
    refuses them), and a job's body holds whatever a client sent.
    """
    try:
        if message.content_type == "application/json":
            body = message.body
            payload = _decoded(body)
            deep = could_nest_deeper_than(body, max_depth) and nests_deeper_than(payload, max_depth)
        else:
            payload = message.payload
            deep = nests_deeper_than(payload, max_depth)
        if deep:
            return Unreadable(_task_id(message), "too deep")
        args, kwargs, _ = payload
        return args[0] if args else kwargs["job"]
    except RecursionError:  # the decoder's: nested about 1,000 levels deep
        return Unreadable(_task_id(message), "too deep")
    except Exception:
        return Unreadable(_task_id(message), "unreadable")


def _decoded(body: str | bytes) -> Any:
    try:
        return read_body(body.encode() if isinstance(body, str) else body)
    except JsonRefused:  # nested past orjson's limit, or JSON only the standard library reads
        return json.loads(body)


def run_in_pool(task_name: str, jobs: list[Any]) -> BatchOutcome:
    """What a pool process runs: the named task's ``run_batch``."""
    from celery import current_app

    task: BatchTask = current_app.tasks[task_name]
    return task.run_batch(jobs)


class _BatchingConsumer:
    """Lives in the worker's main process, on its event loop (no locking needed)."""

    def __init__(self, task: BatchTask, consumer: Any) -> None:
        self._task = task
        self._pool = consumer.pool
        self._errors = consumer.connection_errors
        self._processes = max(1, int(getattr(self._pool, "limit", 1) or 1))
        self._waiting: deque[_Delivery] = deque()
        self._busy = 0

    def on_message(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
    ) -> None:
        # Settled through the message itself, not Celery's ack/reject promises: those
        # run later on the event loop, one Redis round trip each; and no Celery
        # bookkeeping hangs on them for this task (it never registers active requests,
        # so there is no reduced prefetch count to restore after a reconnect).
        job = _first_argument(message, self._task.max_depth)
        self._waiting.append(_Delivery(job, max(1, self._task.weight(job)), message))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting and self._busy < self._processes:
            batch = [self._waiting.popleft()]
            room = 0 if batch[0].alone else self._task.batch_size - batch[0].weight
            while self._waiting and not self._waiting[0].alone and self._waiting[0].weight <= room:
                room -= self._waiting[0].weight
                batch.append(self._waiting.popleft())
            self._busy += 1
            try:
                self._pool.apply_async(
                    run_in_pool,
                    args=(self._task.name, [delivery.job for delivery in batch]),
                    callback=lambda hand_back, batch=batch: self._returned(batch, hand_back),
                    error_callback=lambda exc_info, batch=batch: self._lost(batch, exc_info),
                    correlation_id=uuid(),
                )
            except Exception as exc:  # a job could not be pickled for the pool process
                self._busy -= 1
                self._cannot_send(batch, exc)

    def _cannot_send(self, batch: list[_Delivery], exc: Exception) -> None:
        """Sends the deliveries of a batch the pool could not take one by one; one
        that fails alone goes as ``Unreadable``. Its neighbours are not held back."""
        logger.error("could not hand a batch of %d to the pool (%r)", len(batch), exc)
        for delivery in reversed(batch):
            if len(batch) > 1:
                delivery.alone = True
            else:
                delivery.job = Unreadable(_task_id(delivery.message), "unreadable")
                delivery.weight = 1
            self._waiting.appendleft(delivery)

    def _returned(self, batch: list[_Delivery], outcome: Any) -> None:
        self._busy -= 1
        if not isinstance(outcome, BatchOutcome):
            outcome = BatchOutcome()
        back = set(outcome.hand_back)
        failed = dict(outcome.failed)
        with ExitStack() as together:
            # Channels whose QoS takes acknowledgements together (our transport's) get
            # them in one round trip each.
            channels = {id(d.message.channel): d.message.channel for d in batch}
            for channel in channels.values():
                if hasattr(channel.qos, "acks_together"):
                    together.enter_context(channel.qos.acks_together())
            for index, delivery in enumerate(batch):
                if index in failed:
                    continue
                if index in back:
                    delivery.message.reject_log_error(logger, self._errors, requeue=True)
                else:
                    delivery.message.ack_log_error(logger, self._errors)
        for index in sorted(failed, reverse=True):
            self._try_again(batch[index], failed[index])
        self._dispatch()

    def _lost(self, batch: list[_Delivery], exc_info: Any) -> None:
        """The pool process died with ``batch``: each of its jobs counts a failed try and
        goes again alone (which one killed it is not known: its neighbours' commit, if
        it came first, makes their second delivery a no-op)."""
        self._busy -= 1
        exc = getattr(exc_info, "exception", exc_info)
        error = type(getattr(exc, "exc", exc)).__name__  # billiard wraps it: WorkerLostError
        logger.error(
            "pool process died with a batch of %d (%s); trying %s alone",
            len(batch),
            error,
            "each of its jobs" if len(batch) > 1 else "its job again",
            extra={"job_id": _task_id(batch[0].message)} if len(batch) == 1 else None,
        )
        for delivery in reversed(batch):
            self._try_again(delivery, error)
        self._dispatch()

    def _try_again(self, delivery: _Delivery, error: str) -> None:
        """``delivery`` failed: alone again, first in line, or, once its deliveries are
        used up, as ``Exhausted`` for the task to record."""
        delivery.failures += 1
        delivery.error = error
        delivery.alone = True
        if delivery.failures >= self._task.max_attempts and not isinstance(delivery.job, Exhausted):
            logger.error(
                "job failed on each of its %d tries (last: %s); recording it as failed",
                delivery.failures,
                error,
                extra={"job_id": _task_id(delivery.message), "attempts": delivery.failures},
            )
            delivery.job = Exhausted(delivery.job, delivery.failures, error)
        self._waiting.appendleft(delivery)
