"""A Celery task type whose messages a worker applies many at a time.

Celery hands each message to a pool process on its own, so each job pays its own
transaction and commit. A ``BatchTask`` instead keeps the messages that arrive while
every pool process is busy, and hands them to the next free process together (at
most ``batch_size``, in units of ``weight``): when the worker keeps up, each job still
goes alone and at once; under load, batches grow by themselves.

Acknowledgement stays late: a batch's messages are acknowledged only once the
process returned, except those it names to hand back, which are put back on the
queue (its transient failures). If the process dies, all of its batch is put back
(as ``task_reject_on_worker_lost`` does for a single task); if the worker dies,
Redis still holds every message unacknowledged and redelivers it.

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

from contacts_ingest.model.json_input import could_nest_deeper_than, nests_deeper_than

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

    def run_batch(self, jobs: list[Any]) -> list[int]:
        """Apply ``jobs``; return the indices of those to put back on the queue.

        A job is a message's first argument, or ``Unreadable`` for a message that has
        none the worker could read: it is acknowledged unless handed back.
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


@dataclass(slots=True)
class _Delivery:
    job: Any
    weight: int
    message: Any


def _task_id(message: Any) -> str | None:
    headers = getattr(message, "headers", None)
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None


def _first_argument(message: Any, max_depth: int) -> Any:
    """The job a task message carries (protocol 2: ``[args, kwargs, embed]``), or
    ``Unreadable``. Never raises: it runs in the worker's main process, which a raised
    error would stop.

    JSON bodies are read with the plain JSON decoder: kombu's turns objects shaped
    like ``{"__type__": ..., "__value__": ...}`` into Python values (or refuses
    them), and a job's body holds whatever a client sent.
    """
    try:
        if message.content_type == "application/json":
            body = message.body
            payload = json.loads(body)
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


def run_in_pool(task_name: str, jobs: list[Any]) -> list[int]:
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
            room = self._task.batch_size - batch[0].weight
            while self._waiting and self._waiting[0].weight <= room:
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
                delivery.weight = self._task.batch_size + 1  # goes alone
            else:
                delivery.job = Unreadable(_task_id(delivery.message), "unreadable")
                delivery.weight = 1
            self._waiting.appendleft(delivery)

    def _returned(self, batch: list[_Delivery], hand_back: Any) -> None:
        self._busy -= 1
        back = set(hand_back) if isinstance(hand_back, list) else set()
        with ExitStack() as together:
            # Channels whose QoS takes acknowledgements together (our transport's) get
            # them in one round trip each.
            channels = {id(d.message.channel): d.message.channel for d in batch}
            for channel in channels.values():
                if hasattr(channel.qos, "acks_together"):
                    together.enter_context(channel.qos.acks_together())
            for index, delivery in enumerate(batch):
                if index in back:
                    delivery.message.reject_log_error(logger, self._errors, requeue=True)
                else:
                    delivery.message.ack_log_error(logger, self._errors)
        self._dispatch()

    def _lost(self, batch: list[_Delivery], exc_info: Any) -> None:
        self._busy -= 1
        logger.error(
            "pool process failed with a batch of %d (%r); putting it back on the queue",
            len(batch),
            getattr(exc_info, "exception", exc_info),
        )
        for delivery in batch:
            delivery.message.reject_log_error(logger, self._errors, requeue=True)
        self._dispatch()
