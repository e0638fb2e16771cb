"""Celery configuration, read by the workers and by every producer (gateway included).

Values come from the environment through the shared settings object; the durability
choices below are what the exactly-once guarantee in the README relies on.
"""

from contacts_ingest.settings import Settings

_settings = Settings()

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
broker_transport_options = {
    # A message taken but not acknowledged within this many seconds is delivered again.
    "visibility_timeout": _settings.celery_visibility_timeout,
    "global_keyprefix": _settings.redis_key_prefix,
}

task_default_queue = _settings.celery_queue
task_serializer = "json"
accept_content = ["json"]
# Outcomes go to the status table; Celery's result backend is not used.
task_ignore_result = True
result_backend = None

# Acknowledge only after the task returned, and redeliver if its process died:
# at-least-once delivery, made exactly-once by the job id's status row.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 4
worker_hijack_root_logger = False
worker_send_task_events = False
