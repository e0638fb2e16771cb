"""Celery configuration, read by the workers and by every producer (gateway included).

Values that vary come from the environment through the shared settings object; the
durability choices below are what the exactly-once guarantee in the README relies on.
"""

from __future__ import annotations

from typing import Any

from contacts_ingest.infrastructure.settings import Settings


def from_settings(settings: Settings) -> dict[str, Any]:
    """The part of the configuration that follows the settings object."""
    visibility = settings.celery_visibility_timeout
    # Under Sentinel the broker's connections go to the master it names (its URL keeps
    # only its credentials and database).
    sentinel = (
        {
            "sentinels": settings.sentinel_addresses,
            "master_name": settings.redis_sentinel_master,
            "sentinel_auth": settings.sentinel_auth,
        }
        if settings.sentinel_addresses
        else {}
    )
    return {
        "broker_url": settings.broker_url,
        "broker_transport": "contacts_ingest.infrastructure.transport:"
        + ("SentinelTransport" if sentinel else "Transport"),
        "broker_transport_options": {
            # A message taken but not acknowledged within this many seconds is redelivered.
            "visibility_timeout": visibility,
            # Workers sweep for such messages this often (kombu's default sweep runs only
            # every ~100 s); so a dead worker's jobs restart within visibility + interval.
            "unacked_restore_interval": max(1, min(10, visibility // 3)),
            "unacked_restore_throttle": 1,
            # A sweep holds a lock in Redis; kombu lets it lapse only after 300 s, so a
            # worker killed mid-sweep (or Redis restarted then) held up every other
            # worker's redeliveries for five minutes. Sweeps are idempotent (each
            # message is moved in a WATCH transaction), so a short lapse is safe.
            "unacked_mutex_expire": max(1, min(10, visibility // 3)),
            "global_keyprefix": settings.redis_key_prefix,
            # A broker connection gone silent (its Redis frozen, or its machine cut off,
            # so no reset ever arrives) is dropped after these many seconds and the
            # worker connects again (under Sentinel, to the promoted master): a live
            # Redis answers every command, and each blocking take within a second.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "health_check_interval": 5,
            **sentinel,
        },
        "task_default_queue": settings.celery_queue,
        "worker_send_task_events": settings.worker_send_events,
        # A worker holds up to this many messages per process, so that while its
        # processes are busy the next batch can fill (worker/batching.py).
        "worker_prefetch_multiplier": 2 * settings.worker_batch_size,
    }


# broker_transport (from_settings): kombu's Redis transport, except that a consumer
# cannot lose the message it is handed.
broker_connection_retry_on_startup = True
task_serializer = "json"
accept_content = ["json"]
# Outcomes go to the status table; Celery's result backend is not used.
task_ignore_result = True
result_backend = None

# Acknowledge only after the task returned, and redeliver if its process died:
# at-least-once delivery, made exactly-once by the job id's status row. (The contact
# task batches its messages and does the same itself: worker/batching.py.)
task_acks_late = True
task_reject_on_worker_lost = True
# The batching task settles its own messages and keeps no active requests in Celery's
# books, so Celery's prefetch reduction after a reconnect has nothing to count.
worker_enable_prefetch_count_reduction = False
worker_hijack_root_logger = False

globals().update(from_settings(Settings()))
