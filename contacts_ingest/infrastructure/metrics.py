"""Prometheus metrics, shared by the gateway's and the workers' processes.

Both run several processes (granian workers, Celery's pool), so metrics use
prometheus_client's multiprocess mode: each process writes its samples under
``PROMETHEUS_MULTIPROC_DIR`` and a scrape adds them up. ``serve`` and ``worker`` set
that folder up (a fresh temporary one unless the variable is set) before any process
that records metrics starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from contacts_ingest.infrastructure.metrics_dir import MULTIPROC_ENV

# Gateway.
REQUESTS = Counter(
    "contacts_gateway_requests_total", "HTTP requests answered, by route and status code.",
    ["method", "route", "code"],
)  # fmt: skip
REQUEST_SECONDS = Histogram(
    "contacts_gateway_request_duration_seconds", "Time to answer an HTTP request, by route.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip
RATE_LIMITED = Counter(
    "contacts_gateway_rate_limited_total", "Writes refused with 429, by quota.", ["quota"]
)
WAITS_DECLINED = Counter(
    "contacts_gateway_waits_declined_total",
    "Prefer: wait requests answered 202 at once: their user, or the process, had the most"
    " waiting already.",
)
SHED = Counter(
    "contacts_gateway_shed_total",
    "New jobs refused with 503 because admissions are shed, by reason: queue_full"
    " (MAX_QUEUED_JOBS), out_of_memory (Redis over maxmemory).",
    ["reason"],
)
ENQUEUE_FAILURES = Counter(
    "contacts_gateway_enqueue_failures_total",
    "Accepted writes whose job could not be published (answered 503).",
)

# Workers.
JOBS = Counter(
    "contacts_worker_jobs_total", "Jobs finished, by status, code and kind.",
    ["status", "code", "kind"],
)  # fmt: skip
JOB_SECONDS = Histogram(
    "contacts_worker_job_duration_seconds",
    "Time to process one delivery of a job (its batch's whole transaction).", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
BATCH_JOBS = Histogram(
    "contacts_worker_batch_jobs", "Jobs applied together in one transaction.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)  # fmt: skip
RETRIES = Counter(
    "contacts_worker_retries_total", "Attempts at a batch of jobs that met a transient error."
)
CALLBACKS = Counter(
    "contacts_worker_callbacks_total",
    "Completion callbacks by outcome: delivered (a 2xx answer), retried (an attempt failed;"
    " another follows), abandoned (failing still after the retry window, or refused).",
    ["outcome"],
)


def scrape() -> bytes:
    """The text exposition of every process's samples."""
    if not os.environ.get(MULTIPROC_ENV):  # a single process (tests in-process)
        from prometheus_client import REGISTRY

        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


class QueueDepth:
    """Scrape-time gauges of the job queue in Redis: waiting and in-hand messages."""

    def __init__(self, client: Any, queue_key: str, unacked_key: str, queue: str) -> None:
        self._client = client
        self._queue_key = queue_key
        self._unacked_key = unacked_key
        self._queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            "contacts_worker_queue_depth", "Jobs waiting in the queue.", labels=["queue"]
        )
        unacked = GaugeMetricFamily(
            "contacts_worker_unacked", "Jobs taken by a worker and not yet acknowledged."
        )
        try:
            waiting.add_metric([self._queue], float(self._client.llen(self._queue_key)))
            unacked.add_metric([], float(self._client.hlen(self._unacked_key)))
        except Exception:  # Redis down: no sample rather than a failed scrape
            return
        yield waiting
        yield unacked


def serve_worker_metrics(host: str, port: int, queue_depth: QueueDepth) -> None:
    """An HTTP endpoint (GET /metrics) for a worker and its pool processes, on ``host``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(queue_depth)
    start_http_server(port, addr=host, registry=registry)
